"""Flower over its HTTP API, all real: ``celery -A workers flower`` on a free port, on
each broker (the tests' redis-server, a RabbitMQ vhost of the test's own), a ``parley
worker`` that processed webhooks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.testing import FakeGraphAPI, RedisServer
from parley.testing.redis_server import PortTaken, on_free_port, port_taken
from tests.helpers import PARTITIONS, Pipeline, wait_for
from tests.rabbitmq import BROKERS, broker_env

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("admin", "flower-test-password")
SECRET_TEXT = "deliver to 221B Baker Street"


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> dict[str, str]:
    """The deployment's extra environment: none on Redis, PARLEY_BROKER_URL on RabbitMQ."""
    return broker_env(request)


@pytest.fixture
def flower(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, broker: dict[str, str]
) -> Iterator[str]:
    log_path = tmp_path / "flower.log"

    def start(port: int) -> tuple[subprocess.Popen[bytes], str]:
        """Flower on port, answering; PortTaken if something took the port meanwhile."""
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "parley.workers", "flower"),
                    f"--port={port}",
                    "--address=127.0.0.1",
                ],
                cwd=ROOT,
                env={
                    **os.environ,
                    "PARLEY_REDIS_URL": redis_server.url,
                    "PARLEY_PARTITIONS": str(PARTITIONS),
                    "FLOWER_BASIC_AUTH": ":".join(AUTH),  # as the compose file passes it
                    **broker,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if process.poll() is not None:
                output = log_path.read_text(errors="replace")
                raise (PortTaken if port_taken(output) else RuntimeError)(output)
            try:
                return httpx.get(f"{url}/healthcheck", auth=AUTH).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(up, timeout=60, what="flower")
        except BaseException:
            stop(process)
            raise
        return process, url

    process, url = on_free_port(start)
    try:
        yield url
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def test_flower_shows_nodes_partition_queues_and_safe_tasks(
    flower: str,
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    broker: dict[str, str],
) -> None:
    assert httpx.get(f"{flower}/api/workers").status_code == 401  # basic auth is on
    client = httpx.Client(base_url=flower, auth=AUTH, timeout=30)
    pipeline = Pipeline(redis_server, tmp_path, graph, **broker)
    user = "51987654321"
    try:
        pipeline.start_worker("tests.apps:recording", "auto", "watched")
        node = f"watched@{socket.gethostname()}"

        def consuming_all() -> dict[str, Any] | None:
            workers = client.get("/api/workers", params={"refresh": "1"}).json()
            queues = {q["name"] for q in workers.get(node, {}).get("active_queues", [])}
            return workers if {f"parley.p{k}" for k in range(PARTITIONS)} <= queues else None

        wait_for(consuming_all, timeout=60, what="the node's partition queues in Flower")
        for seq in range(3):
            pipeline.publish(user, f"{seq} {SECRET_TEXT}")
        wait_for(lambda: pipeline.seqs(user) == [0, 1, 2], what="three webhooks")

        def succeeded() -> dict[str, Any] | None:
            tasks = client.get("/api/tasks").json()
            done = {i: t for i, t in tasks.items() if t.get("state") == "SUCCESS"}
            return done if len(done) == 3 else None

        tasks = wait_for(succeeded, timeout=60, what="three tasks in Flower")
        for task_id, task in tasks.items():
            assert task["worker"] == node
            assert task["name"] == "parley.message"  # named after what it does
            assert task["args"].startswith("tenant=") and "user=*******4321" in task["args"]
            info = client.get(f"/api/task/info/{task_id}")
            assert info.status_code == 200
            for text in (info.text, client.get("/api/tasks").text):
                assert SECRET_TEXT not in text and user not in text
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'flower_events_total{task="' in metrics.text and "task-succeeded" in metrics.text
    finally:
        pipeline.close()


def test_flower_shows_a_fired_timer_as_parley_timer(
    flower: str,
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    broker: dict[str, str],
) -> None:
    client = httpx.Client(base_url=flower, auth=AUTH, timeout=30)
    pipeline = Pipeline(redis_server, tmp_path, graph, **broker)
    try:
        pipeline.start_worker("tests.apps:timers", "auto", "timed")
        pipeline.publish("51987650000", "schedule remind cart 0")

        def fired() -> list[dict[str, Any]]:
            tasks = client.get("/api/tasks").json().values()
            return [t for t in tasks if t["name"] == "parley.timer" and t["state"] == "SUCCESS"]

        (task,) = wait_for(fired, timeout=60, what="the timer's task in Flower")
        assert task["args"].startswith("tenant=") and "timer=timer." in task["args"]
    finally:
        pipeline.close()
