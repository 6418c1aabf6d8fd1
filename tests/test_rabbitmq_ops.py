"""The operator's view on a RabbitMQ broker, all real: ``parley status``, the ingress's
``/metrics`` and ``parley replay`` against a vhost of this test's own on the machine's
RabbitMQ (``tests/rabbitmq.py``), the pipeline on the tests' redis-server. Queue depths
come from the broker (a passive declare), never from Redis lists; the lag is not read
on AMQP (it would mean taking a message), so it is reported as not available.

The broker-outage cases need no RabbitMQ: an AMQP URL nobody answers on."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
from kombu import Connection

from parley.asgi import create_ingress
from parley.depths import AmqpQueueDepths, BrokerUnreadable, open_depths
from parley.metrics import PipelineCollector
from parley.status import read_state
from parley.testing import PHONE_ID, RedisServer, delivery, free_port, text_message
from parley.wire.keys import queue_name
from parley.wire.partition import partition_for
from parley.workers.celery import create_celery, publish
from parley.workers.settings import Settings
from tests.helpers import (
    PARTITIONS,
    ROOT,
    make_settings,
    queued,
    scrape,
    sign,
    users_in_two_partitions,
    value,
)
from tests.http_server import ServedApp


def nobody_answers() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/nowhere"


def parley(redis_url: str, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``parley ARGS`` as a subprocess on this broker and pipeline, with no terminal."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        cwd=ROOT,
        env={
            **inherited,
            "PARLEY_REDIS_URL": redis_url,
            "PARLEY_BROKER_URL": broker_url,
            "PARLEY_PARTITIONS": str(PARTITIONS),
            "COLUMNS": "200",  # one table row per line
        },
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def status_rows(output: str) -> dict[int, list[str]]:
    """``parley status``'s partition table: partition → its cells."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().split("│")[1:-1]]
        if len(cells) >= 6 and cells[0].isdigit() and cells[1].startswith("parley"):
            rows[int(cells[0])] = cells
    return rows


def take_all(url: str, queue: str) -> list[dict[str, Any]]:
    """Every message of ``queue``, oldest first, taken and acked (the test is its only
    consumer: nothing else sees the order change)."""
    bodies = []
    with Connection(url) as connection:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            bodies.append(orjson.loads(message.body))
            channel.basic_ack(message.delivery_tag)
        channel.close()
    return bodies


