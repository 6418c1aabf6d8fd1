"""Scheduled actions: a handler's ``await self.schedule("remind", after=600, data=...)``.

Why not Redis keyspace notifications (an expiring key per timer, as the framework the
caching spec documents does): every listening process receives the expiry, so N
workers fire N reminders; an expiry while no listener is connected is lost; and a JSON
or memory deployment has none. Here due times live in the pipeline DB, in one sorted
set, and every node's pump calls ONE script (``scripts/timer_claim.lua``) that takes
the due timers off the set, appends each to the replay log and pushes its Celery
message onto its user's partition queue. So:

- one firing however many nodes run (the claim is atomic);
- a timer that fell due while every node was down fires when one comes back (late,
  with its due time in ``webhook.timer.due_at``);
- the firing is an envelope like a webhook: it runs in its user's lane, in order with
  the user's messages, is acked late, recovered after a crash, kept in the replay log
  and dead-lettered on failure (Flower shows it as ``parley.timer``);
- a cancel, or a reschedule, deletes or replaces the timer's hash, whose nonce a firing
  must still match when its handler is about to run: a cancelled timer never runs,
  even when it was already on the queue.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import orjson
import redis
from redis.asyncio import Redis as AsyncRedis

from parley.cache.lua import evalsha, lua
from parley.wire.envelope import Envelope
from parley.wire.keys import REPLAY_LOG, TIMERS, queue_name, timer_key
from parley.wire.messages import celery_message
from parley.wire.partition import partition_for
from parley.workers.settings import Settings

log = logging.getLogger("parley.timers")

#: Most timers one claim fires (one script call stays short)
CLAIM_BATCH = 200
#: Longest a pump sleeps between claims: the lag of a timer scheduled on another node
#: (a node wakes at once for the timers it scheduled itself)
POLL_INTERVAL = 0.2


class TimerError(ValueError):
    """A schedule() or cancel() with arguments that cannot make a timer."""


class TimerUnavailable(Exception):
    """The pipeline DB did not answer a schedule() or cancel(). Both are safe to run
    again (the same timer is written, or deleted, once more), so the call is retried."""

    retry_safe = True


def due_time(after: float | timedelta | None, at: datetime | float | None) -> float:
    """The due time (epoch seconds) of ``after`` (seconds or a timedelta from now) or
    ``at`` (an aware datetime, or epoch seconds): exactly one of them."""
    if (after is None) == (at is None):
        raise TimerError("schedule() takes exactly one of after= and at=")
    if after is not None:
        seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
        if not math.isfinite(seconds) or seconds < 0:
            raise TimerError(f"after= must be a duration of 0 s or more, got {after!r}")
        return time.time() + seconds
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise TimerError("at= must be an aware datetime (e.g. datetime.now(UTC) + ...)")
        return at.timestamp()
    if isinstance(at, int | float) and math.isfinite(at):
        return float(at)
    raise TimerError(f"at= must be a datetime or epoch seconds, got {at!r}")


def timer_envelope(
    tenant_id: str, user_id: str, action: str, key: str, data: dict[str, Any], due: float
) -> Envelope:
    """What fires: an envelope of kind ``timer`` for the user's lane. Its event id is
    the nonce, new for each schedule, so each firing has a done-marker of its own."""
    if not isinstance(action, str) or not action:
        raise TimerError(f"the timer's action must be a non-empty str, got {action!r}")
    if not isinstance(key, str):
        raise TimerError(f"the timer's key must be a str, got {key!r}")
    if not isinstance(data, dict):
        raise TimerError(f"the timer {action!r}: data must be a dict, got {type(data).__name__}")
    try:
        orjson.dumps(data)
    except TypeError as exc:
        raise TimerError(f"the timer {action!r}: data must be JSON: {exc}") from None
    nonce = uuid.uuid4().hex
    payload = {
        "action": action,
        "key": key,
        "data": data,
        "due_at": due,
        "scheduled_at": time.time(),
        "nonce": nonce,
    }
    return Envelope(
        tenant_id=tenant_id,
        user_id=user_id,
        kind="timer",
        event_id=f"timer.{nonce}",
        received_at=due,
        payload=payload,
    )


def name_of(envelope: Envelope) -> str:
    payload = envelope.payload
    return timer_key(envelope.tenant_id, envelope.user_id, payload["action"], payload["key"])


class TimerStore(Protocol):
    """Where timers wait: the pipeline DB in a deployment, memory in ``parley demo``."""

    async def schedule(self, envelope: Envelope) -> None: ...

    async def cancel(self, tenant_id: str, user_id: str, action: str, key: str) -> bool: ...

    async def is_current(self, envelope: Envelope) -> bool:
        """Whether this firing is still wanted (not cancelled, not rescheduled)."""
        ...

    async def settle(self, envelope: Envelope) -> None:
        """This firing's handler ended: forget the timer unless it was rescheduled."""
        ...

    def claim(self, limit: int) -> tuple[int, list[Envelope], float | None]:
        """Fire what is due (blocking; the pump's thread): how many fired, those the
        caller must publish itself, and the next due time (epoch seconds) if any."""
        ...

    def close(self) -> None: ...


