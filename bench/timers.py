"""Timer firing lag (due time → handler start) on ONE worker node under load, next to
its floor: the lag of a webhook under the same load (queued → handler start).

A steady stream of webhooks from many users goes onto the queues while timers of the
same users fall due; both kinds run through the same lanes. A timer's lag adds the
pump's poll (at most ``POLL_INTERVAL``) and the claim to what a webhook waits.

    python -m bench.timers [--seconds S] [--rate R] [--timers T] [--users U]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from parley.testing import PHONE_ID, RedisServer, envelope
from parley.wire.messages import routed_message
from parley.workers.settings import Settings
from parley.workers.timers import POLL_INTERVAL, RedisTimers, timer_envelope

ROOT = Path(__file__).resolve().parent.parent
LAG_DOCS = f"{PHONE_ID}:state:lag:*"


def lags(server: RedisServer) -> dict[str, list[float]]:
    """Every user's recorded lags, by kind."""
    client = server.client(1)
    found: dict[str, list[float]] = {"messages": [], "timers": []}
    for key in client.scan_iter(LAG_DOCS, count=1000):
        for kind, raw in client.hgetall(key).items():
            if kind.decode() in found:  # not the document's own marker field
                found[kind.decode()] += orjson.loads(raw)
    return found


def schedule(settings: Settings, timers: int, users: int, start: float, span: float) -> None:
    async def run() -> None:
        store = RedisTimers.connect(settings)
        for n in range(timers):
            due = start + span * n / timers
            user = f"5190{n % users:06d}"
            await store.schedule(timer_envelope(PHONE_ID, user, "bench", f"t{n}", {}, due))
        await store.aclose()

    asyncio.run(run())


def send_steadily(
    server: RedisServer, settings: Settings, rate: int, seconds: float, users: int
) -> int:
    """``rate`` webhooks/s for ``seconds``, each carrying its queueing time."""
    client = server.client(3)
    sent, started = 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) + 1
        pipe = client.pipeline(transaction=False)
        for n in range(sent, due):
            queue, message = routed_message(
                envelope(f"5190{n % users:06d}", repr(time.time())), settings.partitions
            )
            pipe.lpush(queue, message)
        pipe.execute()
        sent = due
        time.sleep(0.005)
    return sent


def percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def main(seconds: float, rate: int, timers: int, users: int) -> None:
    server = RedisServer().start()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    try:
        settings = Settings(redis_url=server.url)
        env = {**os.environ, "PARLEY_REDIS_URL": server.url}
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "parley", "worker", "--app", "bench.apps:lag"),
                    *("--partitions", "all", "--loglevel", "WARNING"),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60  # up once it has run a first webhook
            send_steadily(server, settings, 1, 0.5, users)
            while not lags(server)["messages"]:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text())
                time.sleep(0.05)
            server.client(1).flushdb()
            schedule(settings, timers, users, time.time() + 1, seconds - 2)
            sent: list[int] = []
            sender = threading.Thread(
                target=lambda: sent.append(send_steadily(server, settings, rate, seconds, users))
            )
            sender.start()
            sender.join()
            expected = (sent[0], timers)
            deadline = time.monotonic() + 120
            while True:
                got = lags(server)
                counts = (len(got.get("messages", [])), len(got.get("timers", [])))
                if counts >= expected:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {counts} of {expected} ran:\n{log.read_text()}")
                time.sleep(0.1)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        m50, m99 = percentiles(got["messages"])
        t50, t99 = percentiles(got["timers"])
        print(
            f"one node, {rate} webhooks/s for {seconds:.0f} s from {users} users, "
            f"{timers} timers due meanwhile; pump polls every {POLL_INTERVAL * 1000:.0f} ms"
        )
        print(f"{'':28}{'p50 ms':>8}{'p99 ms':>9}")
        print(f"{'webhook: queued → handler':28}{m50:8.1f}{m99:9.1f}")
        print(f"{'timer: due → handler':28}{t50:8.1f}{t99:9.1f}")
        print(f"ratio timer / webhook lag (p50): {t50 / m50:.2f}  (p99): {t99 / m99:.2f}")
    finally:
        server.close()
        log.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=60)
    parser.add_argument("--timers", type=int, default=400)
    parser.add_argument("--users", type=int, default=200)
    options = parser.parse_args()
    main(options.seconds, options.rate, options.timers, options.users)
