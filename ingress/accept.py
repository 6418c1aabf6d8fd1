"""Turning envelopes into Celery messages and accepting them in one Redis round trip.

The ingress does not call ``apply_async`` per envelope (a publish costs ~1.5 ms):
it builds the very message Celery's Redis transport would (``parley.wire.messages``)
and a Lua script dedups, appends to the replay log and LPUSHes onto the partition
queue — where workers consume it as an ordinary task. That needs the broker and the
pipeline in the same Redis DB (the default); otherwise the ingress logs and dedups
with a script, then publishes through Celery (the ``publish`` it is given: on
RabbitMQ it returns once the broker confirmed), and undoes the marks of what it could
not publish.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from parley.cache.lua import evalsha, lua
from parley.wire.envelope import Envelope
from parley.wire.keys import REPLAY_LOG, queue_name, seen_key
from parley.wire.messages import celery_message
from parley.wire.partition import partition_for
from parley.workers.settings import Settings

#: Sends one envelope to its partition queue through Celery (``parley.workers.celery``),
#: returning once the broker has it; blocking (called off the event loop), and bounded
Publish = Callable[[Envelope], object]
#: Seconds one delivery's publishing may take at most before the ingress answers 503;
#: ``create_publisher`` bounds each message itself, this bounds the whole
PUBLISH_DEADLINE = 10.0


class PublishTimeout(TimeoutError):
    """Publishing a delivery's envelopes took longer than the deadline."""

    def __init__(self, deadline: float, published: int, total: int) -> None:
        super().__init__(
            f"publishing to the broker took over {deadline}s "
            f"({published} of {total} envelope(s) confirmed)"
        )


class Accept(Protocol):
    """What the ingress needs: per envelope its replay-log id, or None for a duplicate.
    Raises on backend failure, having marked nothing as seen."""

    async def accept(
        self, envelopes: list[Envelope], encoded: list[bytes] | None = None
    ) -> list[str | None]:
        """``encoded``: each envelope's ``encode()``, when the caller has it already."""
        ...


