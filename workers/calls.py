"""Every cache operation and Graph API request a handler makes goes through ``Calls``.

Two things happen there, for every call:

- **Ownership.** First it checks, locally and without a round trip, that the node still
  holds the partition's lease (``fence``). A node that froze past its lease (a GC
  pause, a paused VM, SIGSTOP) and woke up must not write next to the partition's new
  owner: the call raises ``LeaseLost`` instead, and the runtime leaves the envelope to
  that owner.
- **Retries.** Retrying a whole handler repeats the side effects it already had: a
  counter goes up twice, a reply is sent twice. So a failed call is retried where it
  failed, and only where running it again cannot apply it twice (the error says so:
  ``retry_safe``). A connection refused before anything was sent, a Graph API 429 or
  503, a read: retried with capped exponential backoff. A timeout after an increment
  or a message was sent: raised at once, because it may have been applied.

One ``Calls`` serves one envelope, so the retries of all its calls share one deadline
(``PARLEY_TRANSIENT_DEADLINE``, counted from the first failure). Past it the call raises
``TransientFailure``; the runtime dead-letters the envelope with reason ``transient``
and the user's lane moves on. A stopping worker (SIGTERM) interrupts the backoff with
``WorkerStopping``: the envelope stays in flight and the partition's next owner
finishes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from parley.cache.codec import Fields
from parley.cache.results import WriteOutcome
from parley.cache.store import Store

log = logging.getLogger("parley.calls")

T = TypeVar("T")


class TransientFailure(Exception):
    """A call kept failing transiently past the deadline: the envelope goes to the dead
    letters with reason ``transient`` (``parley replay --dead`` once the outage is over)."""


class Abandoned(BaseException):
    """The envelope must stop here, unfinished, for another node to finish it.

    A ``BaseException``, like ``asyncio.CancelledError``: a handler's ``except
    Exception`` must not swallow it and carry on writing."""


class WorkerStopping(Abandoned):
    """The worker is shutting down while this envelope waits out a failure."""


class LeaseLost(Abandoned):
    """The node no longer surely holds the partition's lease (it froze past it): another
    node may be running this user's next webhooks, so this one must not write."""


def retry_safe(exc: BaseException) -> bool:
    """Whether running the failed call again cannot apply it twice (see module doc).
    Errors that say so carry ``retry_safe = True``; anything else is not retried."""
    return bool(getattr(exc, "retry_safe", False))


class Calls:
    """The retry policy of one envelope's calls (or of a messenger used on its own)."""

    def __init__(
        self,
        *,
        deadline: float,
        backoff: float = 0.2,
        backoff_max: float = 10.0,
        stopping: asyncio.Event | None = None,
        fence: Callable[[], None] | None = None,
        retryable: Callable[[BaseException], bool] = retry_safe,
        subject: str = "",
    ) -> None:
        """``fence`` runs before every call and raises (``LeaseLost``) when the call
        must not happen at all; ``retryable`` tells a failure worth retrying (by
        default: one whose error says ``retry_safe``)."""
        self.deadline = deadline
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.stopping = stopping
        self.fence = fence
        self.retryable = retryable
        #: what the log lines name: the envelope's ids (never message text)
        self.subject = subject
        self.failing_since: float | None = None
        self.retries = 0

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()``, retried while it fails ``retryable`` and time is left."""
        while True:
            if self.fence is not None:
                self.fence()
            try:
                return await op()
            except Exception as exc:
                if not self.retryable(exc):
                    raise
                await self._wait_before_retry(what, exc)

    async def _wait_before_retry(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        left = self.failing_since + self.deadline - now
        if left <= 0:
            raise TransientFailure(
                f"{what} kept failing for {now - self.failing_since:.0f}s "
                f"(PARLEY_TRANSIENT_DEADLINE): {exc}"
            ) from exc
        self.retries += 1
        delay = min(self.backoff_max, self.backoff * 2 ** min(self.retries, 30))
        delay *= random.uniform(0.5, 1.0)
        delay = max(getattr(exc, "retry_after", None) or 0.0, delay)
        delay = min(delay, left)
        log.warning(
            "%s%s failed transiently (%s); retry %d in %.1fs (%.0fs left before dead-lettering)",
            what,
            f" for {self.subject}" if self.subject else "",
            exc,
            self.retries,
            delay,
            left,
        )
        if self.stopping is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(self.stopping.wait(), delay)
        except TimeoutError:
            return
        raise WorkerStopping(f"worker stopping during the backoff of {what}") from exc


class GuardedStore:
    """A cache store whose every operation goes through one envelope's ``Calls``."""

    def __init__(self, store: Store, calls: Calls) -> None:
        self._store = store
        self._calls = calls

    async def get(self, key: str) -> Fields | None:
        return await self._calls.call(f"reading {key!r}", lambda: self._store.get(key))

    async def set(self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None) -> None:
        await self._calls.call(
            f"writing {key!r}", lambda: self._store.set(key, fields, ttl, default_ttl)
        )

    async def delete(self, key: str) -> bool:
        return await self._calls.call(f"deleting {key!r}", lambda: self._store.delete(key))

    async def exists(self, key: str) -> bool:
        return await self._calls.call(f"reading {key!r}", lambda: self._store.exists(key))

    async def get_field(self, key: str, field: str) -> bytes | None:
        return await self._calls.call(f"reading {key!r}", lambda: self._store.get_field(key, field))

    async def set_field(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None:
        await self._calls.call(
            f"writing {key!r}",
            lambda: self._store.set_field(key, field, value, ttl, default_ttl),
        )

    async def increment_field(
        self, key: str, field: str, increment: int | float, ttl: int | None, default_ttl: int | None
    ) -> int | float:
        return await self._calls.call(
            f"incrementing {field!r} of {key!r}",
            lambda: self._store.increment_field(key, field, increment, ttl, default_ttl),
        )

    async def append_to_list(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None:
        await self._calls.call(
            f"appending to {field!r} of {key!r}",
            lambda: self._store.append_to_list(key, field, value, ttl, default_ttl),
        )

    async def get_ttl(self, key: str) -> int:
        return await self._calls.call(f"reading {key!r}", lambda: self._store.get_ttl(key))

    async def set_ttl(self, key: str, ttl: int) -> bool:
        return await self._calls.call(f"writing {key!r}", lambda: self._store.set_ttl(key, ttl))

    async def create_if_absent(
        self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        return await self._calls.call(
            f"creating {key!r}",
            lambda: self._store.create_if_absent(key, fields, ttl, default_ttl),
        )

    async def replace_if(
        self, key: str, fields: Fields, expected: Fields, ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        return await self._calls.call(
            f"replacing {key!r} conditionally",
            lambda: self._store.replace_if(key, fields, expected, ttl),
        )
