"""Redis backend: one hash per document, every read-modify-write one Lua script.

Connections: one pool per Redis URL per event loop in this process, shared by
every cache instance, so building caches per webhook opens nothing. The pool
is a blocking one: a burst of concurrent operations waits for a free
connection (up to ``redis_pool_timeout``) instead of failing. Scripts live in
``cache/scripts/*.lua`` and run through redis-py's ``Script`` (EVALSHA, with a
reload on NOSCRIPT, so ``SCRIPT FLUSH`` or a server restart is harmless).
Each script touches exactly one key, so everything is Redis-Cluster safe.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parley.cache.codec import Fields
from parley.cache.errors import CacheArgumentError, CacheTypeError, CacheUnavailableError
from parley.cache.factory import CacheFactory
from parley.cache.lua import evalsha, lua
from parley.cache.results import WriteOutcome
from parley.cache.settings import CacheKind, CacheSettings

T = TypeVar("T")
MARKER = b"\x00"  # the field that keeps an empty document in existence (see _ttl.lua)


#: The read-modify-write scripts, each after the shared TTL rules (``_ttl.lua``)
SCRIPTS = (
    "set",
    "set_field",
    "increment_field",
    "append_to_list",
    "create_if_absent",
    "replace_if",
)
#: The operations that must not run twice: a retry after a lost reply would apply them
#: again, or (the conditional writes) would find their own write and report it as
#: someone else's: ALREADY_EXISTS / CONDITION_NOT_MET. Every other operation is a read
#: or writes the same thing twice.
NOT_IDEMPOTENT = frozenset({"increment_field", "append_to_list", "create_if_absent", "replace_if"})


class NotSentError(RedisConnectionError):
    """No connection could be had, so the command was never sent: retrying is safe."""


class _ConnectionPool(ConnectionPool):
    """Tells a failure to connect (nothing sent) from one after sending.

    A connection is handed out connected and checked before any command is written to
    it: one the server closed (a restart: its socket reads as ended) or one idle past
    ``IDLE_CHECK`` seconds that does not answer a PING (a firewall dropped it) is
    reconnected first. So a restart costs nothing, and an error after this point
    means the command was sent.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise NotSentError(str(exc)) from exc
        try:
            if _closed_by_server(connection):
                raise RedisConnectionError("closed by the server")
            await connection.check_health()  # a PING, when idle past IDLE_CHECK
        except (RedisConnectionError, RedisTimeoutError, OSError):
            try:
                await connection.disconnect()
                await connection.connect()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await self.release(connection)
                raise NotSentError(str(exc)) from exc
        return connection


def _closed_by_server(connection: Any) -> bool:
    """Whether the socket has anything to read while no command is pending: the
    server's end-of-stream (it restarted, or dropped us). Asks the kernel, so it holds
    even when the event loop has not looked at the socket yet."""
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


#: Seconds a pooled connection may sit idle before it is PINGed ahead of its next command
IDLE_CHECK = 30.0


def redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _ttl_arg(ttl: int | None) -> str | int:
    return "" if ttl is None else ttl


def _flat(fields: Fields) -> list[object]:
    flat: list[object] = []
    for field, text in fields.items():
        flat += (field, text)
    return flat


def _hash_fields(reply: list[bytes]) -> Fields:
    """An HGETALL reply returned by a script (a flat list), without the marker."""
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2) if reply[i] != MARKER}


