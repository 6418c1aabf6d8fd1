"""End to end, all real: a redis-server the test starts (broker, pipeline and caches),
``parley worker`` subprocesses, the fake Graph API over HTTP."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fake_graph import FakeGraphAPI
from tests.payloads import PHONE_ID, envelope
from tests.redis_server import RedisServer
from tests.worker_process import WorkerProcess
from workers.partition import partition_for, queue_name
from workers.pipeline import DEAD_LETTERS
from workers.settings import Settings, set_settings
from workers.tasks import configure_celery, publish

PARTITIONS = 8
TOKEN = "test-token"
CONTROL = f"{PHONE_ID}:df:control"  # the recording app's table document for the tests


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


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
        set_settings(self.settings)
        configure_celery(self.settings)
        self.workers: list[WorkerProcess] = []

    def start_worker(self, app: str, partitions: str, node: str) -> WorkerProcess:
        worker = WorkerProcess(app, partitions, self.env, self.tmp_path, node)
        self.workers.append(worker)
        return worker.wait_ready()

    def publish(self, user: str, text: str) -> int:
        return publish(envelope(user, text), self.settings)

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


@pytest.fixture
def pipeline(redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI):  # type: ignore[no-untyped-def]
    deployment = Pipeline(redis_server, tmp_path, graph)
    yield deployment
    deployment.close()


def users_in_partition(partition: int, count: int) -> list[str]:
    found = []
    n = 0
    while len(found) < count:
        user = f"5190000{n:04d}"
        if partition_for(PHONE_ID, user, PARTITIONS) == partition:
            found.append(user)
        n += 1
    return found


def test_messages_are_json_with_safe_argsrepr(pipeline: Pipeline) -> None:
    partition = pipeline.publish("51999000111", "my secret pizza address")
    raw = pipeline.server.client(3).lrange(queue_name(partition), 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["content-type"] == "application/json"
    headers = message["headers"]
    assert headers["task"] == "parley.handle"
    assert "secret" not in headers["argsrepr"] and "51999000111" not in headers["argsrepr"]
    assert f"tenant={PHONE_ID}" in headers["argsrepr"] and "*0111" in headers["argsrepr"]
    body = json.loads(base64.b64decode(message["body"]))
    assert body[0][0]["user_id"] == "51999000111"


def test_two_nodes_keep_every_users_order(pipeline: Pipeline) -> None:
    pipeline.start_worker("tests.apps:recording", "0-3", "node-a")
    pipeline.start_worker("tests.apps:recording", "4-7", "node-b")
    users = [f"5198765{n:04d}" for n in range(50)]
    for seq in range(40):
        for user in users:
            pipeline.publish(user, str(seq))
    wait_for(
        lambda: all(len(pipeline.seqs(u)) >= 40 for u in users), timeout=240, what="2000 webhooks"
    )
    for user in users:
        assert pipeline.seqs(user) == list(range(40)), user  # in order, each exactly once
    runs = pipeline.runs()
    assert len(runs) == 2000
    assert len({pid for _, _, pid, _, _ in runs}) == 2  # both nodes did work


def test_pizza_conversations_through_real_workers(pipeline: Pipeline, graph: FakeGraphAPI) -> None:
    pipeline.start_worker("examples.pizza:app", "0-7", "pizza")
    users = ["51911111111", "51922222222", "51933333333"]
    script = ["hi", "large", "pepperoni,mushrooms", "yes"]
    for text in script:
        for user in users:
            pipeline.publish(user, text)
    wait_for(lambda: len(graph.sent) >= 12, what="12 replies")
    numbers = set()
    for user in users:
        *dialogue, confirmation = graph.texts_to(user)
        assert dialogue == [
            "🍕 What size pizza? (small/medium/large)",
            "🧀 What toppings? (pepperoni/mushrooms/cheese)",
            "📋 Order Summary:\nSize: Large\nToppings: pepperoni, mushrooms\n"
            "Total: $17.99\n\nConfirm? (yes/no)",
        ]
        match = re.fullmatch(r"✅ Order #(\d) confirmed: \$17\.99", confirmation)
        assert match, confirmation
        numbers.add(match.group(1))
    assert numbers == {"1", "2", "3"}
    orders = [
        orjson.loads(
            pipeline.server.client(2).hget(f"{PHONE_ID}:df:orders:pkid:order_{n}", "customer_id")
        )
        for n in (1, 2, 3)
    ]
    assert sorted(orders) == users


def test_sigkill_mid_handler_redelivers_without_overtaking(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    deployment = Pipeline(
        redis_server,
        tmp_path,
        graph,
        PARLEY_VISIBILITY_TIMEOUT="8",
        PARLEY_HANDLER_TIMEOUT="6",
        PARLEY_REDELIVERY_SCAN_INTERVAL="1",
    )
    try:
        first = deployment.start_worker("tests.apps:recording", "0-7", "doomed")
        user, neighbour = users_in_partition(3, 2)
        deployment.publish(user, "1 block")
        deployment.publish(neighbour, "10")
        deployment.publish(user, "2")
        deployment.wait_blocked()
        first.kill()
        deployment.release_blocked()
        deployment.start_worker("tests.apps:recording", "0-7", "successor")
        wait_for(lambda: deployment.seqs(user) == [1, 2] and deployment.seqs(neighbour) == [10])
        runs = {(u, seq): (start, end) for u, seq, _, start, end in deployment.runs()}
        assert runs[(user, 1)][1] <= runs[(neighbour, 10)][0]  # nothing overtook message 1
        assert len(deployment.runs()) == 3
        # the broker hands the killed node's message out again after the visibility
        # timeout; its done-marker makes that a no-op
        broker = redis_server.client(3)

        def redelivered() -> bool:
            return broker.hlen("unacked") == 0 and "already done" in deployment.workers[1].log()

        wait_for(redelivered, timeout=45, what="the broker's redelivery")
        assert deployment.seqs(user) == [1, 2] and len(deployment.runs()) == 3
    finally:
        deployment.close()


def test_failing_handler_is_dead_lettered_and_the_user_moves_on(pipeline: Pipeline) -> None:
    pipeline.start_worker("tests.apps:recording", "0-7", "dl")
    user = "51955555555"
    for text in ("1", "2 fail", "3"):
        pipeline.publish(user, text)
    wait_for(lambda: pipeline.seqs(user) == [1, 3], what="messages 1 and 3")
    entries = pipeline.server.client(3).xrange(DEAD_LETTERS)
    assert len(entries) == 1
    entry = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert entry["error_type"] == "builtins.RuntimeError"
    assert entry["error"] == "handler bug on message 2"
    assert "Traceback" in entry["traceback"] and entry["user_id"] == user
    assert orjson.loads(entry["envelope"])["payload"]["messages"][0]["text"]["body"] == "2 fail"


def test_cache_outage_retries_in_place_until_redis_is_back(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    caches = RedisServer().start()
    deployment = Pipeline(
        redis_server,
        tmp_path,
        graph,
        PARLEY_USER_CACHE_URL=caches.db_url(0),
        PARLEY_STATE_CACHE_URL=caches.db_url(1),
        PARLEY_TABLE_CACHE_URL=caches.db_url(2),
    )
    try:
        worker = deployment.start_worker("tests.apps:recording", "0-7", "outage")
        user = "51966666666"
        caches.stop()
        for text in ("1", "2", "3"):
            deployment.publish(user, text)
        wait_for(lambda: worker.log().count("failed transiently") >= 3, what="transient retries")
        caches.start()  # same port, empty
        wait_for(lambda: deployment.seqs(user, caches) == [1, 2, 3], what="all three, in order")
        assert redis_server.client(3).xlen(DEAD_LETTERS) == 0
    finally:
        deployment.close()
        caches.close()
