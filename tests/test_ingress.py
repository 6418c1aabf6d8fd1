"""The ingress over real HTTP (uvicorn on loopback) with the tests' redis-server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from parley.asgi import create_ingress
from parley.ingress.accept import Acceptor, PublishTimeout
from parley.testing import PHONE_ID, RedisServer, delivery, envelope, free_port, text_message
from parley.wire.envelope import Envelope
from parley.wire.keys import REPLAY_LOG, queue_name, seen_key
from parley.wire.messages import celery_message
from parley.wire.partition import partition_for
from parley.workers.celery import create_celery, create_publisher, publish
from parley.workers.settings import Settings
from parley.workers.webhook import split_delivery
from tests.helpers import (
    PARTITIONS,
    VERIFY,
    make_settings,
    pipeline_keys,
    queued,
    sign,
    users_in_two_partitions,
    wait_for,
)
from tests.http_server import ServedApp
from tests.rabbitmq import Admin, queue_depths
from tests.worker_process import WorkerProcess

BROKERS = ["redis", "amqp"]


def amqp_depths(url: str) -> dict[str, int]:
    """Ready messages per partition queue of the vhost, those declared and not empty."""
    found = queue_depths(url, [queue_name(k) for k in range(PARTITIONS)])
    return {queue: ready for queue, (ready, _) in found.items() if ready}


def posted_envelopes(body: bytes) -> list[Envelope]:
    return split_delivery(orjson.loads(body), received_at=time.time())


# -- verification -------------------------------------------------------------------------


def test_verification_handshake(ingress: httpx.Client) -> None:
    ok = ingress.get(
        "/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"},
    )
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    for params in (
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY},
        {},
    ):
        assert ingress.get("/webhook", params=params).status_code == 403, params


def test_refuses_to_start_without_a_secret(redis_url: str) -> None:
    with pytest.raises(RuntimeError, match="WHATSAPP_APP_SECRET"):
        create_ingress(Settings(redis_url=redis_url))


# -- accepting ------------------------------------------------------------------------------


def test_signed_delivery_is_logged_and_enqueued(
    ingress: httpx.Client, redis_server: RedisServer
) -> None:
    first, second = users_in_two_partitions()
    body = orjson.dumps(
        delivery(
            [
                text_message(first, "one"),
                text_message(second, "two"),
                text_message(first, "three"),
            ]
        )
    )
    response = ingress.post("/webhook", content=body, headers=sign(body))
    assert response.status_code == 200 and response.json() == {"accepted": 3, "duplicates": 0}
    expected = {
        partition_for(PHONE_ID, first, PARTITIONS): 2,
        partition_for(PHONE_ID, second, PARTITIONS): 1,
    }
    assert queued(redis_server) == expected  # 3 envelopes in 2 partitions
    log = redis_server.client(3).xrange(REPLAY_LOG)
    assert [orjson.loads(fields[b"envelope"])["user_id"] for _, fields in log] == [
        first,
        second,
        first,
    ]
    assert {fields[b"tenant"] for _, fields in log} == {PHONE_ID.encode()}
    # the same delivery again (Meta retries): acknowledged, not enqueued again
    again = ingress.post("/webhook", content=body, headers=sign(body))
    assert again.status_code == 200 and again.json() == {"accepted": 0, "duplicates": 3}
    assert queued(redis_server) == expected and len(redis_server.client(3).xrange(REPLAY_LOG)) == 3


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"object":"whatsapp_business_account","entry":[]}', {}, 401),
        (
            b'{"object":"whatsapp_business_account","entry":[]}',
            {"X-Hub-Signature-256": "sha256=" + "0" * 64},
            401,
        ),
        (b'{"object":"whatsapp_business_account","entry":[]}', sign(b"another body"), 401),
        (b'{"object":"whatsapp_business_account","entry":[]}', sign(b"x", secret="other"), 401),
        (b"not json at all", sign(b"not json at all"), 400),
        (b'{"object":"page","entry":[]}', sign(b'{"object":"page","entry":[]}'), 400),
        (
            b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{}}]}]}',
            sign(
                b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{}}]}]}'
            ),
            400,
        ),
        (b"[1,2,3]", sign(b"[1,2,3]"), 400),
        (b"x" * (64 * 1024 + 1), sign(b"x" * (64 * 1024 + 1)), 413),
    ],
)
def test_bad_input_is_refused_and_nothing_recorded(
    ingress: httpx.Client,
    redis_server: RedisServer,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    response = ingress.post("/webhook", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert pipeline_keys(redis_server) == 0


def test_message_has_celerys_own_shape(redis_url: str, redis_server: RedisServer) -> None:
    """The message the ingress pushes itself (written out in parley.wire.messages,
    without Celery) is the one Celery's own publish puts on the queue, whole: every
    header, property and top-level field, and the body's JSON, with only the random ids
    masked (where they must be equal, they are), the sender's name before the @ of its
    origin, and Celery's reply_to, its app's id for results (Parley keeps none: '')."""
    settings = make_settings(redis_url)
    celery = create_celery(settings)
    env = envelope("51900000009", "hi")
    partition = publish(celery, env, PARTITIONS)
    theirs = masked(redis_server.client(3).lpop(queue_name(partition)))
    ours = masked(celery_message(env, queue_name(partition)))
    assert theirs["properties"].pop("reply_to") == celery.thread_oid
    assert ours["properties"].pop("reply_to") == ""
    assert ours == theirs
    # and the masks hid nothing else: the same structure of ids on both sides
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == "<id 0>"
    assert ours["properties"]["correlation_id"] == "<id 0>"
    assert ours["properties"]["delivery_tag"] == "<id 1>"
    assert ours["headers"]["origin"] == f"<sender>@{socket.gethostname()}"
    assert ours["body"][0] == [env.to_json()]


#: Where a task message carries per-message random ids (uuid4)
MESSAGE_IDS = (
    ("headers", "id"),
    ("headers", "root_id"),
    ("properties", "correlation_id"),
    ("properties", "delivery_tag"),
)


def masked(raw: bytes | None) -> dict[str, Any]:
    """A Celery message as JSON, its body decoded (base64, then JSON: Celery writes
    ``", "``, orjson ``","``), each distinct random id replaced by ``<id n>`` in order of
    appearance, and the sender's name in ``origin`` (Celery's gen<pid>, the ingress's
    parley) by ``<sender>``."""
    assert raw is not None
    message: dict[str, Any] = json.loads(raw)
    assert message["properties"]["body_encoding"] == "base64"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    names: dict[str, str] = {}
    for part, field in MESSAGE_IDS:
        value = message[part][field]
        assert uuid.UUID(value).version == 4, (part, field, value)
        message[part][field] = names.setdefault(value, f"<id {len(names)}>")
    _, at, host = message["headers"]["origin"].partition("@")
    assert at, message["headers"]["origin"]
    message["headers"]["origin"] = f"<sender>@{host}"
    return message


def test_health(ingress: httpx.Client) -> None:
    assert ingress.get("/healthz").json() == {"status": "alive"}
    assert ingress.get("/readyz").status_code == 200


# -- with a real worker ---------------------------------------------------------------------


def test_twice_delivered_is_processed_once_by_a_real_worker(
    ingress: httpx.Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    first, second = users_in_two_partitions()
    body = orjson.dumps(
        delivery(
            [
                text_message(first, "1"),
                text_message(second, "1"),
                text_message(first, "2"),
            ]
        )
    )
    for _ in range(2):
        assert ingress.post("/webhook", content=body, headers=sign(body)).status_code == 200
    worker = WorkerProcess(
        "tests.apps:recording",
        "all",
        {"PARLEY_REDIS_URL": redis_server.url, "PARLEY_PARTITIONS": str(PARTITIONS)},
        tmp_path,
        "ingress-node",
    ).wait_ready()
    try:
        state = redis_server.client(1)

        def seqs(user: str) -> list[int]:
            raw = state.hget(f"{PHONE_ID}:state:seen:{user}", "seqs")
            return orjson.loads(raw) if raw else []

        wait_for(lambda: seqs(first) == [1, 2] and seqs(second) == [1], what="three envelopes")
        wait_for(lambda: not queued(redis_server) and not redis_server.client(3).hlen("unacked"))
        assert seqs(first) == [1, 2] and seqs(second) == [1]
    finally:
        worker.stop()


@pytest.mark.parametrize("broker", BROKERS)
def test_outage_answers_503_then_the_retry_is_processed_once(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    """The broker stops: every delivery is answered 503 and nothing is marked seen, so
    Meta's retry after it is back is accepted as new and processed once. On Redis (the
    broker is the pipeline DB) the server stops. On RabbitMQ the pipeline Redis stays
    up and the test's vhost is deleted, then made again: RabbitMQ closes the ingress's
    connections and refuses new ones as a stopped broker would (the machine's server
    keeps serving the other tests), so the script marks, the publish fails and the
    marks are undone."""
    server = RedisServer().start()
    try:
        settings = make_settings(server.url)
        broker_env: dict[str, str] = {}
        if broker == "amqp":
            url: str = request.getfixturevalue("amqp_url")
            admin: Admin = request.getfixturevalue("rabbitmq_admin")
            vhost = unquote(url.rsplit("/", 1)[1])
            settings = make_settings(server.url, broker_url=url)
            broker_env = {"PARLEY_BROKER_URL": url}
            stop, start = (lambda: admin.delete_vhost(vhost)), (lambda: admin.add_vhost(vhost))
        else:
            stop, start = server.stop, server.start
        body = orjson.dumps(delivery([text_message("51977777777", "7")]))
        (sent,) = posted_envelopes(body)
        with (
            ServedApp(create_ingress(settings)) as served,
            httpx.Client(base_url=served.url) as client,
        ):
            if broker == "amqp":  # a connection in the pool, which the outage breaks
                assert client.post("/webhook", content=body, headers=sign(body)).status_code == 200
                server.client(3).delete(seen_key(sent), REPLAY_LOG)
            stop()
            for _ in range(3):
                assert client.post("/webhook", content=body, headers=sign(body)).status_code == 503
            if broker == "redis":  # /readyz checks the pipeline Redis, not the broker
                assert client.get("/readyz").status_code == 503
            start()
            assert client.get("/readyz").status_code == 200
            pipeline = server.client(3)
            assert not pipeline.exists(seen_key(sent)) and not pipeline.xlen(REPLAY_LOG)
            response = client.post("/webhook", content=body, headers=sign(body))
            assert response.status_code == 200 and response.json()["accepted"] == 1
        if broker == "amqp":  # the vhost was made anew: only the retry is on it
            assert amqp_depths(settings.broker) == {
                queue_name(partition_for(PHONE_ID, "51977777777", PARTITIONS)): 1
            }
        worker = WorkerProcess(
            "tests.apps:recording",
            "all",
            {"PARLEY_REDIS_URL": server.url, "PARLEY_PARTITIONS": str(PARTITIONS), **broker_env},
            tmp_path,
            "after-outage",
        ).wait_ready()
        try:
            state = server.client(1)
            wait_for(lambda: state.hget(f"{PHONE_ID}:state:seen:51977777777", "seqs") == b"[7]")
            if broker == "amqp":
                wait_for(lambda: not amqp_depths(settings.broker), what="the queue drained")
            else:
                wait_for(lambda: not queued(server) and not server.client(3).hlen("unacked"))
            assert state.hget(f"{PHONE_ID}:state:seen:51977777777", "seqs") == b"[7]"
        finally:
            worker.stop()
    finally:
        server.close()


# -- fuzz -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    body=st.binary(max_size=2048),
    signature=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
    signed=st.booleans(),
)
def test_fuzz_unsigned_or_garbage_never_500_never_enqueued(
    ingress: httpx.Client, redis_server: RedisServer, body: bytes, signature: str, signed: bool
) -> None:
    headers = {"X-Hub-Signature-256": signature}
    if signed:
        headers = sign(body)
    response = ingress.post("/webhook", content=body, headers=headers)
    assert response.status_code in (200, 400, 401, 413)
    if not signed:
        assert response.status_code == 401
    assert pipeline_keys(redis_server) == 0  # random bytes are never a valid delivery


@FUZZ
@given(
    path=st.lists(
        st.sampled_from(
            [
                "entry",
                0,
                "changes",
                0,
                "value",
                "messages",
                "metadata",
                "contacts",
                "statuses",
                "from",
                "id",
            ]
        ),
        min_size=1,
        max_size=6,
    ),
    value=json_values,
)
def test_fuzz_signed_mutations_never_500(
    ingress: httpx.Client, redis_server: RedisServer, path: list[Any], value: Any
) -> None:
    payload = delivery([text_message("51900000077", "fuzz")])
    target: Any = payload
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            break
    key = path[-1]
    fits_dict = isinstance(target, dict) and isinstance(key, str)
    fits_list = isinstance(target, list) and isinstance(key, int) and key < len(target)
    if fits_dict or fits_list:
        target[key] = value
    body = orjson.dumps(payload)
    log = redis_server.client(3)
    last = log.xrevrange(REPLAY_LOG, count=1)
    since = last[0][0].decode() if last else "0-0"
    response = ingress.post("/webhook", content=body, headers=sign(body))
    assert response.status_code in (200, 400), response.text
    added = log.xrange(REPLAY_LOG, min=f"({since}")  # what this delivery logged
    event(f"{response.status_code}, {len(added)} logged")
    if response.status_code == 400:
        assert added == []
        return
    answer = response.json()
    delivered = [e.event_id for e in split_delivery(orjson.loads(body))]
    assert answer["accepted"] + answer["duplicates"] == len(delivered), answer
    # one entry per accepted envelope, in the delivery's order; none for a duplicate
    logged = [orjson.loads(fields[b"envelope"])["event_id"] for _, fields in added]
    assert len(logged) == answer["accepted"], (answer, logged)
    remaining = iter(delivered)
    assert all(event in remaining for event in logged), (logged, delivered)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]),
        st.text(max_size=30),
        max_size=4,
    )
)
def test_fuzz_verification(ingress: httpx.Client, params: dict[str, str]) -> None:
    response = ingress.get("/webhook", params=params)
    valid = (
        params.get("hub.mode") == "subscribe"
        and params.get("hub.verify_token") == VERIFY
        and "hub.challenge" in params
    )
    assert response.status_code == (200 if valid else 403)


async def test_concurrent_deliveries_share_round_trips_and_still_dedup(
    redis_url: str, redis_server: RedisServer
) -> None:
    bodies = [
        orjson.dumps(delivery([text_message(f"5198{n:07d}", "hi", f"wamid.CONC{n}")]))
        for n in range(60)
    ]
    bodies += bodies[:10]  # the same deliveries again, concurrently with the first
    with ServedApp(create_ingress(make_settings(redis_url))) as served:
        async with httpx.AsyncClient(base_url=served.url) as client:
            responses = await asyncio.gather(
                *(client.post("/webhook", content=b, headers=sign(b)) for b in bodies)
            )
    assert [r.status_code for r in responses] == [200] * 70
    assert sum(r.json()["accepted"] for r in responses) == 60
    assert sum(r.json()["duplicates"] for r in responses) == 10
    assert redis_server.client(3).xlen(REPLAY_LOG) == 60
    assert sum(queued(redis_server).values()) == 60


@pytest.mark.parametrize("broker", BROKERS)
def test_broker_elsewhere_publishes_through_celery(
    redis_url: str, redis_server: RedisServer, broker: str, request: pytest.FixtureRequest
) -> None:
    """With the broker elsewhere (another Redis DB, or RabbitMQ) the script only dedups
    and logs, and the ingress publishes with Celery — on RabbitMQ with publisher
    confirms, before it answers 200: the messages are on the vhost's partition queues
    then, no worker having declared them; a second delivery of the same ids enqueues
    nothing."""
    if broker == "amqp":
        settings = make_settings(redis_url, broker_url=request.getfixturevalue("amqp_url"))
    else:
        settings = make_settings(redis_url, broker_url=f"{redis_url}/5")
    first, second = users_in_two_partitions()
    body = orjson.dumps(delivery([text_message(first, "a"), text_message(second, "b")]))
    with ServedApp(create_ingress(settings)) as served, httpx.Client(base_url=served.url) as client:
        for expected in ({"accepted": 2, "duplicates": 0}, {"accepted": 0, "duplicates": 2}):
            response = client.post("/webhook", content=body, headers=sign(body))
            assert response.status_code == 200 and response.json() == expected
    if broker == "amqp":
        depths = amqp_depths(settings.broker)
    else:
        broker_db = redis_server.client(5)
        depths = {
            queue_name(k): n for k in range(PARTITIONS) if (n := broker_db.llen(queue_name(k)))
        }
    assert depths == {
        queue_name(partition_for(PHONE_ID, first, PARTITIONS)): 1,
        queue_name(partition_for(PHONE_ID, second, PARTITIONS)): 1,
    }
    assert queued(redis_server) == {}  # on the broker only
    assert redis_server.client(3).xlen(REPLAY_LOG) == 2


async def test_an_unreachable_or_silent_broker_answers_503_in_bounded_time(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A broker nobody listens for (refused) and one that accepts the connection but
    never answers (a listening socket nobody reads): 503 within the publisher's bound,
    nothing marked seen or logged. While the publish waits, the event loop serves other
    requests: it runs on a thread."""
    pipeline = redis_server.client(3)
    body = orjson.dumps(delivery([text_message("51966666666", "6")]))
    (sent,) = posted_envelopes(body)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nothing ever answers
        for port, bound in ((free_port(), 1.0), (silent.getsockname()[1], 3.0)):
            settings = make_settings(redis_url, broker_url=f"amqp://guest:guest@127.0.0.1:{port}/x")
            publisher = create_publisher(settings, timeout=0.5)
            with ServedApp(create_ingress(settings, publish=publisher)) as served:
                async with httpx.AsyncClient(base_url=served.url) as client:
                    started = time.monotonic()
                    posting = asyncio.create_task(
                        client.post("/webhook", content=body, headers=sign(body))
                    )
                    if port == silent.getsockname()[1]:
                        deadline = time.monotonic() + 5
                        while not pipeline.exists(seen_key(sent)):  # publishing now
                            assert time.monotonic() < deadline and not posting.done()
                            await asyncio.sleep(0.005)
                        assert (await client.get("/healthz")).status_code == 200
                        assert not posting.done()  # answered while the publish waits
                    answer = await posting
                    took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert took < bound, (port, took)
            assert not pipeline.exists(seen_key(sent)) and not pipeline.xlen(REPLAY_LOG)


