"""Outages are retried at the call that failed, never by re-running the handler.

Real ``parley worker`` processes, the tests' own redis-server and a fake Graph API over
HTTP. The README's Echo app increments a counter and then replies, so a handler that
re-ran would show in the reply's number (``#2`` where ``#1`` was due).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from parley.cache import CacheUnavailableError, UserCache
from parley.cache.redis import RedisCacheFactory, close_pools
from parley.cache.settings import CacheSettings
from parley.testing.deliveries import PHONE_ID
from parley.testing.graph import FakeGraphAPI
from parley.testing.redis_server import RedisServer
from parley.wire.keys import DEAD_LETTERS
from parley.workers.calls import Calls, GuardedStore
from tests.helpers import Pipeline, cli, wait_for

USERS = [f"5197000000{n}" for n in range(5)]


def counter(server: RedisServer, user: str) -> int:
    raw = server.client(0).hget(f"{PHONE_ID}:user:{user}", "message_count")
    return int(raw) if raw else 0


def dead_letters(server: RedisServer) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in server.client(3).xrange(DEAD_LETTERS)
    ]


def test_an_outage_shorter_than_the_deadline_repeats_nothing(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    deployment = Pipeline(redis_server, tmp_path, graph, PARLEY_TRANSIENT_DEADLINE="120")
    try:
        graph.outage(503)
        worker = deployment.start_worker("tests.apps:echo", "0-7", "outage")
        for n in range(4):
            for user in USERS:
                deployment.publish(user, f"m{n}")
        wait_for(
            lambda: worker.log().count("failed transiently") >= 3 * len(USERS),
            what="every user's first reply retried several times",
        )
        assert not graph.sent
        graph.recover()
        graph.wait_for(4 * len(USERS), timeout=60)
        for user in USERS:
            assert graph.texts_to(user) == ["#1: m0", "#2: m1", "#3: m2", "#4: m3"]
            assert counter(redis_server, user) == 4
        assert not dead_letters(redis_server)
        assert "busy" not in worker.log()
    finally:
        deployment.close()


def test_an_outage_past_the_deadline_dead_letters_and_lets_the_others_flow(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    cut_off, *others = USERS
    deployment = Pipeline(redis_server, tmp_path, graph, PARLEY_TRANSIENT_DEADLINE="1.5")
    try:
        graph.outage(503, recipients={cut_off})
        deployment.start_worker("tests.apps:echo", "0-7", "deadline")
        for n in range(2):
            deployment.publish(cut_off, f"m{n}")
        for n in range(3):
            for user in others:
                deployment.publish(user, f"m{n}")
        graph.wait_for(3 * len(others), timeout=60)  # the others' replies went out
        wait_for(lambda: len(dead_letters(redis_server)) == 2, what="both dead-lettered")
        for user in others:
            assert graph.texts_to(user) == ["#1: m0", "#2: m1", "#3: m2"]
        letters = dead_letters(redis_server)
        assert [letter["reason"] for letter in letters] == ["transient", "transient"]
        assert all("PARLEY_TRANSIENT_DEADLINE" in letter["error"] for letter in letters)
        assert not graph.texts_to(cut_off)

        graph.recover()
        cli(redis_server, "replay", "--dead", "--yes")
        wait_for(lambda: len(graph.texts_to(cut_off)) == 2, what="the replayed replies")
        wait_for(lambda: not dead_letters(redis_server), what="dead letters cleared")
        # each reply went out once; the counter ran in the failed run and again in the
        # replay: a replay runs the handler from its start (as the README says)
        assert graph.texts_to(cut_off) == ["#3: m0", "#4: m1"]
        assert counter(redis_server, cut_off) == 4
    finally:
        deployment.close()


def test_sigterm_ends_a_backoff_and_the_next_node_finishes_the_message(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    user = USERS[0]
    deployment = Pipeline(redis_server, tmp_path, graph, PARLEY_TRANSIENT_DEADLINE="600")
    try:
        graph.outage(503)
        first = deployment.start_worker("tests.apps:echo", "0-7", "first")
        deployment.publish(user, "one")
        deployment.publish(user, "two")  # parked behind "one" in the user's lane
        wait_for(lambda: "failed transiently" in first.log(), what="a backoff")
        first.process.send_signal(signal.SIGTERM)
        wait_for(lambda: first.process.poll() is not None, timeout=10, what="exit within 10 s")
        assert first.process.returncode == 0, first.log()[-2000:]
        assert not graph.sent and not dead_letters(redis_server)

        graph.recover()
        second = deployment.start_worker("tests.apps:echo", "0-7", "second")
        wait_for(lambda: len(graph.texts_to(user)) == 2, what="both replies")
        # the first node's run stopped between the counter and the reply: the next node
        # runs that handler again from its start (a stop mid-handler, like a crash)
        assert graph.texts_to(user) == ["#2: one", "#3: two"]
        assert "left" in first.log() and "in flight" in first.log()
        assert "finished 2 in-flight" in second.log()
    finally:
        deployment.close()


def cache_with_retries(url: str, deadline: float = 30.0) -> UserCache:
    settings = CacheSettings(redis_url=url, redis_socket_timeout=0.3)
    guarded = RedisCacheFactory.configured(settings)(
        "t", "u", around=lambda store: GuardedStore(store, Calls(deadline=deadline, backoff=0.01))
    )
    return guarded.create_user_cache()


def test_an_increment_whose_reply_was_lost_is_not_retried() -> None:
    """Sent, then the reply timed out while the server was busy: it may have run (here
    it does, once the server is free), so a retry would apply it twice."""
    server = RedisServer(None, "--enable-debug-command", "yes").start()
    probe = redis.Redis(port=server.port, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))

    def busy() -> bool:
        try:
            probe.ping()
        except redis.TimeoutError:
            return True
        return False

    async def scenario() -> None:
        cache = cache_with_retries(server.url)
        assert await cache.increment_field("profile", "n") == 1
        with socket.create_connection(("127.0.0.1", server.port)) as blocker:
            blocker.sendall(b"DEBUG SLEEP 2\r\n")
            wait_for(busy, timeout=10, what="the server busy")
            with pytest.raises(CacheUnavailableError, match="may have been applied") as caught:
                await cache.increment_field("profile", "n")
            assert not caught.value.retry_safe
            blocker.recv(16)  # the sleep is over
        assert await cache.get_field("profile", "n") == 2  # it ran, once
        await close_pools()

    try:
        asyncio.run(scenario())
    finally:
        probe.close()
        server.close()


def test_an_increment_refused_before_sending_is_retried(tmp_path: Path) -> None:
    """Connection refused: nothing reached Redis, so the call waits for it and runs once."""
    server = RedisServer()

    async def scenario() -> None:
        cache = cache_with_retries(server.url)
        increment = asyncio.create_task(cache.increment_field("profile", "n"))
        await asyncio.sleep(0.3)  # let it fail a few times against the closed port
        assert not increment.done()
        server.start()
        assert await increment == 1
        assert await cache.get_field("profile", "n") == 1
        await close_pools()

    try:
        asyncio.run(scenario())
    finally:
        server.close()
