"""The worker runtime in-process, on the tests' redis-server: done-markers, replays,
per-dispatch isolation, routing by kind, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from parley import WappaBuilder, WappaEventHandler, Webhook
from parley.testing import PHONE_ID, delivery, envelope, text_message
from parley.wire.keys import DEAD_LETTERS
from parley.workers.runtime import Runtime
from parley.workers.webhook import split_delivery


class Probe(WappaEventHandler):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # shared on purpose: the test reads it
        self.startups = 0

    async def on_startup(self) -> None:
        self.startups += 1

    async def handle_message(self, webhook: Webhook) -> None:
        assert not hasattr(self, "scratch"), "saw another dispatch's state"
        self.scratch = webhook.message_id
        self.calls.append(("message", webhook.get_message_text()))
        await self.state_cache.increment_field("probe", "n")
        if webhook.get_message_text() == "slow":
            await asyncio.sleep(5)

    async def handle_status(self, webhook: Webhook) -> None:
        self.calls.append(("status", webhook.message_type))

    async def handle_error(self, webhook: Webhook) -> None:
        self.calls.append(("error", str(webhook.errors[0].code)))


@pytest.fixture
def runtime(redis_url: str) -> Iterator[tuple[Runtime, Probe]]:
    probe = Probe()
    app = (
        WappaBuilder()
        .with_redis_cache(redis_url, pipeline=True)
        .with_event_handler(probe)
        .with_settings(handler_timeout=0.5)
        .build()
    )
    runtime = Runtime(app, node="test@here")
    yield runtime, probe
    runtime.close()


def test_a_redelivered_done_webhook_does_not_run_again(runtime: tuple[Runtime, Probe]) -> None:
    rt, probe = runtime
    env = envelope("51900000001", "hello")
    assert rt.run(rt.process(env.to_json())) == "done"
    assert rt.run(rt.process(env.to_json())) == "duplicate"
    assert probe.calls == [("message", "hello")] and probe.startups == 1
    replay = env.model_copy(update={"replay_id": "replay-1"})
    assert rt.run(rt.process(replay.to_json())) == "done"  # a replay has its own id
    assert len(probe.calls) == 2


def test_dispatch_by_kind(runtime: tuple[Runtime, Probe]) -> None:
    rt, probe = runtime
    body = delivery([text_message("51900000002", "hi")])
    value = body["entry"][0]["changes"][0]["value"]
    value["statuses"] = [
        {
            "id": "wamid.X",
            "status": "delivered",
            "timestamp": "1700000000",
            "recipient_id": "51900000002",
        }
    ]
    value["errors"] = [{"code": 131047, "title": "Re-engagement message"}]
    for env in split_delivery(body):
        assert rt.run(rt.process(env.to_json())) == "done"
    assert probe.calls == [("message", "hi"), ("status", "delivered"), ("error", "131047")]


def test_a_handler_past_its_timeout_is_dead_lettered(
    runtime: tuple[Runtime, Probe], redis_server
) -> None:  # type: ignore[no-untyped-def]
    rt, _ = runtime
    assert rt.run(rt.process(envelope("51900000003", "slow").to_json())) == "dead"
    (entry,) = redis_server.client(3).xrange(DEAD_LETTERS)
    assert entry[1][b"error_type"] == b"builtins.TimeoutError"
    assert entry[1][b"tenant_id"] == PHONE_ID.encode()