class RedisTimers:
    def __init__(
        self, client: AsyncRedis, claimer: redis.Redis, settings: Settings, *, enqueue: bool
    ) -> None:
        """``enqueue``: the broker is this same Redis DB, so the claim script pushes the
        Celery message itself; else the pump publishes what the claim returns."""
        self.client = client
        self.claimer = claimer
        self.settings = settings
        self.enqueue = enqueue
        self.keep_ms = settings.done_ttl * 1000
        self._schedule = client.register_script(lua("parley.workers", "timer_schedule"))
        self._cancel = client.register_script(lua("parley.workers", "timer_cancel"))
        self._settle = client.register_script(lua("parley.workers", "timer_settle"))
        self._claim = claimer.register_script(lua("parley.workers", "timer_claim"))

    @classmethod
    def connect(cls, settings: Settings) -> RedisTimers:
        """On the pipeline DB of ``settings``; the claim script pushes onto the queues
        itself when the broker is that same DB."""
        return cls(
            AsyncRedis.from_url(settings.pipeline),
            redis.Redis.from_url(settings.pipeline),
            settings,
            enqueue=settings.broker == settings.pipeline,
        )

    async def schedule(self, envelope: Envelope) -> None:
        try:
            await self._write(envelope)
        except redis.RedisError as exc:
            raise TimerUnavailable(f"scheduling {name_of(envelope)}: {exc}") from exc

    async def _write(self, envelope: Envelope) -> None:
        partition = partition_for(envelope.tenant_id, envelope.user_id, self.settings.partitions)
        queue = queue_name(partition)
        encoded = envelope.encode()
        await evalsha(
            self.client,
            self._schedule,
            [TIMERS, name_of(envelope)],
            [
                int(envelope.received_at * 1000),
                envelope.payload["nonce"],
                encoded,
                celery_message(envelope, queue, encoded) if self.enqueue else b"",
                queue,
                partition,
                envelope.tenant_id,
                envelope.user_id,
                self.keep_ms,
            ],
        )

    async def cancel(self, tenant_id: str, user_id: str, action: str, key: str) -> bool:
        name = timer_key(tenant_id, user_id, action, key)
        try:
            return bool(await evalsha(self.client, self._cancel, [TIMERS, name], []))
        except redis.RedisError as exc:
            raise TimerUnavailable(f"cancelling {name}: {exc}") from exc

    async def is_current(self, envelope: Envelope) -> bool:
        nonce = await self.client.hget(name_of(envelope), "nonce")
        if isinstance(nonce, bytes):
            nonce = nonce.decode()
        return bool(nonce == envelope.payload["nonce"])

    async def settle(self, envelope: Envelope) -> None:
        await evalsha(self.client, self._settle, [name_of(envelope)], [envelope.payload["nonce"]])

    def claim(self, limit: int) -> tuple[int, list[Envelope], float | None]:
        oldest_ms = int((time.time() - self.settings.replay_retention.total_seconds()) * 1000)
        fired, publish, next_due = cast(
            "list[Any]",
            self._claim(
                keys=[TIMERS, REPLAY_LOG],
                args=[limit, f"{max(oldest_ms, 0)}-0", self.settings.replay_max_entries or 0],
            ),
        )
        envelopes = [Envelope.from_json(orjson.loads(raw)) for raw in publish]
        due = float(next_due) / 1000 if int(float(next_due)) >= 0 else None
        return int(fired), envelopes, due

    def close(self) -> None:
        self.claimer.close()

    async def aclose(self) -> None:
        """Both clients, from the loop the async one was used on."""
        await self.client.aclose()
        self.close()


