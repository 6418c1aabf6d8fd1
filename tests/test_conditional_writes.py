"""Conditional writes under real concurrency and real failures.

- A race: 8 processes × 50 attempts book the same 10 slots, both ways
  (``create_if_absent`` and ``replace_if``): each slot is booked exactly once and every
  loser is told so with the winner's row; the same passes done as get-then-set
  double-book, which shows the race can tell the difference.
- The retry rule: a conditional write whose reply was lost is not retried (a retry
  would report the caller's own write as someone else's); one refused before sending
  is retried and applies once.
- The Lua comparison is the twin of ``codec.json_equal``, on texts no Python write
  produces too (whitespace, exponents, 17-digit floats).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from parley.cache import CacheUnavailableError, WriteOutcome, create_cache_factory
from parley.cache.codec import json_equal
from parley.cache.lua import lua
from parley.cache.redis import NOT_IDEMPOTENT, RedisCacheFactory, close_pools
from parley.cache.settings import CacheSettings
from parley.testing import RedisServer
from parley.workers.calls import Calls, GuardedStore
from tests import booking_worker
from tests.helpers import wait_for

PROCESSES = 8


@pytest.fixture(params=["redis", "json"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "redis":
        return "redis", {"redis_url": request.getfixturevalue("redis_url")}
    return "json", {"json_cache_dir": str(tmp_path / "cache")}


def run_processes(
    backend: tuple[str, dict[str, Any]], naive: bool, out_dir: Path
) -> list[list[Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    outs = [out_dir / f"process-{index}.json" for index in range(PROCESSES)]
    processes = [
        ctx.Process(
            target=booking_worker.run,
            args=(*backend, index, naive, barrier, outs[index]),
        )
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0, f"worker exited with {process.exitcode}"
    return [orjson.loads(out.read_bytes()) for out in outs]


def table_of(backend: tuple[str, dict[str, Any]]) -> Any:
    return create_cache_factory(backend[0], **backend[1])(tenant_id="tenant").create_table_cache()


async def test_each_slot_is_booked_exactly_once(
    backend: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    table = table_of(backend)
    for slot in range(booking_worker.SLOTS):
        await table.set("slots", str(slot), {"holder": None, "slot": str(slot)})
    await close_pools()

    records = [r for rs in run_processes(backend, False, tmp_path) for r in rs]
    assert len(records) == PROCESSES * booking_worker.ATTEMPTS

    for way, won, lost in (
        ("create", WriteOutcome.CREATED, WriteOutcome.ALREADY_EXISTS),
        ("replace", WriteOutcome.REPLACED, WriteOutcome.CONDITION_NOT_MET),
    ):
        name = "bookings" if way == "create" else "slots"
        winners = {r["mine"]["slot"]: r["mine"] for r in records if r[way] == won.value}
        assert Counter(r["mine"]["slot"] for r in records if r[way] == won.value) == Counter(
            {str(slot): 1 for slot in range(booking_worker.SLOTS)}
        ), f"{way}: not exactly one winner per slot"
        for slot, winner in winners.items():
            assert await table.get(name, slot) == winner
        losers = [r for r in records if r[way] != won.value]
        assert len(losers) == PROCESSES * booking_worker.ATTEMPTS - booking_worker.SLOTS
        for r in losers:
            assert r[way] == lost.value, r
            assert r[f"{way}_current"] == winners[r["mine"]["slot"]], r
    await close_pools()


async def test_naive_get_then_set_double_books(
    backend: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    booked = Counter(slot for rs in run_processes(backend, True, tmp_path) for slot in rs)
    assert len(booked) == booking_worker.ATTEMPTS  # every slot was taken...
    doubled = {slot: n for slot, n in booked.items() if n > 1}
    assert doubled, "the naive version never double-booked: the race cannot bite"


# -- the retry rule ----------------------------------------------------------------------


def test_conditional_writes_are_not_retried_blindly() -> None:
    assert {"create_if_absent", "replace_if"} <= NOT_IDEMPOTENT


def guarded_table(url: str, calls: Calls) -> Any:
    settings = CacheSettings(redis_url=url, redis_socket_timeout=0.3)
    factory = RedisCacheFactory.configured(settings)
    return factory("t", around=lambda store: GuardedStore(store, calls)).create_table_cache()


def test_a_conditional_write_whose_reply_was_lost_is_not_retried() -> None:
    """Sent, then the reply timed out while the server was busy: the write ran (once the
    server is free). A retry would have found the row and answered ALREADY_EXISTS /
    CONDITION_NOT_MET for the caller's own write; instead the caller is told it may
    have been applied."""
    server = RedisServer(None, "--enable-debug-command", "yes").start()
    probe = redis.Redis(port=server.port, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))

    def busy() -> bool:
        try:
            probe.ping()
        except redis.TimeoutError:
            return True
        return False

    async def scenario() -> None:
        calls = Calls(deadline=30.0, backoff=0.01)
        table = guarded_table(server.url, calls)
        # both scripts loaded, so the writes below run (not NOSCRIPT) once the server is free
        assert (await table.create_if_absent("slots", "1", {"holder": None})).applied
        assert not await table.replace_if("slots", "0", {}, {})
        for attempt, write in enumerate(
            (
                lambda: table.create_if_absent("slots", "2", {"holder": "ana"}),
                lambda: table.replace_if("slots", "1", {"holder": "ana"}, {"holder": None}),
            )
        ):
            with socket.create_connection(("127.0.0.1", server.port)) as blocker:
                blocker.sendall(b"DEBUG SLEEP 1\r\n")
                wait_for(busy, timeout=10, what="the server busy")
                with pytest.raises(CacheUnavailableError, match="may have been applied") as caught:
                    await write()
                assert not caught.value.retry_safe, attempt
                blocker.recv(16)  # the sleep is over
            # reconnect (the timed-out connection was dropped) before the next write, so
            # that it is the write, not a connection setup, that meets the busy server
            await table.exists("slots", "1")
        assert calls.retries == 0
        assert await table.get("slots", "1") == {"holder": "ana"}  # it ran, once
        assert await table.get("slots", "2") == {"holder": "ana"}
        await close_pools()

    try:
        asyncio.run(scenario())
    finally:
        probe.close()
        server.close()


def test_a_conditional_write_refused_before_sending_is_retried() -> None:
    """Connection refused: nothing reached Redis, so the call waits for it and runs once,
    reporting its own write as CREATED."""
    server = RedisServer()

    async def scenario() -> None:
        calls = Calls(deadline=30.0, backoff=0.01)
        table = guarded_table(server.url, calls)
        write = asyncio.create_task(table.create_if_absent("slots", "1", {"holder": "ana"}))
        deadline = time.monotonic() + 10
        while calls.retries < 2:  # failing against the closed port
            assert not write.done() and time.monotonic() < deadline
            await asyncio.sleep(0.01)
        server.start()
        result = await write
        assert result.outcome is WriteOutcome.CREATED
        assert await table.get("slots", "1") == {"holder": "ana"}
        await close_pools()

    try:
        asyncio.run(scenario())
    finally:
        server.close()


# -- the Lua twin ------------------------------------------------------------------------

#: (stored text, expected text): texts as any writer might leave them, not only orjson
TEXT_PAIRS = [
    (b"0.10000000000000001", b"0.1"),
    (b"1e2", b"100.0"),
    (b"1E2", b"100.0"),
    (b"100", b"100.0"),
    (b"-0.0", b"0.0"),
    (b"9223372036854775807", b"9223372036854775806"),
    (b"9223372036854775807", b"9223372036854775807"),
    (b'{ "a" : 1 , "b" : [ 1 , 2 ] }', b'{"b":[1,2],"a":1}'),
    (b'{"a":1,"b":2}', b'{"a":1}'),
    (b'{"a":1}', b'{"a":1,"b":2}'),
    (b'{"a":null}', b'{"b":null}'),
    (b"[[],{}]", b"[[],{}]"),
    (b"[[],{}]", b"[{},[]]"),
    (b'["a\\"b",true]', b'["a\\"b",true]'),
    (b'["a\\"b",true]', b'["a\\"c",true]'),
    (b"[1,[2,[3]]]", b"[1,[2,[3.0]]]"),
    (b"true", b"1"),
    (b"null", b"false"),
    (b'""', b"null"),
]


@pytest.mark.parametrize(("stored", "expected"), TEXT_PAIRS)
def test_lua_comparison_is_the_twin_of_json_equal(
    redis_server: RedisServer, stored: bytes, expected: bytes
) -> None:
    client = redis_server.client()
    client.delete("doc")
    client.hset("doc", mapping={"\0": "1", "v": stored})
    script = client.register_script(lua("parley.cache", "replace_if", prelude="_ttl"))
    reply = script(keys=["doc"], args=["", 1, "v", expected, "v", b'"new"'])
    assert (reply == 1) is json_equal(stored, expected), (stored, expected)