def envelopes_of(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelopes of Celery task messages (protocol 2: args, kwargs, embed)."""
    return [body[0][0] for body in bodies]


def post(client: httpx.Client, user: str, text: str) -> None:
    body = orjson.dumps(delivery([text_message(user, text)]))
    answer = client.post("/webhook", content=body, headers=sign(body))
    assert answer.status_code == 200, answer.text


# -- on the machine's RabbitMQ ----------------------------------------------------------


def test_status_metrics_and_replay_read_and_use_the_rabbitmq_queues(
    amqp_url: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Webhooks accepted by an ingress publishing to RabbitMQ wait there (no worker):
    ``/metrics`` and ``parley status`` count them per partition from the broker, say
    the lag is not available, and ``parley replay`` publishes the replays behind them
    through Celery, in the original order, nothing onto Redis lists."""
    user_a, user_b = users_in_two_partitions()
    part = {user: partition_for(PHONE_ID, user, PARTITIONS) for user in (user_a, user_b)}
    settings = make_settings(redis_url, broker_url=amqp_url)
    with (
        ServedApp(create_ingress(settings)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        for seq in range(3):
            post(client, user_a, f"a{seq}")
        post(client, user_b, "b0")
        metrics = scrape(client)
        assert value(metrics, "parley_pipeline_up") == 1
        assert value(metrics, "parley_broker_up") == 1
        for k in range(PARTITIONS):
            expected = {part[user_a]: 3, part[user_b]: 1}.get(k, 0)
            assert value(metrics, "parley_partition_depth", partition=str(k)) == expected
        assert not [name for name, _ in metrics if name == "parley_partition_lag_seconds"]
        assert value(metrics, "parley_replay_log_entries") == 4
    assert queued(redis_server) == {}  # the broker holds them, not the pipeline DB

    result = parley(redis_url, amqp_url, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = status_rows(result.stdout)
    assert sorted(rows) == list(range(PARTITIONS)), result.stdout
    # partition, queue, depth, lag, owner, in flight, consumers
    assert rows[part[user_a]][2:4] == ["3", "n/a"] and rows[part[user_a]][-1] == "0"
    assert rows[part[user_b]][2:4] == ["1", "n/a"]
    assert "lag: n/a on this broker" in result.stdout
    assert "queue depths: unknown" not in result.stdout

    result = parley(redis_url, amqp_url, "replay", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed 4 logged webhooks as replay-" in result.stdout
    assert queued(redis_server) == {}

    with open_depths(
        amqp_url, pipeline_url=settings.pipeline, pipeline=redis_server.client(3)
    ) as depths:
        state = read_state(redis_server.client(3), PARTITIONS, depths)
    assert state.lag_known is False and state.broker_error is None
    assert {row.partition: row.depth for row in state.partitions if row.depth} == {
        part[user_a]: 6,
        part[user_b]: 2,
    }
    taken = envelopes_of(take_all(amqp_url, queue_name(part[user_a])))
    texts = [env["payload"]["messages"][0]["text"]["body"] for env in taken]
    assert texts == ["a0", "a1", "a2"] * 2  # the originals, then their replays in order
    assert [env["replay_id"] is not None for env in taken] == [False] * 3 + [True] * 3
    assert len({env["replay_id"].split(":")[0] for env in taken[3:]}) == 1  # one batch


def test_a_queue_not_declared_yet_is_empty_and_the_channel_survives_it(amqp_url: str) -> None:
    """Nothing published to a partition yet: its queue does not exist; a passive
    declare of it fails (the server closes that channel), and the next queue is still
    read."""
    settings = Settings(redis_url="redis://127.0.0.1:1", broker_url=amqp_url, partitions=4)
    app = create_celery(settings)
    try:
        user = "51900000001"
        k = publish(app, _envelope(user), settings.partitions)
    finally:
        app.close()
    queues = [queue_name(n) for n in range(4)]
    with AmqpQueueDepths(amqp_url) as depths:
        found = depths.read(queues)
        again = depths.read(queues)  # the same connection, read twice
    assert {q: d.ready for q, d in found.items()} == {q: int(q == queue_name(k)) for q in queues}
    assert found == again
    assert all(d.oldest is None and d.consumers == 0 for d in found.values())


def _envelope(user: str) -> Any:
    from parley.testing import envelope

    return envelope(user, "hello")


# -- a broker that does not answer: the rest is still reported --------------------------


def test_metrics_without_the_broker_export_the_rest_and_say_so(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_url)
    collector = PipelineCollector(
        settings.pipeline, PARTITIONS, timeout=1.0, broker_url=nobody_answers()
    )
    with caplog.at_level(logging.WARNING, logger="parley.metrics"):
        families = {family.name: family for family in collector.collect()}
    assert families["parley_pipeline_up"].samples[0].value == 1
    assert families["parley_broker_up"].samples[0].value == 0
    assert "parley_partition_depth" not in families
    assert "parley_partition_lag_seconds" not in families
    assert "parley_partition_owner" in families and "parley_dead_letters" in families
    warnings = [r for r in caplog.records if r.name == "parley.metrics"]
    assert len(warnings) == 1 and "guest:***@" in warnings[0].getMessage()
    assert "guest:guest" not in warnings[0].getMessage()


def test_status_without_the_broker_shows_the_rest(redis_url: str) -> None:
    broker = nobody_answers()
    result = parley(redis_url, broker, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = status_rows(result.stdout)
    assert {cells[2] for cells in rows.values()} == {"?"}
    assert "queue depths: unknown (the broker at amqp://guest:***@127.0.0.1" in result.stdout
    assert "dead letters: 0" in result.stdout


def test_replay_to_a_broker_that_does_not_answer_is_one_line(
    redis_url: str, redis_server: RedisServer
) -> None:
    """The log filled through the Redis broker; the replay asked of an AMQP one that is
    down: one ``Error:`` line saying how many were sent (none), nothing pushed."""
    with (
        ServedApp(create_ingress(make_settings(redis_url))) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        post(client, "51900000001", "hello")
        post(client, "51900000002", "hello")
    redis_server.client(3).delete(*[queue_name(k) for k in range(PARTITIONS)])
    result = parley(redis_url, nobody_answers(), "replay", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "failed after 0 of 2 replays" in errors[0] and "guest:***@" in errors[0]
    assert queued(redis_server) == {}


def test_a_redis_broker_apart_from_the_pipeline_is_read_where_its_lists_are(
    redis_server: RedisServer,
) -> None:
    """Broker on DB 5, pipeline on DB 3: the depths are the broker's lists (before, the
    pipeline DB's own, always empty, were read)."""
    settings = Settings(
        redis_url=redis_server.url, broker_url=f"{redis_server.url}/5", partitions=PARTITIONS
    )
    app = create_celery(settings)
    try:
        k = publish(app, _envelope("51900000001"), PARTITIONS)
    finally:
        app.close()
    with open_depths(
        settings.broker, pipeline_url=settings.pipeline, pipeline=redis_server.client(3)
    ) as depths:
        state = read_state(redis_server.client(3), PARTITIONS, depths)
    assert state.lag_known and state.broker_error is None
    assert {row.partition: row.depth for row in state.partitions if row.depth} == {k: 1}
    assert state.partitions[k].lag is not None and state.partitions[k].lag >= 0


def test_an_unknown_broker_is_named_with_its_password_hidden() -> None:
    with pytest.raises(BrokerUnreadable) as caught:
        AmqpQueueDepths(nobody_answers(), timeout=1.0).read([queue_name(0)])
    assert "amqp://guest:***@127.0.0.1" in str(caught.value)
