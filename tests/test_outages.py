"""Redis outages, all real: a redis-server of the test's own that it stops, freezes and
starts, the ingress over HTTP, ``parley worker`` subprocesses.

``/metrics`` answers 200 through an outage (``parley_pipeline_up 0``, the ingress's
counters still there, one WARNING per scrape without the password), and a worker
started before its Redis waits for it, then works.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from parley.asgi import create_ingress
from parley.testing import FakeGraphAPI, RedisServer, delivery, text_message
from parley.workers.connections import PROBE_TIMEOUT
from tests.helpers import Pipeline, make_settings, scrape, sign, value, wait_for
from tests.http_server import ServedApp

PASSWORD = "s3cret-outage-pw"
#: An ACL user with a password, so the test can see that no log line shows it (the
#: default user stays password-less for RedisServer's own readiness PING)
WITH_USER = ("--user", "parley", "on", f">{PASSWORD}", "~*", "&*", "+@all")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own: stopping it leaves the session's alone."""
    own = RedisServer(None, *WITH_USER).start()
    yield own
    if own.process is not None:  # thaw it, if a failed test left it frozen
        os.kill(own.process.pid, signal.SIGCONT)
    own.close()


def post(client: httpx.Client, user: str, *texts: str) -> int:
    body = orjson.dumps(delivery([text_message(user, text) for text in texts]))
    return client.post("/webhook", content=body, headers=sign(body)).status_code


def metrics_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "parley.metrics"]


def test_metrics_answer_through_a_pipeline_outage(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://parley:{PASSWORD}@127.0.0.1:{server.port}"
    with (
        ServedApp(create_ingress(make_settings(url))) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert post(client, "51900000001", "1") == 200
        metrics = scrape(client)
        assert value(metrics, "parley_pipeline_up") == 1
        assert value(metrics, "parley_replay_log_entries") == 1

        server.stop()  # connection refused
        caplog.clear()
        assert post(client, "51900000001", "2") == 503
        metrics = scrape(client)
        assert value(metrics, "parley_pipeline_up") == 0
        assert value(metrics, "parley_deliveries_total", outcome="accepted", reason="") == 1
        unavailable = {"outcome": "unavailable", "reason": "ConnectionError"}
        assert value(metrics, "parley_deliveries_total", **unavailable) == 1
        assert value(metrics, "parley_envelopes_total", outcome="new") == 1
        assert not any(name.startswith("parley_partition_") for name, _ in metrics)
        scrape(client)
        warnings = metrics_warnings(caplog)
        assert len(warnings) == 2  # one per scrape
        for record in warnings:
            assert record.levelno == logging.WARNING and record.exc_info is None
            assert f"redis://parley:***@127.0.0.1:{server.port}/3" in record.getMessage()
        assert not any(PASSWORD in r.getMessage() or r.exc_info for r in caplog.records)

        server.start()  # back, empty (it keeps nothing on disk)
        metrics = scrape(client)
        assert value(metrics, "parley_pipeline_up") == 1
        assert value(metrics, "parley_replay_log_entries") == 0
        assert value(metrics, "parley_deliveries_total", outcome="accepted", reason="") == 1

        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)  # hung: connects, never answers
        caplog.clear()
        try:
            started = time.monotonic()
            metrics = scrape(client)
            took = time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert value(metrics, "parley_pipeline_up") == 0
        assert took < 2 * PROBE_TIMEOUT + 1, took
        (warning,) = metrics_warnings(caplog)
        assert "TimeoutError" in warning.getMessage()
        assert value(scrape(client), "parley_pipeline_up") == 1


@pytest.mark.parametrize("partitions", ["auto", "all"])
def test_a_worker_started_before_redis_waits_then_runs(
    tmp_path: Path, graph: FakeGraphAPI, partitions: str
) -> None:
    server = RedisServer()  # a free port, nothing listening on it yet
    deployment = Pipeline(server, tmp_path, graph)  # retry backoff 0.05 s, capped at 0.5 s
    try:
        worker = deployment.start_worker("tests.apps:recording", partitions, "early", ready=False)
        wait_for(
            lambda: "(attempt 3)" in worker.log() or worker.process.poll() is not None,
            what="three retry lines",
        )
        assert worker.process.poll() is None, worker.log()
        assert f"pipeline Redis at {server.url}/3 unreachable (" in worker.log()
        with ServedApp(create_ingress(make_settings(server.url))) as served:
            server.start()
            worker.wait_ready()
            with httpx.Client(base_url=served.url) as client:
                assert post(client, "51900000001", "1", "2") == 200
            wait_for(lambda: deployment.seqs("51900000001") == [1, 2], what="both webhooks run")
        log = worker.log()
        assert "reachable after" in log
        assert "Traceback" not in log
    finally:
        deployment.close()
        server.close()


def test_sigterm_while_waiting_for_the_broker_ends_the_worker_cleanly(
    redis_server: RedisServer, redis_url: str, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    broker = RedisServer()  # never started
    deployment = Pipeline(redis_server, tmp_path, graph, PARLEY_BROKER_URL=broker.db_url(3))
    try:
        worker = deployment.start_worker("tests.apps:recording", "auto", "patient", ready=False)
        wait_for(
            lambda: "(attempt 2)" in worker.log() or worker.process.poll() is not None,
            what="the broker's retry lines",
        )
        assert f"broker Redis at {broker.url}/3 unreachable (" in worker.log()
        assert "pipeline Redis" not in worker.log()  # reachable at once: nothing to say
        started = time.monotonic()
        worker.stop()
        assert worker.process.returncode == 0, worker.log()
        assert time.monotonic() - started < 5
        assert "stopped (SIGTERM) while waiting for Redis" in worker.log()
        assert "Traceback" not in worker.log()
    finally:
        deployment.close()
        broker.close()
