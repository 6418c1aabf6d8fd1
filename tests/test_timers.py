"""Scheduled actions with real worker processes: each timer fires once, in its user's
lane, however many nodes run, whatever happens to them (``parley.workers.timers``)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer
from parley.wire.envelope import Envelope
from parley.wire.keys import REPLAY_LOG, TIMERS
from parley.wire.messages import task_shadow
from parley.workers.settings import Settings
from parley.workers.timers import RedisTimers, TimerError, due_time, timer_envelope
from tests.helpers import RECONCILING, TOKEN, Pipeline, make_settings, wait_for

APP = "tests.apps:timers"


def host() -> str:
    return socket.gethostname()


def events(server: RedisServer, user: str) -> list[list[Any]]:
    raw = server.client(1).hget(f"{PHONE_ID}:state:events:{user}", "list")
    return orjson.loads(raw) if raw else []


def fired(server: RedisServer, user: str) -> list[list[Any]]:
    return [event for event in events(server, user) if event[0] == "timer"]


def logged_timers(server: RedisServer) -> list[Envelope]:
    return [
        Envelope.from_json(orjson.loads(fields[b"envelope"]))
        for _, fields in server.client(3).xrange(REPLAY_LOG)
        if fields[b"kind"] == b"timer"
    ]


def schedule_directly(settings: Settings, timers: list[tuple[str, str, float]]) -> None:
    """``(user, key, seconds from now)`` each, through the store handlers use."""

    async def run() -> None:
        store = RedisTimers.connect(settings)
        for user, key, after in timers:
            envelope = timer_envelope(PHONE_ID, user, "remind", key, {}, time.time() + after)
            await store.schedule(envelope)
        await store.aclose()

    asyncio.run(run())


def redis_now(server: RedisServer) -> float:
    seconds, micros = server.client(3).time()
    return seconds + micros / 1e6


# -- the API, no process -------------------------------------------------------------------


def test_schedule_arguments_are_checked_with_the_field_named() -> None:
    with pytest.raises(TimerError, match="exactly one of after= and at="):
        due_time(None, None)
    with pytest.raises(TimerError, match="after="):
        due_time(-1, None)
    with pytest.raises(TimerError, match="aware datetime"):
        from datetime import datetime

        due_time(None, datetime(2030, 1, 1))
    with pytest.raises(TimerError, match="action"):
        timer_envelope(PHONE_ID, "5191", "", "", {}, 0.0)
    with pytest.raises(TimerError, match="data must be JSON"):
        timer_envelope(PHONE_ID, "5191", "remind", "", {"at": object()}, 0.0)
    envelope = timer_envelope(PHONE_ID, "5191", "remind", "cart", {"n": 1}, 10.0)
    assert task_shadow(envelope) == "parley.timer"  # what Flower shows
    again = timer_envelope(PHONE_ID, "5191", "remind", "cart", {"n": 1}, 10.0)
    assert envelope.event_id != again.event_id  # each schedule fires with its own id


# -- with worker processes -----------------------------------------------------------------


def test_a_timer_runs_in_its_users_lane_in_order_with_the_messages(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """The timer falls due while the user's slow message runs: it waits for it (its
    lane), and a message sent after it fired runs after it."""
    pipeline = Pipeline(redis_server, tmp_path, graph)
    try:
        pipeline.start_worker(APP, "auto", "lane")
        user = "51900000001"
        pipeline.publish(user, "schedule remind cart 0.3")
        pipeline.publish(user, "sleep 2")
        wait_for(lambda: logged_timers(redis_server), what="the timer to fire")
        assert not fired(redis_server, user)  # due, fired, and waiting behind "sleep 2"
        pipeline.publish(user, "after")
        wait_for(lambda: len(events(redis_server, user)) == 4, what="four events")
        kinds = [
            event[1] if event[0] == "message" else "timer" for event in events(redis_server, user)
        ]
        assert kinds == ["schedule remind cart 0.3", "sleep 2", "timer", "after"]
    finally:
        pipeline.close()


def test_cancel_and_reschedule(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    pipeline = Pipeline(redis_server, tmp_path, graph)
    try:
        node = pipeline.start_worker(APP, "auto", "cancels")
        user = "51900000002"
        pipeline.publish(user, "schedule cancelled a 0.5")
        pipeline.publish(user, "cancel cancelled a")
        pipeline.publish(user, "schedule moved b 0.3")
        pipeline.publish(user, "schedule moved b 1.5")  # moves it: fires once, later
        # cancelled after it fired, before it ran: it waits behind "sleep", then is skipped
        pipeline.publish(user, "schedule late c 0")
        pipeline.publish(user, "sleep 1")
        pipeline.publish(user, "cancel late c")
        pipeline.publish(user, "schedule sentinel s 2.5")  # after every other due time
        wait_for(lambda: any(e[1] == "sentinel" for e in fired(redis_server, user)), timeout=30)
        actions = Counter(event[1] for event in fired(redis_server, user))
        assert actions == {"moved": 1, "sentinel": 1}, events(redis_server, user)
        (moved,) = (e for e in fired(redis_server, user) if e[1] == "moved")
        scheduled = {e[1]: e for e in events(redis_server, user) if e[0] == "message"}
        assert moved[3] >= moved[6] - 5 and moved[6] >= moved[3]  # ran at or after its due
        assert "schedule moved b 1.5" in scheduled
        assert "skipped" in node.log() and "cancelled or scheduled again" in node.log()
        logged = Counter(e.payload["action"] for e in logged_timers(redis_server))
        assert logged == {"moved": 1, "late": 1, "sentinel": 1}  # "late" fired, never ran
        assert redis_server.client(3).zcard(TIMERS) == 0
    finally:
        pipeline.close()


@pytest.mark.timeout(240)
def test_a_thousand_timers_on_three_nodes_fire_once_each_through_a_sigkill(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """1,000 timers over 100 users, due over 6 s, three ``auto`` nodes; one is SIGKILLed
    while they fall due. Each timer fires once (one replay-log entry); its handler ran,
    twice only where the killed node was running it."""
    # the reconciler at test speed: a message kombu's Redis transport loses with a
    # SIGKILLed node (README: "One message can be lost") is sent again within seconds
    pipeline = Pipeline(redis_server, tmp_path, graph, **RECONCILING)
    try:
        nodes = [pipeline.start_worker(APP, "auto", f"n{i}") for i in range(3)]
        wait_for(
            lambda: (
                len(
                    {
                        h
                        for h in redis_server.client(3).mget(
                            [f"parley:lease:{k}" for k in range(8)]
                        )
                        if h
                    }
                )
                == 3
            ),
            what="the three nodes to share the partitions",
        )
        users = [f"5198{n:07d}" for n in range(100)]
        timers = [(users[i % 100], f"k{i}", 1 + 6 * i / 1000) for i in range(1000)]
        schedule_directly(pipeline.settings, timers)
        wait_for(lambda: len(logged_timers(redis_server)) >= 300, what="a third fired")
        killed = nodes[0]
        killed.kill()
        wait_for(
            lambda: len({e[4] for u in users for e in fired(redis_server, u)}) >= 1000,
            timeout=120,
            what="every timer's handler",
        )
        logged = logged_timers(redis_server)
        assert len(logged) == 1000
        assert len({e.event_id for e in logged}) == 1000
        runs: dict[str, list[int]] = defaultdict(list)
        for user in users:
            for event in fired(redis_server, user):
                runs[event[4]].append(event[5])
        assert set(runs) == {e.event_id for e in logged}
        twice = {nonce: pids for nonce, pids in runs.items() if len(pids) > 1}
        assert all(pids[0] == killed.process.pid and len(pids) == 2 for pids in twice.values())
        assert redis_server.client(3).zcard(TIMERS) == 0
    finally:
        pipeline.close()


def test_timers_due_while_every_node_was_down_fire_when_one_comes_back(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    pipeline = Pipeline(redis_server, tmp_path, graph)
    try:
        first = pipeline.start_worker(APP, "auto", "first")
        first.stop()
        users = [f"5197{n:07d}" for n in range(20)]
        schedule_directly(pipeline.settings, [(u, "down", 0.5) for u in users])
        due = time.time() + 0.5
        wait_for(lambda: redis_now(redis_server) > due + 1, what="the due time to pass")
        assert not logged_timers(redis_server)  # no node: nothing fired
        pipeline.start_worker(APP, "auto", "back")
        wait_for(lambda: all(fired(redis_server, u) for u in users), what="the late timers")
        for user in users:
            ((_, _, _, due_at, _, _, ran_at),) = fired(redis_server, user)
            assert ran_at > due_at + 1  # late, and told its due time
    finally:
        pipeline.close()


def test_parley_status_shows_pending_timers(redis_url: str, redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url)
    schedule_directly(settings, [("51900000009", f"k{i}", 600) for i in range(3)])
    from tests.helpers import cli

    assert "timers pending: 3" in cli(redis_server, "status")


def test_the_pizza_flow_reminds_a_user_who_went_quiet_and_not_one_who_finished(
    graph: FakeGraphAPI,
) -> None:
    """The example, in one process on memory: each answer moves the reminder, the end of
    the order cancels it, and a due reminder says where the user left off."""
    from parley.examples.pizza import REMIND_AFTER, PizzaOrderHandler
    from parley.testing import envelope
    from parley.workers.builder import ParleyApp
    from parley.workers.pipeline import MemoryPipelineStore
    from parley.workers.runtime import Runtime
    from parley.workers.timers import MemoryTimers

    settings = Settings(
        whatsapp_token=TOKEN, whatsapp_phone_id=PHONE_ID, whatsapp_api_base=graph.url
    )
    timers = MemoryTimers()
    runtime = Runtime(
        ParleyApp(PizzaOrderHandler(), settings, "memory"),
        pipeline=MemoryPipelineStore(),
        timers=timers,
    )
    try:
        quiet, done = "51900000011", "51900000012"
        for text in ("hi", "large"):
            assert runtime.run(runtime.process(envelope(quiet, text).to_json())) == "done"
        for text in ("hi", "small", "cheese", "yes"):
            assert runtime.run(runtime.process(envelope(done, text).to_json())) == "done"
        (pending,) = timers.pending.values()  # one, moved by each answer; none for "done"
        assert pending.user_id == quiet
        assert pending.received_at - time.time() == pytest.approx(
            REMIND_AFTER.total_seconds(), abs=5
        )
        assert runtime.run(runtime.process(pending.to_json())) == "done"
        reminder = [m.text for m in graph.sent if m.to == quiet][-1]
        assert reminder is not None and reminder.startswith("⏰") and "toppings" in reminder
    finally:
        runtime.close()
