"""The broker a benchmark runs on: ``--broker redis`` (the pipeline DB, as deployed by
default) or ``--broker amqp`` (a fresh vhost on the machine's RabbitMQ, 127.0.0.1:5672
guest/guest, deleted after the run: ``tests/rabbitmq.py``).

How much work is left is read differently. On Redis: the messages on the partition
lists plus kombu's unacked hash, exactly. A RabbitMQ queue tells its ready messages
(a passive declare) but not its unacknowledged ones without the management API (off
on this machine), so on AMQP the runs count what finished instead: Parley's handler-
latency histogram (``finish.lua`` adds every run to it) and, for the no-op floor, a
counter its worker increments after each task (``bench.noop_counted``). The clock's
end is then the last handler's end, its ack following within a loop turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from parley.testing import RedisServer
from parley.wire.keys import LATENCY, queue_name

BROKERS = ("redis", "amqp")
#: The no-op floor's count of finished tasks on AMQP (``bench.noop_counted``)
NOOP_DONE = "bench:noop:done"


@contextmanager
def broker_url(kind: str) -> Iterator[str | None]:
    """``PARLEY_BROKER_URL`` for a run: None (the pipeline DB) for redis, else the URL
    of a vhost of its own, deleted afterwards."""
    if kind == "redis":
        yield None
        return
    from tests.rabbitmq import UNAVAILABLE, Admin, answers, private_vhost

    if not answers():
        raise SystemExit(UNAVAILABLE)
    admin = Admin()
    try:
        with private_vhost(admin, prefix="parley-bench") as url:
            yield url
    finally:
        admin.close()


def finished(server: RedisServer) -> int:
    """Handler runs Parley finished plus no-op tasks the floor finished (AMQP runs)."""
    client = server.client(3)
    runs = sum(int(n) for field, n in client.hgetall(LATENCY).items() if field.startswith(b"le:"))
    return runs + int(client.get(NOOP_DONE) or 0)


def remaining(server: RedisServer, partitions: int, amqp: bool = False, total: int = 0) -> int:
    """Messages not yet done with: on Redis those queued or unacked; on AMQP ``total``
    less those finished (see the module's docstring)."""
    if amqp:
        return total - finished(server)
    pipe = server.client(3).pipeline()
    for k in range(partitions):
        pipe.llen(queue_name(k))
    pipe.hlen("unacked")
    return sum(pipe.execute())
