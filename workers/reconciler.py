"""The reconciler: every accepted webhook ends done or dead-lettered, or is sent again.

From the ingress's one script (replay log + queue) a message only moves forward: its
partition queue → kombu's unacked hash (a node popped it) → the partition's in-flight
record (its handler started) → its done-marker (finished, or dead-lettered) → out of
the unacked hash (acked). One step is not atomic: kombu's Redis transport pops a
message (BRPOP) and records it as unacked in a second command, so a node SIGKILLed
between the two takes the message with it, and nothing else notices — the webhook is
in the replay log, has no done-marker and is in no queue. So this compares the log
with those four places and re-enqueues what is in none of them, counting it
(``parley:recovered``) and naming it in a WARNING.

It never takes a live message for a lost one:

- it judges only entries older than ``settings.grace`` (more than a lease plus a
  handler run: by then whatever a dead node held is back in its queue, or finished);
- it reads the places in the order a message moves through them, so a message that
  moves on while they are read is found in a later one; one caught between two (popped
  and not recorded yet, or being put back in front) is found by a second look at the
  candidates a moment later;
- a recovered envelope goes back as it was accepted, with no replay id: should the
  original turn up after all, its done-marker makes the second copy a no-op.

What it can check is bounded by the done-marker's life: a marker lives
``PARLEY_DONE_TTL`` from its handler's end, so an entry older than that (less a margin)
may be done with its marker gone, and is not looked at. A cursor — the last entry
settled together with all before it — keeps each run to what is new; it never passes
an entry still pending. A run takes a lease, so runs never overlap whoever starts
them: ``--partitions auto`` nodes take turns, one run per ``reconcile_interval``
(:class:`Periodic`); ``parley replay --unfinished`` runs one by hand.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, cast

import orjson
import redis
from pydantic import ValidationError

from parley.cache.lua import lua
from parley.wire.envelope import Envelope
from parley.wire.keys import (
    RECONCILER,
    RECONCILER_CURSOR,
    RECONCILER_TURN,
    RECOVERED,
    REPLAY_LOG,
    done_key,
    inflight_key,
    queue_name,
)
from parley.wire.messages import routed_message, task_envelope, task_repr
from parley.wire.partition import partition_for
from parley.workers import private_api
from parley.workers.connections import is_redis
from parley.workers.replay_log import Entry, after, select, stream_id
from parley.workers.settings import Settings

log = logging.getLogger("parley.reconciler")

#: Seconds a run's lease lasts unreleased (a run that dies holding it): far longer than
#: a run of ``reconcile_batch`` entries takes
LEASE_TTL = 120
#: How far inside the done-marker TTL the oldest checked entry stays, in seconds (or a
#: tenth of the TTL when that is less): room for the run itself
MARGIN = 600.0
#: Seconds between the first look at the candidates and the second
RECHECK_AFTER = 1.0
#: Queue items per LRANGE, done-markers per round trip
CHUNK = 1000
#: Messages of one queue read at most: the candidates of a partition with a longer
#: backlog count as pending (checked again once it is shorter), so a lagging
#: deployment is not made slower by reading its whole backlog every run
QUEUE_SCAN_LIMIT = 50 * CHUNK
#: Seconds ``Periodic.stop`` waits for a run to notice
STOP_TIMEOUT = 5.0
#: Seconds a command of the reconciler's clients may take: a hung Redis fails the run
SOCKET_TIMEOUT = 30.0


class Busy(RuntimeError):
    """Another run holds the reconciler's lease."""


class NoQueues(ValueError):
    """The broker is not Redis: the reconciler cannot read its queues."""


class Interrupted(Exception):
    """Stopping (the node shuts down): the run ended before changing anything more."""


@dataclass
class Report:
    """One run, in replay-log ids."""

    since: str  # the first id it could check
    until: str  # the newest id old enough to be judged
    checked: int = 0
    settled: int = 0  # done or dead-lettered
    pending: int = 0  # queued, unacked or in flight
    lost: list[Entry] = field(default_factory=list)  # re-enqueued (a dry run: would be)
    cursor: str | None = None  # the cursor as the run found it
    #: the last entry settled along with all before it: where the cursor moves to
    #: (not on a dry run, nor from --since)
    settled_to: str | None = None
    last: str | None = None  # the last entry checked
    full: bool = False  # stopped at the batch limit: newer entries wait for another run
    behind: bool = False  # the cursor lay before the window: entries went unchecked


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None


def _key_of(message: Any) -> str | None:
    """The done-marker key of the envelope a Celery message carries (None: no envelope)."""
    data = task_envelope(message)
    if data is None:
        return None
    try:
        return done_key(Envelope.from_json(data))
    except (ValidationError, ValueError):
        return None


def _key_of_raw(raw: bytes) -> str | None:
    try:
        return _key_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


