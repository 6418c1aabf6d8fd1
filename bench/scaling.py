"""Webhooks/s with one ``--partitions auto`` node, then two, in the same run.

Same redis-server (pipeline and caches, and the broker with ``--broker redis``;
``--broker amqp``: a fresh vhost on the machine's RabbitMQ), the pipeline benchmark's
handler (four cache operations per webhook), 16 partitions. Each round starts its
nodes, waits until their leases cover every partition, then puts all webhooks on the
queues at once (on Redis in one round trip; on AMQP published through Celery,
unconfirmed, while the nodes already take them); the clock runs from the
first message taken until every queue is drained and nothing is left unacked (on AMQP:
every handler run finished, see ``bench.brokers``).

    python -m bench.scaling [--webhooks N] [--rounds R] [--broker redis|amqp]

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

from bench.brokers import BROKERS, broker_url, remaining
from bench.pipeline import ROOT, USERS, alternate, environment, figures
from parley.testing import RedisServer, envelope
from parley.wire.keys import queue_name
from parley.wire.messages import celery_message
from parley.wire.partition import partition_for
from parley.workers.celery import create_celery, publish
from parley.workers.leases import holders
from parley.workers.settings import Settings


def fill(server: RedisServer, settings: Settings, webhooks: int, users: int = USERS) -> None:
    """Put ``webhooks`` messages of ``users`` users, taking turns, on their queues."""
    envelopes = [envelope(f"5190{n % users:06d}", f"hello {n}") for n in range(webhooks)]
    if settings.broker_url:  # AMQP: through Celery (its producer pool: one connection)
        app = create_celery(settings)
        try:
            for env in envelopes:
                publish(app, env, settings.partitions)
        finally:
            app.close()
        return
    pipe = server.client(3).pipeline(transaction=False)
    for env in envelopes:
        queue = queue_name(partition_for(env.tenant_id, env.user_id, settings.partitions))
        pipe.lpush(queue, celery_message(env, queue))
    pipe.execute()


def run_nodes(server: RedisServer, settings: Settings, nodes: int, webhooks: int) -> float:
    server.client().flushall()
    env = {**os.environ, **environment(server, settings)}
    amqp = settings.broker_url is not None

    def left() -> int:
        return remaining(server, settings.partitions, amqp, webhooks)

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
        while left() >= webhooks:
            time.sleep(0.002)
        start, counted = time.perf_counter(), left()
        while left():
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a node ended:\n" + logs[0].read_text())
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


def main(webhooks: int, rounds: int, broker: str = "redis") -> None:
    server = RedisServer().start()
    try:
        with broker_url(broker) as url:
            run(server, Settings(redis_url=server.url, broker_url=url), webhooks, rounds, broker)
    finally:
        server.close()


def run(server: RedisServer, settings: Settings, webhooks: int, rounds: int, broker: str) -> None:
    """The rounds on one broker, and their figures printed."""
    one, two = alternate(
        rounds,
        lambda: run_nodes(server, settings, 1, webhooks),
        lambda: run_nodes(server, settings, 2, webhooks),
    )
    print(
        f"{webhooks} webhooks, {USERS} users, {settings.partitions} partitions, "
        f"--partitions auto, broker {broker}, {os.cpu_count()} CPUs, "
        f"{rounds} rounds taking turns"
    )
    print(f"1 node  : {figures(one)} webhooks/s")
    print(f"2 nodes : {figures(two)} webhooks/s")
    ratio = statistics.median(two) / statistics.median(one)
    print(f"ratio 2 nodes / 1 node (medians): {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=BROKERS, default="redis")
    arguments = parser.parse_args()
    main(arguments.webhooks, arguments.rounds, arguments.broker)
