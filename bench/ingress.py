"""Accepted signed webhooks/s and p50/p99 latency of the real ingress (uvicorn, one
worker), next to a bare FastAPI route on the same server settings, same run.

``--broker redis`` (the default): the broker is the pipeline DB, and one Lua script
dedups, logs and enqueues. ``--broker amqp``: the broker is a vhost made for the run on
the machine's RabbitMQ (127.0.0.1:5672, guest/guest; deleted after): the script dedups
and logs, then the ingress publishes each new envelope through Celery with publisher
confirms and answers once RabbitMQ confirmed.

Load comes from wrk (``apt-get install -y wrk``) with 32 connections, cycling through
pre-signed ~1.2 KB deliveries that each carry a new message id, so every request is
a new webhook (no dedup shortcut).

    python -m bench.ingress [--broker redis|amqp] [--seconds S] [--connections C]
                            [--requests N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from parley.testing import RedisServer, delivery, free_port, sign, text_message
from parley.wire.keys import queue_name
from parley.workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-3f8a0c6e9d21b7"
LUA = """
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local requests = {}
local first, last, i
function init(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("^(%S+)\\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/webhook",
      {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
  end
  -- each thread sends its own range once, never wrapping into another's (a duplicate
  -- would be answered 200 by the dedup without being a new webhook); past its range it
  -- asks for a path that answers 404, which fails the run
  local per_thread = math.floor(#requests / tonumber(args[2]))
  first, last = id * per_thread + 1, (id + 1) * per_thread
  i = first - 1
end
function request()
  i = i + 1
  if i > last then
    return wrk.format("GET", "/requests-exhausted")
  end
  return requests[i]
end
"""
THREADS = 2


def write_requests(count: int, folder: Path) -> Path:
    path = folder / "requests.tsv"
    filler = "x" * 800  # brings the signed body to ~1.2 KB
    with path.open("wb") as out:
        for n in range(count):
            body = orjson.dumps(
                delivery(
                    [
                        text_message(
                            f"5199{n % 5000:07d}", f"order {n} {filler}", f"wamid.BENCH{n:012d}"
                        )
                    ]
                )
            )
            sig = sign(body, SECRET)["X-Hub-Signature-256"]
            out.write(sig.encode() + b"\t" + body + b"\n")
    return path


def serve(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return process
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command} did not start") from None
            time.sleep(0.05)


def wrk(
    port: int, seconds: int, connections: int, script: Path, requests: Path
) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/webhook",
            "--",
            str(requests),
            str(THREADS),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def latency(pct: str) -> float:
        value, suffix = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * unit[suffix]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": float(non_2xx.group(1)) if non_2xx else 0.0,
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }


@contextmanager
def amqp_broker() -> Iterator[tuple[str, Callable[[], int]]]:
    """A vhost of the run's own on the machine's RabbitMQ: its URL, and what counts
    the messages on its partition queues; deleted after."""
    from tests.rabbitmq import UNAVAILABLE, Admin, answers, private_vhost, queue_depths

    if not answers():
        sys.exit(f"Error: --broker amqp: {UNAVAILABLE}")
    admin = Admin()
    partitions = Settings.model_fields["partitions"].default
    queues = [queue_name(k) for k in range(partitions)]
    try:
        with private_vhost(admin, "parley-bench") as url:
            yield url, lambda: sum(ready for ready, _ in queue_depths(url, queues).values())
    finally:
        admin.close()


def main(seconds: int, connections: int, distinct: int, broker: str) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench/ingress.py needs wrk: apt-get install -y wrk")
    if broker == "amqp":
        with amqp_broker() as (url, queued):
            run(seconds, connections, distinct, broker, url, queued)
    else:
        run(seconds, connections, distinct, broker, "", lambda: 0)


def run(
    seconds: int,
    connections: int,
    distinct: int,
    broker: str,
    broker_url: str,
    queued: Callable[[], int],
) -> None:
    server = RedisServer().start()
    folder = Path(tempfile.mkdtemp())
    processes: list[subprocess.Popen[bytes]] = []
    try:
        requests = write_requests(distinct, folder)
        script = folder / "post.lua"
        script.write_text(LUA)
        env = {"PARLEY_REDIS_URL": server.url, "WHATSAPP_APP_SECRET": SECRET}
        if broker_url:
            env["PARLEY_BROKER_URL"] = broker_url
        bare_port, ingress_port = free_port(), free_port()
        uvicorn_flags = ["--workers", "1", "--log-level", "warning"]
        processes.append(
            serve(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.bare:app",
                    "--port",
                    str(bare_port),
                    "--no-access-log",
                    *uvicorn_flags[:2],
                    "--log-level",
                    "warning",
                ],
                bare_port,
                env,
            )
        )
        processes.append(
            serve(
                [
                    sys.executable,
                    "-m",
                    "parley",
                    "ingress",
                    "--port",
                    str(ingress_port),
                    "--host",
                    "127.0.0.1",
                    "--log-level",
                    "warning",
                ],
                ingress_port,
                env,
            )
        )
        bare = wrk(bare_port, seconds, connections, script, requests)
        ours = wrk(ingress_port, seconds, connections, script, requests)
        accepted = server.client(3).xlen("parley:log")
        where = "RabbitMQ vhost, publisher confirms" if broker == "amqp" else "pipeline Redis"
        print(
            f"uvicorn 1 worker, wrk -t2 -c{connections} -d{seconds}s, ~1.2 KB signed bodies, "
            f"broker: {broker} ({where})"
        )
        print(f"{'endpoint':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
        print(
            f"{'bare FastAPI 200':<22}{bare['rps']:>9.0f}{bare['p50']:>9.2f}{bare['p99']:>9.2f}"
            f"{bare['errors']:>9.0f}"
        )
        print(
            f"{'parley ingress ' + broker:<22}{ours['rps']:>9.0f}{ours['p50']:>9.2f}"
            f"{ours['p99']:>9.2f}{ours['errors']:>9.0f}"
        )
        print(f"webhooks accepted into the replay log and queues: {accepted}")
        if broker == "amqp":
            on_queues = queued()
            print(f"messages on the vhost's partition queues: {on_queues}")
            if on_queues != accepted:
                sys.exit(
                    f"Error: {accepted} webhooks accepted but {on_queues} messages on the "
                    "broker's queues: the figures are invalid"
                )
        for name, figures in (("bare FastAPI", bare), ("parley ingress", ours)):
            if figures["errors"]:
                sys.exit(
                    f"Error: {name} answered {figures['errors']:.0f} requests with a non-2xx "
                    "status, or ran out of distinct requests (raise --requests): the figures "
                    "are invalid"
                )
        if accepted < ours["requests"]:
            sys.exit(
                f"Error: {ours['requests']:.0f} requests answered but only {accepted} "
                "webhooks accepted: the figures are invalid"
            )
        print(f"ratio parley ingress / bare FastAPI: {ours['rps'] / bare['rps']:.2f}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--broker",
        choices=["redis", "amqp"],
        default="redis",
        help="redis: the pipeline DB (one script enqueues); amqp: a RabbitMQ vhost of the run",
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--requests",
        type=int,
        default=80_000,
        help="distinct signed deliveries, split between wrk's threads; each is sent once",
    )
    args = parser.parse_args()
    main(args.seconds, args.connections, args.requests, args.broker)
