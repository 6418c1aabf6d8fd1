"""The runtime that runs handlers in a worker process.

Each worker process keeps ONE asyncio event loop for its whole life, on a thread of
its own (connection pools and the messenger's keep-alive client live on it). Celery's
pool threads (:mod:`parley.workers.lanes`) each hand one envelope to that loop and
wait for its outcome, so up to ``--concurrency`` handlers await the network at once;
a message is acked only after its handler finished or was dead-lettered.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from parley.cache import CacheUnavailableError
from parley.cache.redis import close_pools
from parley.wire.envelope import Envelope, mask_user_id
from parley.wire.keys import queue_name
from parley.wire.messages import celery_message, task_repr
from parley.wire.partition import partition_for
from parley.workers.builder import ParleyApp
from parley.workers.messenger import MessengerTransientError, WhatsAppMessenger
from parley.workers.pipeline import (
    ALREADY_DONE,
    NOT_LEASE_HOLDER,
    InFlight,
    PipelineStore,
    RedisPipelineStore,
)
from parley.workers.watchdog import LoopWatchdog
from parley.workers.webhook import Webhook

log = logging.getLogger("parley.worker")

#: Errors that say "try again": the partition waits (retrying in place keeps order).
TRANSIENT = (CacheUnavailableError, MessengerTransientError, RedisError)


async def dispatch(app: ParleyApp, envelope: Envelope, messenger: Any) -> None:
    """Run the app's handler for one envelope, on a copy of the handler that carries this
    webhook's context: caches scoped to its tenant and user, the messenger, a logger."""
    webhook = Webhook.from_envelope(envelope)
    handler = copy.copy(app.handler)
    factory = app.cache_factory(tenant_id=envelope.tenant_id, user_id=envelope.user_id or None)
    if envelope.user_id:
        handler.state_cache = factory.create_state_cache()
        handler.user_cache = factory.create_user_cache()
    handler.table_cache = factory.create_table_cache()
    handler.messenger = messenger
    handler.logger = logging.LoggerAdapter(
        logging.getLogger(f"parley.app.{type(handler).__name__}"),
        {"tenant_id": envelope.tenant_id, "user": mask_user_id(envelope.user_id)},
    )
    if envelope.kind == "message":
        await handler.handle_message(webhook)
    elif envelope.kind == "status":
        await handler.handle_status(webhook)
    else:
        await handler.handle_error(webhook)