class Reconciler:
    """Runs on the caller's thread, with synchronous clients of the pipeline DB and the
    (Redis) broker — its queues and kombu's unacked hash live there."""

    def __init__(
        self,
        pipeline: redis.Redis,
        broker: redis.Redis,
        settings: Settings,
        holder: str,
        *,
        stopping: threading.Event | None = None,
        recheck_after: float = RECHECK_AFTER,
    ) -> None:
        self.pipeline = pipeline
        self.broker = broker
        self.settings = settings
        self.holder = holder  # who runs it (a node's name, the CLI), shown to others
        #: set: a run ends at its next step (Interrupted), the periodic loop ends
        self.stopping = stopping if stopping is not None else threading.Event()
        self.recheck_after = recheck_after
        self._release = pipeline.register_script(lua("parley.workers", "lease_release"))

    @classmethod
    def for_settings(
        cls, settings: Settings, holder: str, *, stopping: threading.Event | None = None
    ) -> Reconciler:
        """A reconciler with clients of its own; raises ``NoQueues`` on another broker."""
        if not is_redis(settings.broker):
            raise NoQueues("the broker is not Redis, so its queues cannot be read")
        pipeline, broker = (
            redis.Redis.from_url(
                url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
            )
            for url in (settings.pipeline, settings.broker)
        )
        return cls(pipeline, broker, settings, holder, stopping=stopping)

    @property
    def window(self) -> float:
        """How old an entry may be and still be checked, in seconds."""
        ttl = self.settings.done_ttl
        return ttl - min(MARGIN, ttl / 10)

    def take_turn(self) -> bool:
        """Whether this node runs this interval's scheduled reconcile (one node does)."""
        interval_ms = max(1, int(self.settings.reconcile_interval * 1000))
        return bool(self.pipeline.set(RECONCILER_TURN, self.holder, nx=True, px=interval_ms))

    def run(self, since: str | None = None, *, dry_run: bool = False) -> Report:
        """One reconcile, from the cursor or from ``since`` (a stream id; then the cursor
        stays where it is). A dry run takes no lease and changes nothing. Raises
        ``Busy`` when another run holds the lease."""
        if dry_run:
            return self._reconcile(since, dry_run=True)
        token = f"{self.holder} {uuid.uuid4().hex[:8]}"
        if not self.pipeline.set(RECONCILER, token, nx=True, ex=LEASE_TTL):
            holder = (_text(self.pipeline.get(RECONCILER)) or "").rsplit(" ", 1)[0]
            raise Busy(f"another reconciler run is in progress ({holder or 'just ended'})")
        try:
            return self._reconcile(since, dry_run=False)
        finally:
            self._release(keys=[RECONCILER], args=[token])

    def _reconcile(self, since: str | None, dry_run: bool) -> Report:
        seconds, micros = self.pipeline.time()
        now_ms = seconds * 1000 + micros // 1000  # stream ids are this clock's
        floor = f"{max(0, now_ms - int(self.window * 1000))}-0"
        until = str(now_ms - int(self.settings.grace * 1000))
        cursor = _text(self.pipeline.get(RECONCILER_CURSOR))
        start = since if since is not None else (after(cursor) if cursor else floor)
        report = Report(max(start, floor, key=stream_id), until, cursor=cursor)
        report.behind = since is None and cursor is not None and start != report.since
        if stream_id(report.since) > stream_id(until):
            return report  # nothing old enough yet (or a window shorter than the grace)
        batch = self.settings.reconcile_batch
        entries = list(islice(select(self.pipeline, REPLAY_LOG, report.since, until), batch))
        if not entries:
            return report
        report.checked, report.last = len(entries), entries[-1].entry_id
        report.full = len(entries) == batch
        keys = [done_key(entry.envelope) for entry in entries]
        settled, pending, unaccounted = self._classify(entries, keys)
        report.settled = sum(key in settled for key in keys)
        report.pending = sum(key in pending for key in keys)
        for entry, key in zip(entries, keys, strict=True):
            if key in unaccounted:  # once per key: Meta may redeliver past the dedup TTL
                unaccounted.discard(key)
                report.lost.append(entry)
        for entry, key in zip(entries, keys, strict=True):
            if key not in settled:
                break
            report.settled_to = entry.entry_id
        if dry_run:
            return report
        if report.lost:
            if self.stopping.is_set():
                raise Interrupted
            self._recover(report.lost)
        if report.settled_to is not None and since is None:
            self.pipeline.set(RECONCILER_CURSOR, report.settled_to)
        return report

    def _classify(
        self, entries: list[Entry], keys: list[str]
    ) -> tuple[set[str], set[str], set[str]]:
        """The entries' done-marker keys that are settled, pending, and in neither place."""
        settled = self._done(keys)  # most entries: one EXISTS each, nothing else to read
        partitions = {
            key: partition_for(
                entry.envelope.tenant_id, entry.envelope.user_id, self.settings.partitions
            )
            for entry, key in zip(entries, keys, strict=True)
            if key not in settled
        }
        pending: set[str] = set()
        unaccounted = set(partitions)
        for look in range(2):  # the second: a moment later, at what the first did not find
            if not unaccounted:
                break
            if look and self.stopping.wait(self.recheck_after):
                raise Interrupted
            found, done = self._locate({k: partitions[k] for k in unaccounted})
            pending |= found
            settled |= done
            unaccounted -= found | done
        return settled, pending, unaccounted

    # -- the four places, in the order a message moves through them ---------------------

    def _locate(self, partition_of: dict[str, int]) -> tuple[set[str], set[str]]:
        """Which of these done-marker keys (→ partition) are pending — queued, unacked or
        in flight — and which are done: read in that order, so none moving on is missed."""
        keys = set(partition_of)
        partitions = sorted(set(partition_of.values()))
        pending: set[str] = set()
        for partition in partitions:
            queued = self._queued(queue_name(partition))
            if queued is None:  # too long to read: all of the partition's count as queued
                pending |= {key for key in keys if partition_of[key] == partition}
            else:
                pending |= keys & queued
        unacked = {_key_of(message) for message in private_api.unacked_messages(self.broker)}
        pending |= keys & {key for key in unacked if key is not None}
        pipe = self.pipeline.pipeline(transaction=False)
        for partition in partitions:
            pipe.hkeys(inflight_key(partition))
        for fields in pipe.execute():
            pending |= keys & {raw.decode() for raw in fields}
        return pending, self._done(keys - pending)

    def _queued(self, queue: str) -> set[str] | None:
        """The done-marker keys of the envelopes waiting on ``queue`` (None: more than
        ``QUEUE_SCAN_LIMIT``). Read from the left, the newest end: a push there shifts
        what is left to read, and so never skips it."""
        found: set[str] = set()
        for offset in range(0, QUEUE_SCAN_LIMIT, CHUNK):
            chunk = cast("list[bytes]", self.broker.lrange(queue, offset, offset + CHUNK - 1))
            found.update(key for raw in chunk if (key := _key_of_raw(raw)) is not None)
            if len(chunk) < CHUNK:
                return found
        return None

    def _done(self, keys: Iterable[str]) -> set[str]:
        unique = list(dict.fromkeys(keys))
        found: set[str] = set()
        for offset in range(0, len(unique), CHUNK):
            chunk = unique[offset : offset + CHUNK]
            pipe = self.pipeline.pipeline(transaction=False)
            for key in chunk:
                pipe.exists(key)
            found.update(key for key, n in zip(chunk, pipe.execute(), strict=True) if n)
        return found

    def _recover(self, lost: list[Entry]) -> None:
        """Re-enqueue the lost entries, oldest first, as they were accepted (no replay
        id: their done-marker still guards against a second run); count and name them."""
        pipe = self.broker.pipeline(transaction=False)
        for entry in lost:
            encoded = entry.fields["envelope"].encode()
            pipe.lpush(*routed_message(entry.envelope, self.settings.partitions, encoded))
        pipe.execute()
        self.pipeline.incrby(RECOVERED, len(lost))
        for entry in lost:
            log.warning(
                "recovered %s (replay log %s): in no queue, unacked by no node, not in "
                "flight and not done after %.0fs; re-enqueued",
                task_repr(entry.envelope),
                entry.entry_id,
                self.settings.grace,
            )


