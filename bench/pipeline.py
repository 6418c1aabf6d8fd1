"""Webhooks/s through ONE worker node, next to a Celery no-op task on the same settings.

Both runs use the same redis-server (pipeline and caches, and the broker with
``--broker redis``; ``--broker amqp``: a fresh vhost on the machine's RabbitMQ), the
same concurrency, acks_late and prefetch, and the same partition queues; the floor runs
on Celery's own thread pool, Parley on its lane pool (Celery's, plus per-user order).
The queues are filled first; the clock runs from the first message taken until every
queue is drained and nothing is left unacked (on AMQP: every task finished, see
``bench.brokers``).

    python -m bench.pipeline [--webhooks N] [--rounds R] [--broker redis|amqp]

Several rounds, the floor and Parley taking turns at going first; medians reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.brokers import BROKERS, broker_url, remaining
from bench.noop import TASK_NAME as NOOP_TASK
from bench.noop import create_noop_app
from parley.testing import RedisServer, envelope
from parley.wire.envelope import Envelope
from parley.wire.keys import queue_name
from parley.wire.messages import task_repr
from parley.wire.partition import partition_for
from parley.workers.celery import WORKER_OPTIONS, create_celery, publish
from parley.workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
USERS = 200


def run_worker(
    command: list[str], env: dict[str, str], server: RedisServer, partitions: int, total: int
) -> float:
    """Webhooks/s from the first message taken until nothing is left (start-up excluded)."""
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    amqp = "PARLEY_BROKER_URL" in env

    def left() -> int:
        return remaining(server, partitions, amqp, total)

    assert left() == total, f"{left()} messages queued, not {total}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            while (still := left()) >= total:
                if process.poll() is not None:
                    raise RuntimeError(log.read_text())
                time.sleep(0.002)
            start, counted = time.perf_counter(), still
            while left():
                if process.poll() is not None:
                    raise RuntimeError(log.read_text())
                time.sleep(0.01)
            return counted / (time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(timeout=30)


def measure_floor(server: RedisServer, settings: Settings, envelopes: list[Envelope]) -> float:
    """The floor: the same messages, the same queues, a no-op task on Celery's pool."""
    server.client().flushall()
    noop_app = create_noop_app(settings)
    try:
        for env_ in envelopes:
            queue = queue_name(partition_for(env_.tenant_id, env_.user_id, settings.partitions))
            noop_app.send_task(
                NOOP_TASK,
                args=[env_.to_json()],
                queue=queue,
                routing_key=queue,
                argsrepr=task_repr(env_),
            )
    finally:
        noop_app.close()
    queues = ",".join(queue_name(k) for k in range(settings.partitions))
    counted = settings.broker != settings.pipeline  # AMQP: the floor counts its tasks
    return run_worker(
        [
            *(sys.executable, "-m", "celery", "-A"),
            "bench.noop_counted" if counted else "bench.noop",
            "worker",
            *WORKER_OPTIONS,
            *("--pool", "threads", "--concurrency", str(settings.concurrency)),
            *("--queues", queues, "--loglevel", "WARNING"),
        ],
        environment(server, settings),
        server,
        settings.partitions,
        len(envelopes),
    )


def measure_parley(server: RedisServer, settings: Settings, envelopes: list[Envelope]) -> float:
    server.client().flushall()
    celery_app = create_celery(settings)
    try:
        for env_ in envelopes:
            publish(celery_app, env_, settings.partitions)
    finally:
        celery_app.close()
    rate = run_worker(
        [
            *(sys.executable, "-m", "parley", "worker", "--app", "bench.apps:bench"),
            *("--partitions", "all", "--loglevel", "WARNING"),
        ],
        environment(server, settings),
        server,
        settings.partitions,
        len(envelopes),
    )
    done = len(server.client(3).keys("parley:done:*"))
    assert done == len(envelopes), f"{done} of {len(envelopes)} webhooks processed"
    return rate


def environment(server: RedisServer, settings: Settings) -> dict[str, str]:
    env = {"PARLEY_REDIS_URL": server.url, "PARLEY_PARTITIONS": str(settings.partitions)}
    if settings.broker_url:
        env["PARLEY_BROKER_URL"] = settings.broker_url
    return env


def alternate(
    rounds: int, first: Callable[[], float], second: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """``rounds`` measurements of each, taking turns which goes first, so that a machine
    getting busier or quieter during the run weighs on both alike."""
    a: list[float] = []
    b: list[float] = []
    for n in range(rounds):
        if n % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return a, b


def figures(values: list[float]) -> str:
    return f"median {statistics.median(values):7.0f}  ({', '.join(f'{v:.0f}' for v in values)})"


def main(webhooks: int, rounds: int, broker: str = "redis") -> None:
    server = RedisServer().start()
    try:
        with broker_url(broker) as url:
            run(server, Settings(redis_url=server.url, broker_url=url), webhooks, rounds, broker)
    finally:
        server.close()


def run(server: RedisServer, settings: Settings, webhooks: int, rounds: int, broker: str) -> None:
    """The rounds on one broker, and their figures printed."""
    envelopes = [envelope(f"5190{n % USERS:06d}", f"hello {n}") for n in range(webhooks)]
    floor, ours = alternate(
        rounds,
        lambda: measure_floor(server, settings, envelopes),
        lambda: measure_parley(server, settings, envelopes),
    )
    print(
        f"{webhooks} webhooks, {USERS} users, {settings.partitions} partitions, one node, "
        f"concurrency {settings.concurrency}, broker {broker}, {rounds} rounds taking turns"
    )
    print(f"celery no-op task   : {figures(floor)} tasks/s")
    print(f"parley, 4 cache ops : {figures(ours)} webhooks/s")
    ratio = statistics.median(ours) / statistics.median(floor)
    print(f"ratio parley / no-op floor (medians): {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=BROKERS, default="redis")
    arguments = parser.parse_args()
    main(arguments.webhooks, arguments.rounds, arguments.broker)
