"""The pipeline DB's per-webhook bookkeeping: done-markers, in-flight records, dead letters.

At-least-once delivery, made narrow: a webhook whose handler completed is marked done
before its message is acked, so a redelivery is acked without running again; every
envelope a partition has started and not finished is recorded (one per busy lane), so
a node that starts consuming the partition after a crash finishes them first and
nothing newer of the same user overtakes them.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Protocol, cast

import orjson
from redis.asyncio import Redis

from parley.cache.lua import evalsha, lua
from parley.wire.envelope import Envelope
from parley.wire.keys import DEAD_LETTERS, LATENCY, done_key, inflight_key, lease_key

#: Upper bounds of the handler-latency histogram's buckets, in seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: What ``begin`` answers (begin.lua's return values)
STARTED, ALREADY_DONE, NOT_LEASE_HOLDER = 1, 0, -1


@dataclass
class InFlight:
    envelope: Envelope
    node: str
    started_at: float


class PipelineStore(Protocol):
    """The per-webhook bookkeeping a worker runtime needs: Redis in a deployment,
    memory in ``parley demo`` without Redis."""

    async def begin(
        self, envelope: Envelope, partition: int, node: str, fenced: bool = False
    ) -> int:
        """STARTED, ALREADY_DONE (a redelivery), or NOT_LEASE_HOLDER when ``fenced``
        and this node does not hold the partition's lease right now."""
        ...

    async def finish(self, envelope: Envelope, partition: int, seconds: float) -> None:
        """Mark done, clear in-flight, count the handler's run time."""
        ...

    async def dead_letter(
        self,
        envelope: Envelope,
        partition: int,
        error: BaseException,
        handler: str,
        attempts: int,
        first_failure: float,
        reason: str = "error",
    ) -> str:
        """Record the failure, mark the envelope done; returns the dead letter's id.
        ``reason``: transient, timeout or error (``runtime.failure_reason``)."""
        ...

    async def in_flight(self, partition: int) -> list[InFlight]:
        """The partition's started, unfinished envelopes, oldest first."""
        ...

    async def aclose(self) -> None: ...


class RedisPipelineStore:
    def __init__(self, client: Redis, done_ttl: int) -> None:
        self.client = client
        self.done_ttl = done_ttl
        self._begin = client.register_script(lua("parley.workers", "begin"))
        self._finish = client.register_script(lua("parley.workers", "finish"))
        self._dead_letter = client.register_script(lua("parley.workers", "dead_letter"))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def begin(
        self, envelope: Envelope, partition: int, node: str, fenced: bool = False
    ) -> int:
        record = orjson.dumps(
            {
                "node": node,
                "started_at": time.time(),
                "envelope": orjson.Fragment(envelope.encode()),
            }
        )
        key = done_key(envelope)
        return int(
            await evalsha(
                self.client,
                self._begin,
                [key, inflight_key(partition), lease_key(partition)],
                [record, node, "1" if fenced else "0", key],
            )
        )

    async def finish(self, envelope: Envelope, partition: int, seconds: float) -> None:
        bucket = next((b for b in LATENCY_BUCKETS if seconds <= b), "+Inf")
        await evalsha(
            self.client,
            self._finish,
            [done_key(envelope), inflight_key(partition), DEAD_LETTERS, LATENCY],
            [time.time(), self.done_ttl, envelope.dead_letter_id or "", f"le:{bucket}", seconds],
        )

    async def dead_letter(
        self,
        envelope: Envelope,
        partition: int,
        error: BaseException,
        handler: str,
        attempts: int,
        first_failure: float,
        reason: str = "error",
    ) -> str:
        entry = {
            "envelope": envelope.encode(),
            "tenant_id": envelope.tenant_id,
            "user_id": envelope.user_id,
            "event_id": envelope.event_id,
            "kind": envelope.kind,
            "partition": partition,
            "handler": handler,
            "reason": reason,
            "error_type": f"{type(error).__module__}.{type(error).__qualname__}",
            "error": str(error)[:2000],
            "traceback": "".join(traceback.format_exception(error))[-8000:],
            "attempts": envelope.previous_attempts + attempts,
            "first_failure": envelope.first_failure or first_failure,
            "last_failure": time.time(),
        }
        flat: list[object] = []
        for field, value in entry.items():
            flat += (field, value)
        entry_id = await evalsha(
            self.client,
            self._dead_letter,
            [done_key(envelope), inflight_key(partition), DEAD_LETTERS],
            [self.done_ttl, envelope.dead_letter_id or "", *flat],
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def in_flight(self, partition: int) -> list[InFlight]:
        records = cast("list[bytes]", await self.client.hvals(inflight_key(partition)))
        return sorted((in_flight_record(raw) for raw in records), key=lambda r: r.started_at)


def in_flight_record(raw: bytes) -> InFlight:
    """One value of a partition's in-flight hash (see begin.lua)."""
    record = orjson.loads(raw)
    return InFlight(Envelope.from_json(record["envelope"]), record["node"], record["started_at"])


class MemoryPipelineStore:
    """The same bookkeeping in this process's memory, for ``parley demo`` with no Redis:
    one worker, so no atomicity is needed across processes."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.running: dict[str, tuple[int, InFlight]] = {}  # done key → partition, record
        self.dead: list[dict[str, object]] = []

    async def begin(
        self, envelope: Envelope, partition: int, node: str, fenced: bool = False
    ) -> int:
        if done_key(envelope) in self.done:
            return ALREADY_DONE
        self.running[done_key(envelope)] = (partition, InFlight(envelope, node, time.time()))
        return STARTED

    async def finish(self, envelope: Envelope, partition: int, seconds: float) -> None:
        self.done.add(done_key(envelope))
        self.running.pop(done_key(envelope), None)

    async def dead_letter(
        self,
        envelope: Envelope,
        partition: int,
        error: BaseException,
        handler: str,
        attempts: int,
        first_failure: float,
        reason: str = "error",
    ) -> str:
        self.dead.append(
            {"envelope": envelope, "error": repr(error), "handler": handler, "reason": reason}
        )
        await self.finish(envelope, partition, 0.0)
        return f"memory-{len(self.dead)}"

    async def in_flight(self, partition: int) -> list[InFlight]:
        return [record for k, record in self.running.values() if k == partition]

    async def aclose(self) -> None:
        pass