async def test_a_publish_past_the_deadline_is_undone(
    redis_url: str, redis_server: RedisServer
) -> None:
    """The per-delivery deadline bounds the answer even when the publisher's own
    bounds are longer: the delivery fails with ``PublishTimeout``, its marks undone."""
    body = orjson.dumps(delivery([text_message("51955555555", "5")]))
    envelopes = posted_envelopes(body)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/x"
        settings = make_settings(redis_url, broker_url=url)
        client = Redis.from_url(settings.pipeline)
        acceptor = Acceptor(
            client, settings, create_publisher(settings, timeout=2.0), publish_deadline=0.3
        )
        started = time.monotonic()
        with pytest.raises(PublishTimeout, match=r"over 0.3s \(0 of 1 envelope"):
            await acceptor.accept(envelopes)
        assert time.monotonic() - started < 1.5
    # the listening socket is closed: the abandoned publish fails at once and its
    # thread ends, publishing nothing
    await client.aclose()
    pipeline = redis_server.client(3)
    assert not pipeline.exists(seen_key(envelopes[0])) and not pipeline.xlen(REPLAY_LOG)


async def test_a_failed_publish_undoes_only_what_the_broker_did_not_confirm(
    redis_url: str, redis_server: RedisServer, amqp_url: str
) -> None:
    """A delivery of three envelopes whose second fails to publish: the first, confirmed,
    stays accepted (on its queue, marked seen, in the replay log); the second and the
    third (never tried: a user's envelopes go in order) are undone. Meta's retry then
    enqueues exactly those two."""
    settings = make_settings(redis_url, broker_url=amqp_url)
    confirming = create_publisher(settings)
    first, second = users_in_two_partitions()

    def failing_on_second(envelope: Envelope) -> object:
        if envelope.user_id == second:
            raise ConnectionError("the broker went away")
        return confirming(envelope)

    body = orjson.dumps(
        delivery([text_message(first, "1"), text_message(second, "2"), text_message(first, "3")])
    )
    envelopes = posted_envelopes(body)
    client = Redis.from_url(settings.pipeline)
    try:
        with pytest.raises(ConnectionError):
            await Acceptor(client, settings, failing_on_second).accept(envelopes)
        pipeline = redis_server.client(3)
        assert [pipeline.exists(seen_key(e)) for e in envelopes] == [1, 0, 0]
        assert pipeline.xlen(REPLAY_LOG) == 1
        first_queue = queue_name(partition_for(PHONE_ID, first, PARTITIONS))
        second_queue = queue_name(partition_for(PHONE_ID, second, PARTITIONS))
        assert amqp_depths(amqp_url) == {first_queue: 1}
        ids = await Acceptor(client, settings, confirming).accept(envelopes)
        assert ids[0] is None and ids[1] and ids[2]
        assert amqp_depths(amqp_url) == {first_queue: 2, second_queue: 1}
        assert pipeline.xlen(REPLAY_LOG) == 3
    finally:
        await client.aclose()
        confirming.close()


