"""End to end, all real: a redis-server the test starts (broker, pipeline and caches),
``parley worker`` subprocesses, the fake Graph API over HTTP."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import orjson
import pytest

from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer
from parley.wire.keys import DEAD_LETTERS, queue_name
from parley.wire.partition import partition_for
from tests.helpers import PARTITIONS, Pipeline, wait_for


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
    pipeline.start_worker("parley.examples.pizza:app", "0-7", "pizza")
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
        assert runs[(user, 1)][1] <= runs[(user, 2)][0]  # the user's 2 did not overtake 1
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
