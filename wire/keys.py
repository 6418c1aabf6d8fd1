"""Every Redis key and channel of the pipeline DB, in one place.

The caches' keys are the caching spec's (``parley.cache.keys``); these are Parley's
own bookkeeping. Ids that come from outside (tenant, message id) are escaped with the
caches' ``escape_id``, so no payload can reach another tenant's key.
"""

from __future__ import annotations

from parley.cache.keys import escape_id
from parley.wire.envelope import Envelope

#: Partition k's Celery queue (a Redis list on the Redis broker)
QUEUE_PREFIX = "parley.p"
#: The queue a worker consumes before it holds any partition (it stays empty)
DEFAULT_QUEUE = "parley.default"
#: Every accepted envelope, in acceptance order (a stream: ids are acceptance times)
REPLAY_LOG = "parley:log"
#: Envelopes whose handler failed for good (a stream)
DEAD_LETTERS = "parley:dead"
#: Handler run times of finished envelopes, all nodes: a count per bucket, sum, count
LATENCY = "parley:latency"
#: What the ingress and the workers sharing this pipeline DB must agree on, and when each
#: last started (a hash: see ``parley.workers.deployment``); also kept in a separate
#: Redis broker's DB, to tell that it belongs to this pipeline
DEPLOYMENT = "parley:deployment"
#: Scheduled actions not yet fired: each timer's key (below), scored with its due time
#: (epoch ms); claimed by one script, so one node fires each
TIMERS = "parley:timers"
#: Live worker nodes, each scored with the time (Redis's clock, ms) its heartbeat ends
NODES = "parley:nodes"
#: Published on after a node joins, leaves or releases leases: nodes re-balance at
#: once instead of at their next heartbeat
OWNERSHIP_CHANNEL = "parley:ownership"
#: Replay-log entries the reconciler found lost (in no queue, unacked hash, in-flight
#: record or done-marker) and re-enqueued: a counter
RECOVERED = "parley:recovered"
#: The reconciler's run lease: one run at a time, whoever runs it (a node, the CLI)
RECONCILER = "parley:reconciler"
#: Set for one interval by the node whose turn it is: one scheduled run per interval
#: across all nodes
RECONCILER_TURN = "parley:reconciler:turn"
#: The last replay-log id the reconciler found settled with all before it (done or
#: dead-lettered): where its next run starts
RECONCILER_CURSOR = "parley:reconciler:cursor"


def queue_name(partition: int) -> str:
    return f"{QUEUE_PREFIX}{partition}"


def partition_of_queue(queue: str | None) -> int | None:
    """The partition whose queue this is (None: not a partition queue)."""
    if queue and queue.startswith(QUEUE_PREFIX) and queue[len(QUEUE_PREFIX) :].isdigit():
        return int(queue[len(QUEUE_PREFIX) :])
    return None


def lease_key(partition: int) -> str:
    """Partition k's lease: the holder's node name, with an expiry."""
    return f"parley:lease:{partition}"


def timer_key(tenant_id: str, user_id: str, action: str, key: str) -> str:
    """One (user, action, key)'s timer: a hash of its envelope, Celery message, queue and
    nonce. Scheduling it again replaces it; after it fires only its nonce stays, until its
    handler ran (a cancel in between deletes it, and the firing is skipped)."""
    parts = (
        escape_id(tenant_id, "tenant_id"),
        escape_id(user_id, "user_id"),
        escape_id(action, "action"),
        escape_id(key, "key") if key else "",
    )
    return "parley:timer:" + ":".join(parts)


def inflight_key(partition: int) -> str:
    """Every envelope of partition k that a node started and has not finished: a hash,
    its done-marker key → ``{"envelope", "node", "started_at"}`` (JSON)."""
    return f"parley:inflight:{partition}"


def seen_key(envelope: Envelope) -> str:
    """The ingress's dedup mark: Meta redelivers an accepted delivery."""
    return (
        f"parley:seen:{escape_id(envelope.tenant_id, 'tenant_id')}:"
        f"{escape_id(envelope.event_id, 'event_id')}"
    )


def done_key(envelope: Envelope) -> str:
    """The workers' done-marker. A replay has an id of its own, so the original's
    marker does not skip it."""
    event = envelope.replay_id or envelope.event_id
    return (
        f"parley:done:{escape_id(envelope.tenant_id, 'tenant_id')}:{escape_id(event, 'event_id')}"
    )
