"""How many messages wait on each partition queue, asked of the broker that holds them.

``parley status`` and the ingress's ``/metrics`` both need it, and the answer lives in
the broker, not in the pipeline DB: on Redis a partition queue is a list (``LLEN``), on
RabbitMQ a queue whose count only the server knows (a passive ``queue.declare``, whose
reply carries the ready-message and consumer counts; the management API may be off, so
it is not used). One interface, two readers, picked by the broker URL:
``open_depths(settings.broker, ...)``.

Lag (the age of the oldest waiting webhook) needs the oldest message itself. A Redis
list is read at its tail without taking it (``LINDEX -1``). A RabbitMQ queue cannot be
looked into: the only way to see its head is to take it (``basic.get``) and give it back,
which marks it redelivered and, with other consumers, lets a later message overtake
it — a status command must never reorder a user's webhooks. So on AMQP the lag is
unknown (``peeks`` is False): ``parley status`` says so and ``/metrics`` leaves
``parley_partition_lag_seconds`` out rather than report a made-up 0.

Both readers fail within about ``timeout`` seconds with ``BrokerUnreadable`` (naming the
broker, password redacted): a scrape during an outage must not hang.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import redis

from parley.cache.redis import redact
from parley.wire.messages import waiting_since
from parley.workers.connections import PROBE_TIMEOUT, fail_fast_client, is_redis


class BrokerUnreadable(Exception):
    """The broker did not answer (or refused) a depth query; names the broker."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = redact(url)
        super().__init__(f"the broker at {self.url}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class QueueDepth:
    #: messages waiting, not yet handed to a consumer (unacked ones are not counted)
    ready: int
    #: when the oldest waiting webhook was received (epoch seconds); None when none
    #: waits, or when the broker cannot tell (``QueueDepths.peeks`` False)
    oldest: float | None = None
    #: consumers attached to the queue; None where the broker has no such notion (a
    #: Redis list is polled by BRPOP, not subscribed to)
    consumers: int | None = None


class QueueDepths(Protocol):
    """Reads the depth of named queues from one broker."""

    #: whether ``QueueDepth.oldest`` is read (the lag is known)
    peeks: bool

    def read(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """Each queue's depth; a queue the broker does not know is empty. Raises
        ``BrokerUnreadable``."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class _Closing:
    """``with reader:`` closes it."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RedisQueueDepths(_Closing):
    """Partition queues as Redis lists: ``LLEN`` and the tail (the oldest, BRPOP's end)
    of each, in one round trip."""

    peeks = True

    def __init__(self, client: redis.Redis, url: str, *, owned: bool = False) -> None:
        self.client = client
        self.url = url
        self.owned = owned  # close the client with the reader

    def read(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
            pipe.lindex(queue, -1)
        try:
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnreadable(self.url, exc) from exc
        return {
            queue: QueueDepth(replies[2 * n], waiting_since(replies[2 * n + 1]))
            for n, queue in enumerate(queues)
        }

    def close(self) -> None:
        if self.owned:
            self.client.close()


def _not_found(exc: Exception) -> bool:
    """A passive declare's 404 (no such queue): py-amqp's ``NotFound``, or the same
    channel error from kombu's virtual transports (``memory://``), whose code is text."""
    from amqp.exceptions import ChannelError  # type: ignore[import-untyped]

    return isinstance(exc, ChannelError) and str(getattr(exc, "reply_code", "")) == "404"


class AmqpQueueDepths(_Closing):
    """Partition queues on an AMQP broker (RabbitMQ): a passive ``queue.declare`` per
    queue on one connection, which changes nothing on the server and answers with the
    ready-message and consumer counts. Connects on first ``read``. Any other kombu
    transport (``memory://`` of ``parley demo``) answers the same declare."""

    peeks = False

    def __init__(self, url: str, timeout: float = PROBE_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self._connection: Any = None

    def _connect(self) -> Any:
        from kombu.connection import Connection

        if self._connection is None:
            self._connection = Connection(  # type: ignore[no-untyped-call]
                self.url,
                connect_timeout=self.timeout,
                # py-amqp's socket timeouts: a hung server fails the read, not the scrape
                transport_options={"read_timeout": self.timeout, "write_timeout": self.timeout},
            )
            self._connection.connect()
        return self._connection

    def read(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        found: dict[str, QueueDepth] = {}
        try:
            connection = self._connect()
            channel = connection.channel()
            try:
                for queue in queues:
                    try:
                        _, ready, consumers = channel.queue_declare(queue, passive=True)
                    except Exception as exc:
                        if not _not_found(exc):
                            raise
                        # never declared: nothing was ever sent there, nobody consumes it.
                        # The server closed the channel with the 404: take another.
                        found[queue] = QueueDepth(0, None, 0)
                        channel = connection.channel()
                        continue
                    found[queue] = QueueDepth(ready, None, consumers)
            finally:
                with suppress(Exception):
                    channel.close()
        except Exception as exc:  # socket errors, timeouts, refusals: all "unreadable"
            self.close()
            raise BrokerUnreadable(self.url, exc) from exc
        return found

    def close(self) -> None:
        if self._connection is not None:
            with suppress(Exception):
                self._connection.release()
            self._connection = None


def open_depths(
    broker_url: str,
    *,
    pipeline_url: str,
    pipeline: redis.Redis,
    timeout: float = PROBE_TIMEOUT,
) -> QueueDepths:
    """The reader for ``broker_url``: the pipeline's own client when the broker is that
    same Redis DB (the default deployment), a fail-fast client of its own on another
    Redis, an AMQP reader otherwise."""
    if broker_url == pipeline_url:
        return RedisQueueDepths(pipeline, pipeline_url)
    if is_redis(broker_url):
        return RedisQueueDepths(fail_fast_client(broker_url, timeout), broker_url, owned=True)
    return AmqpQueueDepths(broker_url, timeout)
