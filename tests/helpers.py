"""What several test modules share: the deployment under test (``Pipeline``), polling
with a deadline, signed deliveries and the CLI as a subprocess. Test modules import
from here (and from ``parley.testing``), never from each other."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from parley.cli import main
from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer, envelope
from parley.testing import sign as signed_headers
from parley.testing.deliveries import delivery, text_message
from parley.testing.redis_server import PortTaken, on_free_port, port_taken
from parley.wire.keys import queue_name
from parley.wire.partition import partition_for
from parley.workers.celery import create_celery, publish
from parley.workers.settings import Settings
from tests.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


PARTITIONS = 8
TOKEN = "test-token"
CONTROL = f"{PHONE_ID}:df:control"  # the recording app's table document for the tests


#: A deployment whose reconciler acts within seconds: lease 3 s + handler timeout 2 s
#: < grace 6 s, a turn every second
RECONCILING = {
    "PARLEY_LEASE_TTL": "3",
    "PARLEY_HANDLER_TIMEOUT": "2",
    "PARLEY_RECONCILE_GRACE": "6",
    "PARLEY_RECONCILE_INTERVAL": "1",
}


class Pipeline:
    """The test's view of a running deployment."""

    def __init__(self, server: RedisServer, tmp_path: Path, graph: FakeGraphAPI, **env: str):
        self.server = server
        self.tmp_path = tmp_path
        self.env = {
            "PARLEY_REDIS_URL": server.url,
            "PARLEY_PARTITIONS": str(PARTITIONS),
            "PARLEY_RETRY_BACKOFF": "0.05",
            "PARLEY_RETRY_BACKOFF_MAX": "0.5",
            "WHATSAPP_TOKEN": TOKEN,
            "WHATSAPP_API_BASE": graph.url,
            **env,
        }
        self.settings = Settings(
            redis_url=server.url,
            **{
                "partitions": PARTITIONS,
                **{
                    k.removeprefix("PARLEY_").lower(): v
                    for k, v in env.items()
                    if k.startswith("PARLEY_") and "CACHE_URL" not in k
                },
            },
        )
        self.celery = create_celery(self.settings)
        self.workers: list[WorkerProcess] = []

    def start_worker(
        self, app: str, partitions: str, node: str, *, ready: bool = True
    ) -> WorkerProcess:
        """A worker node, once Celery says it is ready (``ready=False``: at once)."""
        worker = WorkerProcess(app, partitions, self.env, self.tmp_path, node)
        self.workers.append(worker)
        return worker.wait_ready() if ready else worker

    def publish(self, user: str, text: str) -> int:
        return publish(self.celery, envelope(user, text), self.settings.partitions)

    def seqs(self, user: str, cache_server: RedisServer | None = None) -> list[int]:
        raw = (cache_server or self.server).client(1).hget(f"{PHONE_ID}:state:seen:{user}", "seqs")
        return orjson.loads(raw) if raw else []

    def runs(self) -> list[list[Any]]:
        raw = self.server.client(2).hget(f"{PHONE_ID}:df:runs", "log")
        return orjson.loads(raw) if raw else []

    def wait_blocked(self) -> None:
        """Until the handler of a ``"<seq> block"`` message (tests/apps.py) has started."""
        control = self.server.client(2)
        wait_for(lambda: control.hget(CONTROL, "started"), what="the blocking handler's start")

    def release_blocked(self) -> None:
        self.server.client(2).hset(CONTROL, "release", b"true")

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


SECRET = "tests-7c41d9e0b2a5"  # long enough, not a placeholder
VERIFY = "verify-me"


def sign(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return signed_headers(body, secret)


def make_settings(url: str, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        "partitions": PARTITIONS,
        "whatsapp_app_secret": SECRET,
        "whatsapp_verify_token": VERIFY,
        "max_body_bytes": 64 * 1024,
    }
    return Settings(redis_url=url, **{**defaults, **overrides})


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    """The ingress's ``/metrics``, parsed; it must answer 200 with Prometheus text."""
    page = client.get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page.text)
        for sample in family.samples
    }


def value(metrics: Samples, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def pipeline_keys(server: RedisServer) -> int:
    return server.client(3).dbsize()


def queued(server: RedisServer) -> dict[int, int]:
    broker = server.client(3)
    return {k: n for k in range(PARTITIONS) if (n := broker.llen(queue_name(k)))}


def users_in_two_partitions() -> tuple[str, str]:
    first = "51900000001"
    n = 2
    while partition_for(PHONE_ID, f"519{n:08d}", PARTITIONS) == partition_for(
        PHONE_ID, first, PARTITIONS
    ):
        n += 1
    return first, f"519{n:08d}"


def cli(server: RedisServer, *args: str, partitions: int = PARTITIONS) -> str:
    """``parley ARGS`` against the tests' server; its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "parley", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PARLEY_REDIS_URL": server.url, "PARLEY_PARTITIONS": str(partitions)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def post_steadily(
    client: httpx.Client,
    messages: list[tuple[str, int]],
    rate: float,
    stop: threading.Event | None = None,
) -> threading.Thread:
    """Post ``(user, seq)`` text messages, signed, one delivery each, at ``rate`` per
    second, on a thread; message ids are ``wamid.<user>.<seq>``."""

    def run() -> None:
        start = time.monotonic()
        for n, (user, seq) in enumerate(messages):
            if stop is not None and stop.is_set():
                return
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the stream, not synchronisation
            body = orjson.dumps(delivery([text_message(user, str(seq), f"wamid.{user}.{seq}")]))
            answer = client.post("/webhook", content=body, headers=sign(body))
            assert answer.status_code == 200, answer.text

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def serve_on_free_port(
    command: Callable[[int], list[str]],
    ready: Callable[[int], bool],
    log_path: Path,
    timeout: float = 30.0,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """``command(port)`` as a process, waited for until ``ready(port)``; on another free
    port when the one chosen was taken meanwhile (its output says so). Returns the
    process and its port."""

    def start(port: int) -> tuple[subprocess.Popen[bytes], int]:
        with log_path.open("wb") as log:
            process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, **popen)

        def up() -> bool:
            if process.poll() is not None:
                output = log_path.read_text(errors="replace")
                raise (PortTaken if port_taken(output) else RuntimeError)(output)
            return ready(port)

        try:
            wait_for(up, timeout=timeout, what=f"{command(port)[0]} on port {port}")
        except BaseException:
            process.kill()
            process.wait(timeout=30)
            raise
        return process, port

    return on_free_port(start)


def parse_parley(argv: list[str]) -> click.Context:
    """Parse a ``parley ...`` command line with the real click CLI: an unknown option,
    a missing required one or a bad value raises (and fails the test)."""
    assert argv[0] == "parley", argv
    args = argv[1:]
    ctx = main.make_context("parley", list(args))
    command: click.Command = main
    while isinstance(command, click.Group):
        options = [p for p in command.params if p.name not in ("help", "version")]
        assert not options, "groups take no options but --help and --version"
        name, *args = args
        sub = command.get_command(ctx, name)
        assert sub is not None, f"parley has no command {name!r}"
        command = sub
        ctx = command.make_context(name, list(args), parent=ctx)
    return ctx