class Runtime:
    """Everything one worker process keeps across tasks."""

    def __init__(
        self,
        app: ParleyApp,
        node: str | None = None,
        *,
        pipeline: PipelineStore | None = None,
    ) -> None:
        """``pipeline`` replaces Redis for ``parley demo`` without a server."""
        self.app = app
        self.settings = app.settings
        self.node = node or f"parley-{os.getpid()}@{socket.gethostname()}"
        self.loop = asyncio.new_event_loop()
        self.pipeline: PipelineStore = pipeline or RedisPipelineStore(
            Redis.from_url(self.settings.pipeline), self.settings.done_ttl
        )
        self.messenger = WhatsAppMessenger(
            self.settings.whatsapp_token.get_secret_value(),
            self.settings.whatsapp_phone_id,
            api_base=self.settings.whatsapp_api_base,
            api_version=self.settings.whatsapp_api_version,
        )
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.watchdog = LoopWatchdog(self.loop, type(app.handler))
        #: --partitions auto: run an envelope only while holding its partition's lease
        self.fenced = False
        self.on_lease_lost: Callable[[int], object] | None = None
        self._broker: Redis | None = None

    def start(self) -> None:
        """Start the loop's thread and the app's ``on_startup`` (once; any thread)."""
        with self._starting:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self.loop.run_forever, name="parley-loop", daemon=True
            )
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self.app.handler.on_startup(), self.loop).result()
            self.watchdog.start()

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on the process's loop and wait for its result (from any thread
        but the loop's own)."""
        if self._thread is None:  # once: no lock taken per message after that
            self.start()
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def handle(self, raw: dict[str, Any]) -> str:
        """The Celery task, on a pool thread: one envelope, run to its end on the loop."""
        return self.run(self.process(raw))  # type: ignore[no-any-return]

    def close(self) -> None:
        started = self._thread is not None

        async def _close() -> None:
            if started:
                await self.app.handler.on_shutdown()
            await self.messenger.aclose()
            if self._broker is not None:
                await self._broker.aclose()
            await self.pipeline.aclose()
            await close_pools()

        if self._thread is None:
            self.loop.run_until_complete(_close())
        else:
            self.watchdog.stop()
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()

    # -- one envelope --------------------------------------------------------------------

    async def _retry_in_place(self, what: str, envelope: Envelope, make: Any) -> Any:
        """Run ``make()`` until it stops failing transiently, with capped backoff."""
        attempt = 0
        while True:
            try:
                return await make()
            except TRANSIENT as exc:
                attempt += 1
                delay = min(
                    self.settings.retry_backoff_max, self.settings.retry_backoff * 2**attempt
                )
                delay *= random.uniform(0.5, 1.0)
                log.warning(
                    "%s of %s failed transiently (%s: %s); retry %d in %.2fs",
                    what,
                    task_repr(envelope),
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    async def process(self, raw: dict[str, Any]) -> str:
        """Handle one envelope: ``done``, ``duplicate`` or ``dead``."""
        envelope = Envelope.from_json(raw)
        partition = partition_for(envelope.tenant_id, envelope.user_id, self.settings.partitions)
        started = await self._retry_in_place(
            "begin",
            envelope,
            lambda: self.pipeline.begin(envelope, partition, self.node, self.fenced),
        )
        if started == ALREADY_DONE:
            log.info("skipped %s: already done", task_repr(envelope))
            return "duplicate"
        if started == NOT_LEASE_HOLDER:
            await self._retry_in_place(
                "put back", envelope, lambda: self._put_back(envelope, partition)
            )
            return "not owner"
        return await self._run_to_end(envelope, partition)

    async def _put_back(self, envelope: Envelope, partition: int) -> None:
        """The lease moved while this node still consumed the partition: put the
        message back in front for the owner and make this node stop consuming."""
        queue = queue_name(partition)
        if self._broker is None:
            self._broker = Redis.from_url(self.settings.broker)
        await self._broker.rpush(queue, celery_message(envelope, queue))  # BRPOP's end
        log.warning("partition %d: lease not held; put %s back", partition, task_repr(envelope))
        if self.on_lease_lost is not None:
            self.on_lease_lost(partition)

    async def _run_to_end(self, envelope: Envelope, partition: int) -> str:
        attempts = 0
        first_failure: float | None = None
        t0 = time.perf_counter()

        async def attempt() -> None:
            nonlocal attempts, first_failure
            attempts += 1
            try:
                async with asyncio.timeout(self.settings.handler_timeout):  # no extra Task
                    await self.dispatch(envelope)
            except Exception:
                first_failure = first_failure or time.time()
                raise

        try:
            await self._retry_in_place("handler", envelope, attempt)
        except Exception as exc:  # a handler bug, bad data or a timeout: dead-letter it
            error = exc
            entry = await self._retry_in_place(
                "dead-letter",
                envelope,
                lambda: self.pipeline.dead_letter(
                    envelope,
                    partition,
                    error,
                    type(self.app.handler).__qualname__,
                    attempts,
                    first_failure or time.time(),
                ),
            )
            log.error(
                "dead-lettered %s as %s: %s: %s",
                task_repr(envelope),
                entry,
                type(exc).__name__,
                exc,
            )
            return "dead"
        seconds = time.perf_counter() - t0
        await self._retry_in_place(
            "finish", envelope, lambda: self.pipeline.finish(envelope, partition, seconds)
        )
        log.info("handled %s in %.1f ms", task_repr(envelope), seconds * 1000)
        return "done"

    async def dispatch(self, envelope: Envelope) -> None:
        await dispatch(self.app, envelope, self.messenger.for_tenant(envelope.tenant_id))

    async def recover(self, partitions: list[int]) -> int:
        """Finish the envelopes a crashed owner left in flight in these partitions, before
        their queues are consumed: each lane's in the order they started, lanes at once.
        Returns how many were finished."""
        lanes: dict[tuple[str, str], list[InFlight]] = {}
        for partition in partitions:
            for record in await self.pipeline.in_flight(partition):
                lane = (record.envelope.tenant_id, record.envelope.user_id)
                lanes.setdefault(lane, []).append(record)
                log.warning(
                    "partition %d: finishing %s left in flight by %s",
                    partition,
                    task_repr(record.envelope),
                    record.node,
                )

        async def finish(records: list[InFlight]) -> None:
            for record in sorted(records, key=lambda r: r.started_at):
                await self.process(record.envelope.to_json())

        await asyncio.gather(*(finish(records) for records in lanes.values()))
        return sum(len(records) for records in lanes.values())
