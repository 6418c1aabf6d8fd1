"""The Celery app, its one task, and the runtime that runs handlers in a worker process.

Each worker process keeps ONE asyncio event loop for its whole life (connection
pools and the messenger's keep-alive client live on it), consumes its partition
queues with concurrency 1, and acks a message only after its handler finished.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
from celery import Celery
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cache import CacheUnavailableError
from cache.redis import close_pools
from workers.builder import ParleyApp, load_app
from workers.messenger import MessengerTransientError, WhatsAppMessenger
from workers.partition import partition_for, queue_name
from workers.pipeline import (
    ALREADY_DONE,
    NOT_LEASE_HOLDER,
    MemoryPipelineStore,
    PipelineStore,
)
from workers.settings import Settings, get_settings
from workers.webhook import Envelope, Webhook, mask_user_id

log = logging.getLogger("parley.worker")

TASK_NAME = "parley.handle"
#: Errors that say "try again": the partition waits (retrying in place keeps order).
TRANSIENT = (CacheUnavailableError, MessengerTransientError, RedisError)

celery_app = Celery("parley")


def configure_celery(settings: Settings, app: Celery = celery_app) -> None:
    """Parley's Celery settings (the benchmark's no-op floor uses them too)."""
    if app._pool is not None and app.conf.broker_url != settings.broker:
        # Celery caches its broker connection pool; a new broker needs another one
        # (kombu keeps the old pool registered, to be found again for the old URL)
        app._pool = None
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=settings.broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # the in-memory broker (parley demo) polls; its default 1 s is a second a message
            **({"polling_interval": 0.01} if settings.broker.startswith("memory://") else {}),
            **(
                {
                    "unacked_restore_interval": settings.redelivery_scan_interval,
                    "unacked_restore_throttle": 1,
                }
                if settings.redelivery_scan_interval
                else {}
            ),
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_create_missing_queues=True,
        task_default_queue="parley.default",
        worker_hijack_root_logger=False,
    )


configure_celery(get_settings())

#: How every Parley worker node runs (and the pipeline benchmark's no-op floor, so the
#: two compare like with like): one message at a time, in order, per node.
WORKER_OPTIONS = ("--pool", "solo", "--concurrency", "1", "--without-mingle", "--without-gossip")


def task_repr(envelope: Envelope) -> str:
    """What Flower and logs show of a task: ids, never message text."""
    return (
        f"tenant={envelope.tenant_id} user={mask_user_id(envelope.user_id)} "
        f"{envelope.kind}={envelope.event_id}" + (" replay" if envelope.replay_id else "")
    )


def publish(envelope: Envelope, settings: Settings | None = None) -> int:
    """Send an envelope to its partition's queue; returns the partition."""
    settings = settings or get_settings()
    partition = partition_for(envelope.tenant_id, envelope.user_id, settings.partitions)
    queue = queue_name(partition)
    celery_app.send_task(
        TASK_NAME,
        args=[envelope.to_json()],
        queue=queue,
        routing_key=queue,
        argsrepr=task_repr(envelope),
        kwargsrepr="{}",
        shadow=f"parley.{envelope.kind}",
    )
    return partition


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
        pipeline: PipelineStore | MemoryPipelineStore | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """``pipeline`` and ``http`` (the Graph API client) are for ``parley demo``."""
        self.app = app
        self.settings = app.settings
        self.node = node or f"parley-{os.getpid()}@{socket.gethostname()}"
        self.loop = asyncio.new_event_loop()
        self.pipeline = pipeline or PipelineStore(
            Redis.from_url(self.settings.pipeline), self.settings.done_ttl
        )
        self.messenger = WhatsAppMessenger(
            self.settings.whatsapp_token,
            self.settings.whatsapp_phone_id,
            api_base=self.settings.whatsapp_api_base,
            api_version=self.settings.whatsapp_api_version,
            client=http,
        )
        self._started = False
        #: --partitions auto: run an envelope only while holding its partition's lease
        self.fenced = False
        self.on_lease_lost: Callable[[int], object] | None = None
        self._broker: Redis | None = None

    def run(self, coro: Any) -> Any:
        if not self._started:
            self._started = True
            self.loop.run_until_complete(self.app.handler.on_startup())
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        async def _close() -> None:
            if self._started:
                await self.app.handler.on_shutdown()
            await self.messenger.aclose()
            if self._broker is not None:
                await self._broker.aclose()
            if isinstance(self.pipeline, PipelineStore):
                await self.pipeline.client.aclose()
            await close_pools()

        self.loop.run_until_complete(_close())
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
        from workers.messages import celery_message

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
        """Finish the in-flight envelope a crashed owner left in each partition, before the
        partition's queue is consumed. Returns how many were finished."""
        finished = 0
        for partition in partitions:
            record = await self.pipeline.in_flight(partition)
            if record is None:
                continue
            log.warning(
                "partition %d: finishing %s left in flight by %s",
                partition,
                task_repr(record.envelope),
                record.node,
            )
            await self.process(record.envelope.to_json())
            finished += 1
        return finished


_runtime: Runtime | None = None


def set_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    """The process's runtime; under plain ``celery worker`` built from ``PARLEY_APP``."""
    global _runtime
    if _runtime is None:
        app_path = os.environ.get("PARLEY_APP")
        if not app_path:
            raise RuntimeError("no Parley app loaded: start workers with `parley worker --app`")
        _runtime = Runtime(load_app(app_path))
    return _runtime


@celery_app.task(name=TASK_NAME, ignore_result=True)
def handle(envelope: dict[str, Any]) -> str:
    return get_runtime().run(get_runtime().process(envelope))