def caught_up_to_batch(report: Report) -> bool:
    """A full batch, all of it settled: the next run starts after it, so run it now.
    (A batch with a pending entry starts there again: that waits for the next turn.)"""
    return report.full and report.settled_to is not None and report.settled_to == report.last


class Periodic:
    """The reconciler on a daemon thread of an ``--partitions auto`` node: every
    ``reconcile_interval`` it runs, if it is this node's turn. Started and stopped with
    the node's ownership thread (``Coordinator.companions``); it ends as soon as the
    reconciler's ``stopping`` is set."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="parley-reconciler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self.reconciler.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT)

    def _loop(self) -> None:
        reconciler = self.reconciler
        while not reconciler.stopping.wait(reconciler.settings.reconcile_interval):
            try:
                if reconciler.take_turn():
                    report = reconciler.run()
                    self._report(report)
                    while caught_up_to_batch(report) and not reconciler.stopping.is_set():
                        report = reconciler.run()  # more than a batch behind: go on
                        self._report(report)
            except Busy:
                continue  # a run by hand: this interval's check is being done
            except Interrupted:
                return
            except redis.RedisError as exc:  # an outage: the next interval tries again
                log.warning("reconciler run failed: %s", exc)
            except Exception:  # a bug must not end the reconciling: log, keep going
                log.exception("reconciler run failed")

    def _report(self, report: Report) -> None:
        if report.behind:
            log.warning(
                "reconciler: entries before %s were never checked (older than the "
                "done-marker TTL allows)",
                report.since,
            )
        log.debug(
            "reconciled %d entries: %d settled, %d pending, %d recovered",
            report.checked,
            report.settled,
            report.pending,
            len(report.lost),
        )