class RedisStore:
    def __init__(self, url: str, settings: CacheSettings) -> None:
        self.url = url
        self._settings = settings
        self._connections: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Redis, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()
        self._scripts: dict[str, AsyncScript] = {}

    def _connection(self) -> tuple[Redis, asyncio.Semaphore]:
        """This event loop's client and the gate that caps its connections.

        asyncio connections cannot cross event loops, hence one per loop. The cap is a
        semaphore rather than redis-py's BlockingConnectionPool: taking a free slot
        costs nothing, where that pool's wait_for() costs tens of microseconds on every
        command; with at most ``redis_max_connections`` commands in flight, the pool
        never opens more connections than that.
        """
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is None:
            pool = _ConnectionPool.from_url(
                self.url,
                socket_timeout=self._settings.redis_socket_timeout,
                socket_connect_timeout=self._settings.redis_socket_timeout,
                # No retry here: a command whose reply was lost may have run. The error
                # says whether a retry is safe (``retry_safe``); the caller retries.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=IDLE_CHECK,
            )
            client = Redis(connection_pool=pool)
            gate = asyncio.Semaphore(self._settings.redis_max_connections)
            connection = self._connections[loop] = (client, gate)
            if not self._scripts:
                self._scripts = {
                    name: client.register_script(lua("parley.cache", name, prelude="_ttl"))
                    for name in SCRIPTS
                }
        return connection

    async def aclose(self) -> None:
        """Close this event loop's connections."""
        connection = self._connections.pop(asyncio.get_running_loop(), None)
        if connection is not None:
            await connection[0].aclose()

    async def _call(
        self,
        key: str,
        field: str | None,
        command: Callable[[Redis], Awaitable[T]],
        *,
        idempotent: bool = True,
    ) -> T:
        client, gate = self._connection()
        if gate.locked():  # every connection busy: wait, don't fail
            try:
                await asyncio.wait_for(gate.acquire(), self._settings.redis_pool_timeout)
            except TimeoutError:
                raise CacheUnavailableError(
                    f"Redis at {redact(self.url)}: no free connection within "
                    f"{self._settings.redis_pool_timeout}s for {key!r}",
                    retry_safe=True,
                ) from None
        else:
            await gate.acquire()  # free: returns at once
        try:
            return await command(client)
        except (NotSentError, BusyLoadingError) as exc:  # the command did not run
            raise CacheUnavailableError(
                f"Redis at {redact(self.url)} unavailable for {key!r}: {exc}", retry_safe=True
            ) from exc
        except ResponseError as exc:
            message = str(exc)
            if "PARLEY_NOT_NUMBER" in message:
                raise CacheTypeError(key, field or "", "a number") from None
            if "PARLEY_NOT_LIST" in message:
                raise CacheTypeError(key, field or "", "a list") from None
            if "PARLEY_OVERFLOW" in message or "would overflow" in message:
                raise CacheArgumentError(
                    f"incrementing field {field!r} of {key!r} would overflow"
                ) from None
            raise CacheUnavailableError(
                f"Redis at {redact(self.url)} refused an operation on {key!r}: {exc}"
            ) from exc
        except RedisError as exc:  # sent, and then the connection failed or timed out
            raise CacheUnavailableError(
                f"Redis at {redact(self.url)} unavailable for {key!r}: {exc}"
                + ("" if idempotent else " (it may have been applied: not retried)"),
                retry_safe=idempotent,
            ) from exc
        finally:
            gate.release()

    async def _script(self, name: str, key: str, field: str | None, *args: object) -> object:
        script = self._scripts.get(name)
        if script is None:
            self._connection()
            script = self._scripts[name]
        return await self._call(
            key,
            field,
            lambda client: evalsha(client, script, [key], args),
            idempotent=name not in NOT_IDEMPOTENT,
        )

    async def get(self, key: str) -> Fields | None:
        raw = cast(
            "dict[bytes, bytes]", await self._call(key, None, lambda client: client.hgetall(key))
        )
        if not raw:
            return None
        return {field.decode(): value for field, value in raw.items() if field != MARKER}

    async def set(self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None) -> None:
        await self._script("set", key, None, _ttl_arg(ttl), _ttl_arg(default_ttl), *_flat(fields))

    async def create_if_absent(
        self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        reply = await self._script(
            "create_if_absent", key, None, _ttl_arg(ttl), _ttl_arg(default_ttl), *_flat(fields)
        )
        if isinstance(reply, list):
            return WriteOutcome.ALREADY_EXISTS, _hash_fields(reply)
        return WriteOutcome.CREATED, None

    async def replace_if(
        self, key: str, fields: Fields, expected: Fields, ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        reply = await self._script(
            "replace_if", key, None, _ttl_arg(ttl), len(expected), *_flat(expected), *_flat(fields)
        )
        if isinstance(reply, list):
            return WriteOutcome.CONDITION_NOT_MET, _hash_fields(reply)
        return (WriteOutcome.REPLACED if reply == 1 else WriteOutcome.MISSING), None

    async def delete(self, key: str) -> bool:
        return bool(await self._call(key, None, lambda client: client.delete(key)))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(key, None, lambda client: client.exists(key)))

    async def get_field(self, key: str, field: str) -> bytes | None:
        return cast(
            "bytes | None", await self._call(key, field, lambda client: client.hget(key, field))
        )

    async def set_field(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None:
        if ttl is None and default_ttl is None:  # no expiry to touch: one HSET is atomic
            await self._call(
                key, field, lambda client: client.hset(key, mapping={MARKER: b"1", field: value})
            )
            return
        await self._script(
            "set_field", key, field, _ttl_arg(ttl), _ttl_arg(default_ttl), field, value
        )

    async def increment_field(
        self, key: str, field: str, increment: int | float, ttl: int | None, default_ttl: int | None
    ) -> int | float:
        is_float = isinstance(increment, float)
        text = await self._script(
            "increment_field",
            key,
            field,
            _ttl_arg(ttl),
            _ttl_arg(default_ttl),
            field,
            repr(increment),
            "1" if is_float else "0",
        )
        return cast("int | float", orjson.loads(text))  # type: ignore[arg-type]

    async def append_to_list(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None:
        await self._script(
            "append_to_list", key, field, _ttl_arg(ttl), _ttl_arg(default_ttl), field, value
        )

    async def get_ttl(self, key: str) -> int:
        return int(await self._call(key, None, lambda client: client.ttl(key)))

    async def set_ttl(self, key: str, ttl: int) -> bool:
        return bool(await self._call(key, None, lambda client: client.expire(key, ttl)))


class RedisCacheFactory(CacheFactory):
    """Shared caches for any number of workers: DB 0 users, 1 states, 2 tables by default."""

    backend = "redis"
    stores: ClassVar[dict[tuple[object, ...], RedisStore]] = {}

    def _store(self, kind: CacheKind) -> RedisStore:
        settings = self._settings()
        url = settings.url_for(kind)
        pool_key = (
            url,
            settings.redis_max_connections,
            settings.redis_pool_timeout,
            settings.redis_socket_timeout,
        )
        store = self.stores.get(pool_key)
        if store is None:
            store = self.stores[pool_key] = RedisStore(url, settings)
        return store


async def close_pools() -> None:
    """Close every Redis connection this event loop opened (worker shutdown, tests)."""
    for store in list(RedisCacheFactory.stores.values()):
        await store.aclose()
