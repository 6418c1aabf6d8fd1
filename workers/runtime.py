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
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import Reject
from redis.asyncio import Redis
from redis.exceptions import RedisError

from parley.cache import CacheUnavailableError
from parley.cache.redis import close_pools
from parley.wire.envelope import Envelope, mask_user_id
from parley.wire.keys import queue_name
from parley.wire.messages import task_repr
from parley.wire.partition import partition_for
from parley.workers import private_api
from parley.workers.builder import ParleyApp
from parley.workers.calls import (
    Abandoned,
    Calls,
    GuardedStore,
    LeaseLost,
    TransientFailure,
    WorkerStopping,
)
from parley.workers.connections import is_redis
from parley.workers.messenger import MessengerTransientError, WhatsAppMessenger
from parley.workers.pipeline import (
    ALREADY_DONE,
    NOT_LEASE_HOLDER,
    InFlight,
    PipelineStore,
    RedisPipelineStore,
)
from parley.workers.timers import RedisTimers, TimerPump, Timers, TimerStore, TimerUnavailable
from parley.workers.watchdog import LoopWatchdog
from parley.workers.webhook import Webhook

log = logging.getLogger("parley.worker")


class NotOwner(Exception):
    """An envelope of a partition whose lease another node holds, taken from a broker
    that is not Redis (RabbitMQ): it cannot be pushed back in front by hand, so the
    task rejects its message with requeue — the broker puts it back where it was."""


#: Failures of the outside world rather than of the handler's code
TRANSIENT = (
    TransientFailure,
    CacheUnavailableError,
    MessengerTransientError,
    TimerUnavailable,
    RedisError,
)


async def dispatch(
    app: ParleyApp, envelope: Envelope, messenger: Any, calls: Calls, timers: Timers
) -> None:
    """Run the app's handler for one envelope, on a copy of the handler that carries this
    webhook's context: caches scoped to its tenant and user, the messenger, its timers,
    a logger. Every cache operation, Graph API request and timer goes through ``calls``."""
    webhook = Webhook.from_envelope(envelope)
    handler = copy.copy(app.handler)
    factory = app.cache_factory(
        tenant_id=envelope.tenant_id,
        user_id=envelope.user_id or None,
        around=lambda store: GuardedStore(store, calls),
    )
    if envelope.user_id:
        handler.state_cache = factory.create_state_cache()
        handler.user_cache = factory.create_user_cache()
    handler.table_cache = factory.create_table_cache()
    handler.messenger = messenger.for_tenant(envelope.tenant_id, calls)
    handler.timers = timers
    handler.logger = logging.LoggerAdapter(
        logging.getLogger(f"parley.app.{type(handler).__name__}"),
        {"tenant_id": envelope.tenant_id, "user": mask_user_id(envelope.user_id)},
    )
    if envelope.kind == "message":
        await handler.handle_message(webhook)
    elif envelope.kind == "status":
        await handler.handle_status(webhook)
    elif envelope.kind == "timer":
        await handler.handle_timer(webhook)
    else:
        await handler.handle_error(webhook)


def failure_reason(exc: BaseException) -> str:
    """A dead letter's reason: ``transient`` (an outage outlasted the deadline, or a call
    failed where a retry could have applied it twice: replay once the outage is over),
    ``timeout`` (PARLEY_HANDLER_TIMEOUT) or ``error`` (a bug or bad data)."""
    if isinstance(exc, TRANSIENT):
        return "transient"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


