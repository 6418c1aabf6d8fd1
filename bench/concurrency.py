"""Webhooks/s through ONE worker node whose handler waits 200 ms (a Graph API reply,
an LLM call), next to the ideal for its concurrency: N handlers / 0.2 s.

Same redis-server for broker, pipeline and caches; the webhooks of many users are put
on the queues first; the clock runs from the first message taken until every queue is
drained and nothing is left unacked. A node that ran one handler at a time would do
5 webhooks/s whatever the machine.

    python -m bench.concurrency [--webhooks N] [--users U] [--concurrency N]
"""

from __future__ import annotations

import argparse
import sys

from bench.pipeline import run_worker
from bench.scaling import fill
from parley.testing import RedisServer
from parley.workers.settings import Settings

WAIT = 0.2  # the handler's await, seconds (bench/apps.py: WaitingHandler)


def main(webhooks: int, users: int, concurrency: int) -> None:
    server = RedisServer().start()
    try:
        settings = Settings(redis_url=server.url, concurrency=concurrency)
        fill(server, settings, webhooks, users)
        env = {
            "PARLEY_REDIS_URL": server.url,
            "PARLEY_PARTITIONS": str(settings.partitions),
            "PARLEY_CONCURRENCY": str(concurrency),
        }
        command = [
            *(sys.executable, "-m", "parley", "worker", "--app", "bench.apps:waiting"),
            *("--partitions", "all", "--loglevel", "WARNING"),
        ]
        ours = run_worker(command, env, server, settings.partitions)
        done = len(server.client(3).keys("parley:done:*"))
        assert done == webhooks, f"{done} of {webhooks} webhooks processed"
        ideal = concurrency / WAIT
        print(f"{webhooks} webhooks, {users} users, {settings.partitions} partitions, one node")
        print(f"handler awaits {WAIT * 1000:.0f} ms; --concurrency {concurrency}")
        print(f"ideal (N / {WAIT} s)        : {ideal:7.0f} webhooks/s")
        print(f"one handler at a time      : {1 / WAIT:7.0f} webhooks/s")
        print(f"parley, one node           : {ours:7.0f} webhooks/s")
        print(f"ratio parley / ideal: {ours / ideal:.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=Settings().concurrency)
    options = parser.parse_args()
    main(options.webhooks, options.users, options.concurrency)
