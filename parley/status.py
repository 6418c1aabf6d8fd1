"""The pipeline's state as operators see it: what ``parley status`` prints and what
the ingress's ``/metrics`` exports. Leases, in-flight records, nodes, streams and timers
are read from the pipeline DB in one round trip; the queue depths from the broker that
holds the queues (``parley.depths``: Redis lists or RabbitMQ queues). A broker that does
not answer leaves the depths unknown (``broker_error``) and the rest still shown: the
state is wanted most during an outage."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import redis

from parley.depths import BrokerUnreadable, QueueDepth, QueueDepths, RedisQueueDepths
from parley.wire.keys import (
    DEAD_LETTERS,
    LATENCY,
    NODES,
    RECOVERED,
    REPLAY_LOG,
    TIMERS,
    inflight_key,
    lease_key,
    queue_name,
)
from parley.workers.leases import live_nodes
from parley.workers.pipeline import in_flight_record


@dataclass
class PartitionState:
    partition: int
    depth: int | None  # messages waiting; None: the broker did not answer
    owner: str | None  # the lease holder
    in_flight: dict[str, int]  # node → how many of its envelopes it is running
    lag: float | None  # seconds the oldest waiting webhook has waited (None: none, or unknown)
    consumers: int | None = None  # the queue's consumers, where the broker counts them (AMQP)


@dataclass
class PipelineState:
    partitions: list[PartitionState]
    nodes: dict[str, float]  # live node -> seconds until its heartbeat runs out
    replay_log: int
    dead_letters: int
    latency: dict[str, str]  # the handler-latency hash (see finish.lua)
    recovered: int  # lost envelopes the reconciler re-enqueued, ever
    timers: int  # scheduled actions not yet fired
    next_timer: float | None  # seconds until the next one is due (negative: overdue)
    #: whether ``PartitionState.lag`` was read: not on RabbitMQ (``parley.depths``)
    lag_known: bool = True
    #: why the depths are unknown (the broker did not answer), else None
    broker_error: str | None = None


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def still_live(expiries: dict[str, float], redis_now: float) -> dict[str, float]:
    """Live node → seconds until its heartbeat runs out, of the registry's nodes and
    their expiries (epoch seconds), on Redis's clock: a node that stopped without leaving
    stays in ``parley:nodes`` until another's heartbeat prunes it."""
    return {node: expires - redis_now for node, expires in expiries.items() if expires > redis_now}


def live_worker_nodes(client: redis.Redis) -> dict[str, float]:
    """The live worker nodes (``--partitions auto``) and the seconds each one's heartbeat
    has left: what ``parley status`` lists, and what ``parley demo --redis`` refuses to
    run beside (they would take its webhooks)."""
    seconds, micros = client.time()
    return still_live(live_nodes(client), seconds + micros / 1e6)


def read_state(
    client: redis.Redis, partitions: int, depths: QueueDepths | None = None
) -> PipelineState:
    """The state, from the pipeline DB (``client``: a Redis error propagates) and the
    queue depths from ``depths`` (default: Redis lists in that same DB)."""
    pipe = client.pipeline(transaction=False)
    for k in range(partitions):
        pipe.get(lease_key(k))
        pipe.hvals(inflight_key(k))
    pipe.zrange(NODES, 0, -1, withscores=True)
    pipe.xlen(REPLAY_LOG)
    pipe.xlen(DEAD_LETTERS)
    pipe.hgetall(LATENCY)
    pipe.get(RECOVERED)
    pipe.zcard(TIMERS)
    pipe.zrange(TIMERS, 0, 0, withscores=True)
    pipe.time()
    *per_partition, nodes, logged, dead, latency, recovered, timers, first, (seconds, micros) = (
        pipe.execute()
    )
    redis_now = seconds + micros / 1e6  # heartbeats are scored on Redis's clock
    reader = depths if depths is not None else RedisQueueDepths(client, "the pipeline DB")
    queues = [queue_name(k) for k in range(partitions)]
    broker_error = None
    try:
        waiting: dict[str, QueueDepth] = reader.read(queues)
    except BrokerUnreadable as exc:
        waiting, broker_error = {}, str(exc)
    now = time.time()  # received_at is the ingress's
    rows = []
    for k in range(partitions):
        owner, running = per_partition[2 * k : 2 * k + 2]
        depth = waiting.get(queue_name(k))
        since = depth.oldest if depth is not None else None
        rows.append(
            PartitionState(
                k,
                depth.ready if depth is not None else None,
                _text(owner),
                dict(Counter(in_flight_record(raw).node for raw in running)),
                max(0.0, now - since) if since is not None else None,
                depth.consumers if depth is not None else None,
            )
        )
    return PipelineState(
        rows,
        still_live({node.decode(): expires / 1000 for node, expires in nodes}, redis_now),
        logged,
        dead,
        {key.decode(): value.decode() for key, value in latency.items()},
        int(recovered or 0),
        timers,
        first[0][1] / 1000 - redis_now if first else None,
        lag_known=reader.peeks,
        broker_error=broker_error,
    )