class Runtime:
    """Everything one worker process keeps across tasks."""

    def __init__(
        self,
        app: ParleyApp,
        node: str | None = None,
        *,
        pipeline: PipelineStore | None = None,
        timers: TimerStore | None = None,
    ) -> None:
        """``pipeline`` and ``timers`` replace Redis for ``parley demo`` without a server."""
        self.app = app
        self.settings = app.settings
        self.node = node or f"parley-{os.getpid()}@{socket.gethostname()}"
        self.loop = asyncio.new_event_loop()
        self.pipeline: PipelineStore = pipeline or RedisPipelineStore(
            Redis.from_url(self.settings.pipeline), self.settings.done_ttl
        )
        self.timers: TimerStore = timers or RedisTimers.connect(self.settings)
        #: fires due timers; started by the worker (``start_timers``), which also tells
        #: it how to publish when the broker is not the pipeline DB
        self.pump = TimerPump(self.timers)
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
        #: --partitions auto: whether the node surely still holds a partition's lease,
        #: asked before every cache call and send (``Coordinator.holds``)
        self.holds: Callable[[int], bool] | None = None
        #: a message of a partition whose lease another node holds was refused
        self.on_lease_lost: Callable[[int], object] | None = None
        #: an envelope was abandoned under a lost lease: give the partition up
        self.on_abandoned: Callable[[int], object] | None = None
        self._broker: redis.Redis | None = None  # to put a message back (Redis broker)
        #: set by SIGTERM (``stop_soon``): backoffs end, their envelopes stay in flight
        self.stopping = asyncio.Event()
        #: users with an envelope left in flight here: their later ones wait behind it
        self.abandoned_lanes: set[tuple[str, str]] = set()

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

    def start_timers(self, publish: Callable[[Envelope], object]) -> None:
        """Fire this deployment's due timers from this process too (every node does;
        the claim makes each fire once). ``publish`` sends one through Celery when the
        broker is not the pipeline DB."""
        self.pump.publish = publish
        self.pump.start()

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on the process's loop and wait for its result (from any thread
        but the loop's own)."""
        if self._thread is None:  # once: no lock taken per message after that
            self.start()
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def handle(self, raw: dict[str, Any]) -> str:
        """The Celery task, on a pool thread: one envelope, run to its end on the loop."""
        try:
            return self.run(self.process(raw))  # type: ignore[no-any-return]
        except WorkerStopping as exc:  # stopped before it began: nothing records it
            raise Reject(str(exc), requeue=True) from exc  # back in front, unacked
        except NotOwner as exc:  # RabbitMQ requeues it at its place, for the lease holder
            raise Reject(str(exc), requeue=True) from exc

    def close(self) -> None:
        started = self._thread is not None

        async def _close() -> None:
            if started:
                await self.app.handler.on_shutdown()
            await self.messenger.aclose()
            self.timers.close()
            if self._broker is not None:
                self._broker.close()
            await self.pipeline.aclose()
            await close_pools()

        self.pump.stop()
        if self._thread is None:
            self.loop.run_until_complete(_close())
        else:
            self.watchdog.stop()
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()

    # -- one envelope --------------------------------------------------------------------

    def stop_soon(self) -> None:
        """SIGTERM (any thread): an envelope waiting out a failure stops waiting and is
        left in flight for the partition's next owner; the rest of its lane with it."""
        self.loop.call_soon_threadsafe(self.stopping.set)

    def _calls(self, envelope: Envelope, partition: int | None = None) -> Calls:
        """The policy of one envelope's handler calls; with ``partition`` (and
        ``--partitions auto``), each call is fenced by the node's hold on its lease."""
        holds = self.holds

        def fence() -> None:
            if holds is not None and partition is not None and not holds(partition):
                raise LeaseLost(
                    f"partition {partition}: this node's lease ran out (it was stopped or "
                    "starved past PARLEY_LEASE_TTL); another node owns the partition"
                )

        return Calls(
            deadline=self.settings.transient_deadline,
            backoff=self.settings.retry_backoff,
            backoff_max=self.settings.retry_backoff_max,
            stopping=self.stopping,
            fence=fence if holds is not None and partition is not None else None,
            subject=task_repr(envelope),
        )

    async def _bookkeeping(self, what: str, envelope: Envelope, op: Any) -> Any:
        """The pipeline's own writes: retried on any Redis error (each is safe to
        repeat) until the pipeline DB answers, or until the worker stops."""
        calls = Calls(
            deadline=math.inf,
            backoff=self.settings.retry_backoff,
            backoff_max=self.settings.retry_backoff_max,
            stopping=self.stopping,
            retryable=lambda exc: isinstance(exc, RedisError),
            subject=task_repr(envelope),
        )
        return await calls.call(f"{what} in the pipeline DB", op)

    async def process(self, raw: dict[str, Any]) -> str:
        """Handle one envelope: ``done``, ``duplicate``, ``dead``, ``not owner``,
        ``cancelled`` (a timer cancelled or moved after it fired) or ``abandoned`` (left
        in flight for the partition's next owner)."""
        envelope = Envelope.from_json(raw)
        partition = partition_for(envelope.tenant_id, envelope.user_id, self.settings.partitions)
        started = await self._bookkeeping(
            "begin",
            envelope,
            lambda: self.pipeline.begin(envelope, partition, self.node, self.fenced),
        )
        if started == ALREADY_DONE:
            log.info("skipped %s: already done", task_repr(envelope))
            return "duplicate"
        if started == NOT_LEASE_HOLDER:
            await self._bookkeeping(
                "put back", envelope, lambda: self._put_back(envelope, partition)
            )
            return "not owner"
        lane = (envelope.tenant_id, envelope.user_id)
        if lane in self.abandoned_lanes:  # an earlier one of this user is left in flight
            log.warning("left %s in flight behind its user's earlier one", task_repr(envelope))
            return "abandoned"
        try:
            return await self._run_to_end(envelope, partition)
        except Abandoned as exc:
            self.abandoned_lanes.add(lane)
            log.warning("left %s in flight for the next owner: %s", task_repr(envelope), exc)
            if isinstance(exc, LeaseLost) and self.on_abandoned is not None:
                self.on_abandoned(partition)
            return "abandoned"

    async def _put_back(self, envelope: Envelope, partition: int) -> None:
        """The lease moved while this node still consumed the partition: put the
        message back in front for the owner — unless the owner already did when it
        took the partition — and make this node stop consuming. On a broker that is
        not Redis, raise ``NotOwner``: ``handle`` rejects the message with requeue."""
        if not is_redis(self.settings.broker):
            if self.on_lease_lost is not None:
                self.on_lease_lost(partition)
            log.warning("partition %d: lease not held; requeued %s", partition, task_repr(envelope))
            raise NotOwner(
                f"partition {partition}: another node holds the lease; {task_repr(envelope)} "
                "goes back to the broker"
            )
        queue = queue_name(partition)
        if self._broker is None:
            self._broker = redis.Redis.from_url(self.settings.broker)
        broker = self._broker
        if await asyncio.to_thread(private_api.restore_one, broker, queue, envelope):
            log.warning("partition %d: lease not held; put %s back", partition, task_repr(envelope))
        else:  # the owner put it back when it took the partition: a copy would overtake
            log.warning(
                "partition %d: lease not held; left %s to its owner", partition, task_repr(envelope)
            )
        if self.on_lease_lost is not None:
            self.on_lease_lost(partition)

    async def _run_to_end(self, envelope: Envelope, partition: int) -> str:
        """Run the handler once. Its calls retry themselves (``Calls``); whatever it
        raises dead-letters the envelope, unless it was abandoned."""
        t0 = time.perf_counter()
        calls = self._calls(envelope, partition)
        timer = envelope.kind == "timer" and envelope.replay_id is None
        if timer and not await self._bookkeeping(
            "timer check", envelope, lambda: self.timers.is_current(envelope)
        ):
            await self._bookkeeping(
                "finish", envelope, lambda: self.pipeline.finish(envelope, partition, 0.0)
            )
            log.info("skipped %s: cancelled or scheduled again", task_repr(envelope))
            return "cancelled"
        timers = Timers(
            self.timers, envelope.tenant_id, envelope.user_id, calls.call, self.pump.scheduled
        )
        try:
            async with asyncio.timeout(self.settings.handler_timeout):  # no extra Task
                await dispatch(self.app, envelope, self.messenger, calls, timers)
        except Exception as exc:  # a bug, bad data, a timeout or an outage past its deadline
            if calls.fence is not None:
                calls.fence()  # froze past the lease (the "timeout" was the freeze): abandon
            error, reason = exc, failure_reason(exc)
            failed_at = time.time()
            entry = await self._bookkeeping(
                "dead-letter",
                envelope,
                lambda: self.pipeline.dead_letter(
                    envelope,
                    partition,
                    error,
                    type(self.app.handler).__qualname__,
                    1,
                    failed_at,
                    reason,
                ),
            )
            if timer:
                await self._bookkeeping("timer", envelope, lambda: self.timers.settle(envelope))
            log.error(
                "dead-lettered %s as %s (%s): %s: %s",
                task_repr(envelope),
                entry,
                reason,
                type(exc).__name__,
                exc,
            )
            return "dead"
        seconds = time.perf_counter() - t0
        await self._bookkeeping(
            "finish", envelope, lambda: self.pipeline.finish(envelope, partition, seconds)
        )
        if timer:
            await self._bookkeeping("timer", envelope, lambda: self.timers.settle(envelope))
        log.info("handled %s in %.1f ms", task_repr(envelope), seconds * 1000)
        return "done"

    async def recover(self, partitions: list[int]) -> int:
        """Finish the envelopes a crashed owner left in flight in these partitions, before
        their queues are consumed: each lane's in the order they started, lanes at once.
        Returns how many were finished."""
        self.abandoned_lanes = {
            lane
            for lane in self.abandoned_lanes
            if partition_for(*lane, self.settings.partitions) not in partitions
        }
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