class MemoryTimers:
    """The same in this process's memory, for ``parley demo`` without Redis."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, Envelope] = {}  # timer name → its envelope
        self.nonces: dict[str, str] = {}  # timer name → the nonce a firing must match

    async def schedule(self, envelope: Envelope) -> None:
        with self.lock:
            self.pending[name_of(envelope)] = envelope
            self.nonces[name_of(envelope)] = envelope.payload["nonce"]

    async def cancel(self, tenant_id: str, user_id: str, action: str, key: str) -> bool:
        name = timer_key(tenant_id, user_id, action, key)
        with self.lock:
            self.pending.pop(name, None)
            return self.nonces.pop(name, None) is not None

    async def is_current(self, envelope: Envelope) -> bool:
        with self.lock:
            return bool(self.nonces.get(name_of(envelope)) == envelope.payload["nonce"])

    async def settle(self, envelope: Envelope) -> None:
        with self.lock:
            if self.nonces.get(name_of(envelope)) == envelope.payload["nonce"]:
                del self.nonces[name_of(envelope)]

    def claim(self, limit: int) -> tuple[int, list[Envelope], float | None]:
        now = time.time()
        with self.lock:
            due = sorted(
                (e for e in self.pending.values() if e.received_at <= now),
                key=lambda e: e.received_at,
            )[:limit]
            for envelope in due:
                del self.pending[name_of(envelope)]
            later = [e.received_at for e in self.pending.values()]
        return len(due), due, min(later, default=None)

    def close(self) -> None:
        pass


class Timers:
    """One handler call's view: its tenant and user's timers (``self.schedule`` and
    ``self.cancel`` of ``WappaEventHandler``). Calls go through the envelope's ``Calls``
    (retried where safe, fenced by the lease) like cache operations."""

    def __init__(
        self,
        store: TimerStore,
        tenant_id: str,
        user_id: str,
        call: Callable[[str, Callable[[], Any]], Any],
        scheduled: Callable[[float], object] | None = None,
    ) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.call = call
        self.scheduled = scheduled

    async def schedule(
        self,
        action: str,
        *,
        after: float | timedelta | None = None,
        at: datetime | float | None = None,
        data: dict[str, Any] | None = None,
        key: str = "",
    ) -> datetime:
        if not self.user_id:
            raise TimerError("timers belong to a user: schedule() from a message or status")
        due = due_time(after, at)
        envelope = timer_envelope(self.tenant_id, self.user_id, action, key, data or {}, due)
        await self.call(f"scheduling timer {action!r}", lambda: self.store.schedule(envelope))
        if self.scheduled is not None:
            self.scheduled(due)
        return datetime.fromtimestamp(due, UTC)

    async def cancel(self, action: str, *, key: str = "") -> bool:
        if not self.user_id:
            return False
        return bool(
            await self.call(
                f"cancelling timer {action!r}",
                lambda: self.store.cancel(self.tenant_id, self.user_id, action, key),
            )
        )


class TimerPump:
    """A node's thread that fires due timers: claims every ``POLL_INTERVAL`` at most,
    sooner when a timer this node scheduled falls due earlier."""

    def __init__(
        self,
        store: TimerStore,
        publish: Callable[[Envelope], object] | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.publish = publish
        self.interval = interval
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._next: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="parley-timers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def scheduled(self, due: float) -> None:
        """A handler on this node scheduled a timer: wake in time for it."""
        if self._next is None or due < self._next:
            self._next = due
            self.wake.set()

    def run_once(self) -> int:
        fired, to_publish, self._next = self.store.claim(CLAIM_BATCH)
        for envelope in to_publish:
            if self.publish is None:
                raise RuntimeError("the broker is not the pipeline DB: a publisher is needed")
            self.publish(envelope)  # lost if this node dies now: the reconciler re-sends it
        if fired:
            log.info("fired %d timer(s)", fired)
        return fired

    def _run(self) -> None:
        backoff = self.interval
        while not self.stopping.is_set():
            try:
                if self.run_once() >= CLAIM_BATCH:
                    continue  # more are due: go on at once
                backoff = self.interval
            except redis.RedisError as exc:
                backoff = min(backoff * 2, 10.0)
                log.warning("cannot fire timers (%s); retrying in %.1fs", exc, backoff)
            except Exception:  # a bug must not silently end the firing of timers
                log.exception("firing timers failed")
            wait = backoff
            if self._next is not None:
                wait = max(0.0, min(wait, self._next - time.time()))
            self.wake.wait(wait)
            self.wake.clear()
