"""Replaying accepted webhooks and dead letters.

The replay log (``parley:log``) and the dead-letter stream (``parley:dead``) are Redis
streams whose ids are their acceptance times, so a time window is an id range.
A replay sends each selected envelope, in the original order, to its partition queue
with a replay id of its own: neither the ingress dedup (it does not pass there) nor
the workers' done-marker (keyed by the replay id) skips it, and handlers can tell
(``webhook.is_replay``).

When the broker is the pipeline DB (the default), a replay pushes the Celery messages
onto the queue lists itself, a chunk per round trip. On any other broker (RabbitMQ,
another Redis) it publishes through Celery, one message at a time and, on AMQP, each
confirmed by the broker before the next (``create_publisher``): the count printed at
the end is what the broker holds, and one publisher on one channel keeps the order.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis

from parley.cache.redis import redact
from parley.wire.envelope import Envelope
from parley.wire.keys import DEAD_LETTERS
from parley.wire.messages import routed_message
from parley.wire.partition import partition_for
from parley.workers.replay_log import Entry, select, stream_id
from parley.workers.settings import Settings, parse_duration

__all__ = [
    "Entry",
    "ReplayInterrupted",
    "as_replay",
    "dead_letter_id",
    "enqueue",
    "find_dead_letters",
    "select",
    "stream_bound",
    "stream_time",
    "summary",
    "utc",
]

STREAM_ID = re.compile(r"^\d+(-\d+)?$")
#: Replays pushed per round trip (broker = pipeline DB)
CHUNK = 500
#: Replays published (one confirm each) between progress updates and rate checks
PUBLISH_CHUNK = 50


def stream_bound(text: str | None, *, now: float | None = None, end: bool = False) -> str:
    """``--since``/``--until`` → a stream id: an ISO time (UTC if naive), a duration
    back from now (``2h``, ``30m``, ``7d``), or a stream id itself."""
    if text is None:
        return "+" if end else "-"
    text = text.strip()
    if STREAM_ID.match(text) and (len(text) >= 12 or "-" in text):
        return text
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ms = int(when.timestamp() * 1000)
    except ValueError:
        try:
            ms = int(((now or time.time()) - parse_duration(text).total_seconds()) * 1000)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither an ISO time, a duration like 2h nor a stream id"
            ) from None
    return f"{ms}-{'18446744073709551615' if end else '0'}"


def utc(seconds: float) -> str:
    """A time for people, in ISO 8601 UTC to the second: what ``--since`` takes back."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stream_time(entry_id: str) -> float:
    """When an entry was added (epoch seconds): its stream id's milliseconds."""
    return stream_id(entry_id)[0] / 1000


def dead_letter_id(entry: Entry) -> str:
    """The id people see and give for a dead letter. It stays while the entry changes:
    a replay that fails again replaces the entry, carrying the id over (dead_letter.lua);
    the first entry's id is its stream id."""
    return entry.fields.get("id") or entry.entry_id


def find_dead_letters(client: redis.Redis, ref: str) -> list[Entry]:
    """The dead-letter entries ``ref`` names: its id (``parley dead list``), its current
    stream id, or its event id (the message id, which several dead letters may share).
    Oldest first."""
    return [
        entry
        for entry in select(client, DEAD_LETTERS)
        if ref in (dead_letter_id(entry), entry.entry_id, entry.fields.get("event_id"))
    ]


def as_replay(entry: Entry, batch: str, dead: bool) -> Envelope:
    update: dict[str, Any] = {"replay_id": f"{batch}:{entry.entry_id}"}
    if dead:
        update |= {
            "dead_letter_id": entry.entry_id,
            "previous_attempts": int(entry.fields.get("attempts", "0")),
            "first_failure": float(entry.fields.get("first_failure") or time.time()),
        }
    return entry.envelope.model_copy(update=update)


def summary(entries: list[Entry], settings: Settings) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {
        "tenant": Counter(),
        "type": Counter(),
        "partition": Counter(),
    }
    for entry in entries:
        env = entry.envelope
        counts["tenant"][env.tenant_id] += 1
        counts["type"][env.kind] += 1
        counts["partition"][
            str(partition_for(env.tenant_id, env.user_id, settings.partitions))
        ] += 1
    return counts


class ReplayInterrupted(Exception):
    """A publish failed part-way (the broker down, refusing, or not confirming): the
    first ``sent`` replays are on their queues (confirmed), the one that failed may or
    may not be, the rest were not sent."""

    def __init__(
        self, batch: str, sent: int, total: int, broker: str, cause: BaseException
    ) -> None:
        self.batch, self.sent, self.total = batch, sent, total
        super().__init__(
            f"the broker at {redact(broker)} failed after {sent} of {total} replays of "
            f"{batch} were confirmed ({type(cause).__name__}: {cause}); the rest were not sent"
        )


def enqueue(
    client: redis.Redis,
    entries: list[Entry],
    settings: Settings,
    *,
    dead: bool = False,
    rate: float | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> str:
    """Send the entries' replays to their partition queues, in order; returns the
    batch id that their replay ids start with. ``client``: the pipeline DB, pushed to
    directly when it is the broker too; else the replays go through Celery."""
    batch = f"replay-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    sent = 0
    publisher = None
    if settings.broker != settings.pipeline:
        from parley.workers.celery import create_publisher  # Celery: only when used

        publisher = create_publisher(settings)
    try:
        size = CHUNK if publisher is None else PUBLISH_CHUNK
        for offset in range(0, len(entries), size):
            chunk = [as_replay(entry, batch, dead) for entry in entries[offset : offset + size]]
            if publisher is None:
                push(client, chunk, settings.partitions)
                sent += len(chunk)
            else:
                for envelope in chunk:
                    try:
                        publisher(envelope)
                    except Exception as exc:  # kombu's errors of a broker outage, a refusal
                        raise ReplayInterrupted(
                            batch, sent, len(entries), settings.broker, exc
                        ) from exc
                    sent += 1
            advance(len(chunk))
            if rate:  # hold the average at the requested rate
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        if publisher is not None:
            publisher.close()
    return batch


def push(client: redis.Redis, chunk: list[Envelope], partitions: int) -> None:
    """Replays LPUSHed onto their queue lists (the broker is this DB), one round trip."""
    pipe = client.pipeline(transaction=False)
    for envelope in chunk:
        pipe.lpush(*routed_message(envelope, partitions))
    pipe.execute()