# -- one log line per answer ------------------------------------------------------------------

#: A message text that must never reach a log line
TEXT = "pineapple-on-pizza-is-a-secret"


def delivery_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "parley.ingress" and record.getMessage().startswith("delivery ")
    ]


def one_line(caplog: pytest.LogCaptureFixture, status: int, *words: str) -> str:
    """The one log line of the answer just received, saying ``words``."""
    lines = [record.getMessage() for record in delivery_lines(caplog)]
    assert len(lines) == 1, (status, lines)
    (line,) = lines
    for word in (f"status={status}", "ms=", *words):
        assert word in line, (word, line)
    assert TEXT not in line, line
    caplog.clear()
    return line


def status_after_partial_body(url: str, declared: int, sent: bytes) -> int:
    """POST ``declared`` bytes but send only ``sent``; the status the ingress answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
            + sent
        )
        return int(sock.makefile("rb").readline().split()[1])


def test_every_answer_to_a_delivery_is_one_log_line_without_text(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="parley.ingress")
    settings = make_settings(redis_url, allowed_phone_ids=PHONE_ID, body_timeout=0.5)
    good = orjson.dumps(delivery([text_message("51900000101", TEXT, "wamid.LOGGED1")]))
    stranger = orjson.dumps(
        delivery([text_message("51900000102", TEXT, "wamid.LOGGED2")], phone_id="999")
    )
    page = orjson.dumps({"object": "page", "entry": [], "text": TEXT})
    not_json = b"not json: " + TEXT.encode()
    too_big = orjson.dumps(delivery([text_message("51900000103", TEXT * 3000)]))
    with (
        ServedApp(create_ingress(settings)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        caplog.clear()
        assert client.post("/webhook", content=good, headers=sign(good)).status_code == 200
        one_line(caplog, 200, "outcome=accepted", "envelopes=1", "new=1", "duplicates=0", "LOGGED1")
        assert client.post("/webhook", content=good, headers=sign(good)).status_code == 200
        one_line(caplog, 200, "outcome=accepted", "new=0", "duplicates=1")
        assert client.post("/webhook", content=good).status_code == 401
        one_line(caplog, 401, "outcome=refused", "reason=bad_signature", f"bytes={len(good)}")
        assert client.post("/webhook", content=not_json, headers=sign(not_json)).status_code == 400
        one_line(caplog, 400, "reason=not_json")
        assert client.post("/webhook", content=page, headers=sign(page)).status_code == 400
        one_line(caplog, 400, "reason=not_whatsapp", "object must be")
        answer = client.post("/webhook", content=stranger, headers=sign(stranger))
        assert answer.status_code == 403
        one_line(caplog, 403, "reason=phone_id_not_allowed", "tenants=999", "LOGGED2")
        assert client.post("/webhook", content=too_big, headers=sign(too_big)).status_code == 413
        one_line(caplog, 413, "reason=too_large", f"bytes={len(too_big)}")
        chunks = iter([too_big[:40_000], too_big[40_000:]])  # chunked: no Content-Length
        assert client.post("/webhook", content=chunks, headers=sign(too_big)).status_code == 413
        one_line(caplog, 413, "reason=too_large")
        assert status_after_partial_body(served.url, 100, b'{"object"') == 408
        one_line(caplog, 408, "reason=slow_body", "bytes=9")
    unreachable = make_settings(f"redis://127.0.0.1:{free_port()}")
    with ServedApp(create_ingress(unreachable)) as served:
        caplog.clear()
        assert httpx.post(f"{served.url}/webhook", content=good, headers=sign(good)).is_error
        one_line(caplog, 503, "outcome=unavailable", "reason=ConnectionError", "LOGGED1")
    tiny_budget = make_settings(redis_url, max_buffered_bytes=8)
    with ServedApp(create_ingress(tiny_budget)) as served:
        caplog.clear()
        answer = httpx.post(f"{served.url}/webhook", content=good, headers=sign(good))
        assert answer.status_code == 503
        one_line(caplog, 503, "outcome=refused", "reason=busy")
    assert TEXT not in caplog.text
