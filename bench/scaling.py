"""Webhooks/s with one ``--partitions auto`` node, then two, in the same run.

Same redis-server (broker, pipeline and caches), the pipeline benchmark's handler (four
cache operations per webhook), 16 partitions. Each round starts its nodes, waits until
their leases cover every partition, then puts all webhooks on the queues at once; the
clock runs from the first message taken until every queue is drained and nothing is
left unacked.

    python -m bench.scaling [--webhooks N] [--rounds R]

Several rounds, one node and two taking turns at going first; medians reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pipeline import ROOT, USERS, alternate, figures, remaining
from parley.testing import RedisServer, envelope
from parley.wire.keys import queue_name
from parley.wire.messages import celery_message
from parley.wire.partition import partition_for
from parley.workers.leases import holders
from parley.workers.settings import Settings


def fill(server: RedisServer, settings: Settings, webhooks: int, users: int = USERS) -> None:
    """Put ``webhooks`` messages of ``users`` users, taking turns, on their queues."""
    pipe = server.client(3).pipeline(transaction=False)
    for n in range(webhooks):
        env = envelope(f"5190{n % users:06d}", f"hello {n}")
        queue = queue_name(partition_for(env.tenant_id, env.user_id, settings.partitions))
        pipe.lpush(queue, celery_message(env, queue))
    pipe.execute()


def run_nodes(server: RedisServer, settings: Settings, nodes: int, webhooks: int) -> float:
    server.client().flushall()
    env = {
        **os.environ,
        "PARLEY_REDIS_URL": server.url,
        "PARLEY_PARTITIONS": str(settings.partitions),
    }
    logs = [Path(tempfile.mkstemp(suffix=".log")[1]) for _ in range(nodes)]
    processes = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "parley", "worker", "--app", "bench.apps:bench"),
                *("--partitions", "auto", "--node", f"bench-{n}", "--loglevel", "WARNING"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for n, log in enumerate(logs)
    ]
    try:
        deadline = time.monotonic() + 60
        while True:  # every partition leased, spread over all the nodes
            owners = holders(server.client(3), settings.partitions)
            if None not in owners and len(set(owners)) == nodes:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("nodes did not take the partitions:\n" + logs[0].read_text())
            time.sleep(0.05)
        fill(server, settings, webhooks)
        while remaining(server, settings.partitions) >= webhooks:
            time.sleep(0.002)
        start, counted = time.perf_counter(), remaining(server, settings.partitions)
        while remaining(server, settings.partitions):
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        done = len(server.client(3).keys("parley:done:*"))
        assert done == webhooks, f"{done} of {webhooks} webhooks processed"
        return counted / elapsed
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def main(webhooks: int, rounds: int) -> None:
    server = RedisServer().start()
    try:
        settings = Settings(redis_url=server.url)
        one, two = alternate(
            rounds,
            lambda: run_nodes(server, settings, 1, webhooks),
            lambda: run_nodes(server, settings, 2, webhooks),
        )
        print(
            f"{webhooks} webhooks, {USERS} users, {settings.partitions} partitions, "
            f"--partitions auto, {os.cpu_count()} CPUs, {rounds} rounds taking turns"
        )
        print(f"1 node  : {figures(one)} webhooks/s")
        print(f"2 nodes : {figures(two)} webhooks/s")
        ratio = statistics.median(two) / statistics.median(one)
        print(f"ratio 2 nodes / 1 node (medians): {ratio:.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    main(arguments.webhooks, arguments.rounds)