class Acceptor:
    """Accepts deliveries; concurrent ones share a round trip.

    While one script call is in flight, the deliveries that arrive queue up and go
    together in the next call (at most ``BATCH`` per call): under load the per-call
    client and server overhead is paid once per batch, and an idle ingress adds no
    wait at all. A failing call fails every delivery in it, none marked as seen.
    """

    BATCH = 64
    #: envelopes in one script call at most
    CHUNK = 256

    def __init__(
        self,
        client: Redis,
        settings: Settings,
        publish: Publish | None = None,
        publish_deadline: float = PUBLISH_DEADLINE,
    ) -> None:
        self.client = client
        self.settings = settings
        self.publish_deadline = publish_deadline
        self.one_round_trip = settings.broker == settings.pipeline
        if not self.one_round_trip and publish is None:
            raise ValueError("a broker other than the pipeline DB needs a Celery publisher")
        self.publish = publish
        self._script = client.register_script(lua("parley.ingress", "accept"))
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[list[str | None]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _script_args(
        self, envelopes: list[Envelope], encoded: list[bytes]
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = []
        for envelope, raw in zip(envelopes, encoded, strict=True):
            partition = partition_for(
                envelope.tenant_id, envelope.user_id, self.settings.partitions
            )
            queue = queue_name(partition)
            keys += [seen_key(envelope), queue]
            args += [
                raw,
                celery_message(envelope, queue, raw) if self.one_round_trip else b"",
                partition,
                f"{envelope.tenant_id}|{envelope.user_id}|{envelope.kind}",
            ]
        return keys, args

    def _retention(self) -> tuple[str, int]:
        """The oldest replay-log id to keep (by age) and the most entries (0: no cap)."""
        oldest_ms = int((time.time() - self.settings.replay_retention.total_seconds()) * 1000)
        return f"{max(oldest_ms, 0)}-0", self.settings.replay_max_entries or 0

    async def accept(
        self, envelopes: list[Envelope], encoded: list[bytes] | None = None
    ) -> list[str | None]:
        """Per envelope its replay-log id, or None for a duplicate. Raises on backend
        failure. A large delivery goes in several script calls of at most ``CHUNK``
        envelopes, so no one call holds Redis long; if a later one fails, the earlier
        ones stay accepted and Meta's retry finds them as duplicates."""
        encoded = encoded if encoded is not None else [e.encode() for e in envelopes]
        ids: list[str | None] = []
        for start in range(0, len(envelopes), self.CHUNK):
            end = start + self.CHUNK
            ids += await self._accept(envelopes[start:end], encoded[start:end])
        return ids

    async def _accept(self, envelopes: list[Envelope], encoded: list[bytes]) -> list[str | None]:
        keys, args = self._script_args(envelopes, encoded)
        if not self.one_round_trip:
            return await self._accept_then_publish(envelopes, keys, args)
        future: asyncio.Future[list[str | None]] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch: list[tuple[list[str], list[Any], asyncio.Future[list[str | None]]]] = []
            envelopes = 0  # at most BATCH deliveries and CHUNK envelopes (or one delivery)
            while self._pending and len(batch) < self.BATCH:
                count = len(self._pending[0][0]) // 2  # two keys an envelope
                if batch and envelopes + count > self.CHUNK:
                    break
                batch.append(self._pending.pop(0))
                envelopes += count
            keys: list[str] = [REPLAY_LOG]
            args: list[Any] = [self.settings.dedup_ttl, *self._retention()]
            for batch_keys, batch_args, _ in batch:
                keys += batch_keys
                args += batch_args
            try:
                ids = await evalsha(self.client, self._script, keys, args)
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            position = 0
            for batch_keys, _, future in batch:
                count = len(batch_keys) // 2
                if not future.done():
                    future.set_result(
                        [i.decode() if i else None for i in ids[position : position + count]]
                    )
                position += count

    async def _accept_then_publish(
        self, envelopes: list[Envelope], keys: list[str], args: list[Any]
    ) -> list[str | None]:
        """Dedup and log in one script call, then publish the new envelopes in order on
        a thread (a confirm is a broker round trip: the event loop serves other
        deliveries meanwhile). If publishing fails or overruns the deadline, the ones
        not confirmed lose their seen mark and replay-log entry — as if never accepted,
        so Meta's retry of the delivery publishes them — and the error propagates (503);
        the ones confirmed before stay accepted, so the retry finds them duplicates and
        does not enqueue them twice."""
        keys = [REPLAY_LOG, *keys]
        args = [self.settings.dedup_ttl, *self._retention(), *args]
        ids = [
            i.decode() if i else None for i in await evalsha(self.client, self._script, keys, args)
        ]
        fresh = [(e, log_id) for e, log_id in zip(envelopes, ids, strict=True) if log_id]
        if not fresh or self.publish is None:
            return ids
        publish = self.publish
        confirmed = 0
        abandoned = threading.Event()

        def publish_in_order() -> None:
            nonlocal confirmed
            for envelope, _ in fresh:
                if abandoned.is_set():  # the deadline passed: the rest are undone
                    return
                publish(envelope)
                confirmed += 1

        try:
            try:
                async with asyncio.timeout(self.publish_deadline):
                    await asyncio.to_thread(publish_in_order)
            except TimeoutError:
                abandoned.set()
                raise PublishTimeout(self.publish_deadline, confirmed, len(fresh)) from None
        except BaseException:
            abandoned.set()
            await self._undo(fresh[confirmed:])
            raise
        return ids

    async def _undo(self, entries: list[tuple[Envelope, str]]) -> None:
        """Forget envelopes accepted by the script but not published: their seen marks
        and replay-log entries (an entry stands for an envelope on a queue)."""
        if not entries:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            for envelope, log_id in entries:
                pipe.delete(seen_key(envelope))
                pipe.xdel(REPLAY_LOG, log_id)
            await pipe.execute()


class MemoryAcceptor:
    """Dedup and replay log in this process's memory, publishing through Celery: the
    ingress of ``parley demo`` when it runs with no Redis (and an in-memory broker)."""

    def __init__(self, publish: Publish) -> None:
        self.publish = publish
        self.seen: set[str] = set()
        self.log: list[Envelope] = []

    async def accept(
        self, envelopes: list[Envelope], encoded: list[bytes] | None = None
    ) -> list[str | None]:
        ids: list[str | None] = []
        for envelope in envelopes:
            key = seen_key(envelope)
            if key in self.seen:
                ids.append(None)
                continue
            self.publish(envelope)
            self.seen.add(key)
            self.log.append(envelope)
            ids.append(f"{len(self.log)}-0")
        return ids
