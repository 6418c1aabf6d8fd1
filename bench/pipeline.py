"""Webhooks/s through ONE worker node, next to a Celery no-op task on the same settings.

Both runs use the same redis-server (broker, pipeline and caches), the same
concurrency, acks_late and prefetch, and the same partition queues; the floor runs on
Celery's own thread pool, Parley on its lane pool (Celery's, plus per-user order). The
queues are filled first; the clock runs from the first message taken until every queue
is drained and nothing is left unacked.

    python -m bench.pipeline [--webhooks N] [--rounds R]

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


def remaining(server: RedisServer, partitions: int) -> int:
    pipe = server.client(3).pipeline()
    for k in range(partitions):
        pipe.llen(queue_name(k))
    pipe.hlen("unacked")
    return sum(pipe.execute())


def run_worker(
    command: list[str], env: dict[str, str], server: RedisServer, partitions: int
) -> float:
    """Webhooks/s from the first message taken until nothing is left (start-up excluded)."""
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    total = remaining(server, partitions)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            while (left := remaining(server, partitions)) >= total:
                if process.poll() is not None:
                    raise RuntimeError(log.read_text())
                time.sleep(0.002)
            start, counted = time.perf_counter(), left
            while remaining(server, partitions):
                time.sleep(0.01)
            return counted / (time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(timeout=30)


def measure_floor(server: RedisServer, settings: Settings, envelopes: list[Envelope]) -> float:
    """The floor: the same messages, the same queues, a no-op task on Celery's pool."""
    server.client().flushall()
    noop_app = create_noop_app(settings)
    for env_ in envelopes:
        queue = queue_name(partition_for(env_.tenant_id, env_.user_id, settings.partitions))
        noop_app.send_task(
            NOOP_TASK,
            args=[env_.to_json()],
            queue=queue,
            routing_key=queue,
            argsrepr=task_repr(env_),
        )
    queues = ",".join(queue_name(k) for k in range(settings.partitions))
    return run_worker(
        [
            *(sys.executable, "-m", "celery", "-A", "bench.noop", "worker"),
            *WORKER_OPTIONS,
            *("--pool", "threads", "--concurrency", str(settings.concurrency)),
            *("--queues", queues, "--loglevel", "WARNING"),
        ],
        environment(server, settings),
        server,
        settings.partitions,
    )


def measure_parley(server: RedisServer, settings: Settings, envelopes: list[Envelope]) -> float:
    server.client().flushall()
    celery_app = create_celery(settings)
    for env_ in envelopes:
        publish(celery_app, env_, settings.partitions)
    rate = run_worker(
        [
            *(sys.executable, "-m", "parley", "worker", "--app", "bench.apps:bench"),
            *("--partitions", "all", "--loglevel", "WARNING"),
        ],
        environment(server, settings),
        server,
        settings.partitions,
    )
    done = len(server.client(3).keys("parley:done:*"))
    assert done == len(envelopes), f"{done} of {len(envelopes)} webhooks processed"
    return rate


def environment(server: RedisServer, settings: Settings) -> dict[str, str]:
    return {"PARLEY_REDIS_URL": server.url, "PARLEY_PARTITIONS": str(settings.partitions)}


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


def main(webhooks: int, rounds: int) -> None:
    server = RedisServer().start()
    try:
        settings = Settings(redis_url=server.url)
        envelopes = [envelope(f"5190{n % USERS:06d}", f"hello {n}") for n in range(webhooks)]
        floor, ours = alternate(
            rounds,
            lambda: measure_floor(server, settings, envelopes),
            lambda: measure_parley(server, settings, envelopes),
        )
        print(
            f"{webhooks} webhooks, {USERS} users, {settings.partitions} partitions, one node, "
            f"concurrency {settings.concurrency}, {rounds} rounds taking turns"
        )
        print(f"celery no-op task   : {figures(floor)} tasks/s")
        print(f"parley, 4 cache ops : {figures(ours)} webhooks/s")
        ratio = statistics.median(ours) / statistics.median(floor)
        print(f"ratio parley / no-op floor (medians): {ratio:.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    main(arguments.webhooks, arguments.rounds)
