"""Every kombu and Celery internal that Parley relies on, in one module.

Partition ownership needs more control over the consumer than Celery's public API
gives: stopping a queue without losing the message a blocking pop already took, and
putting a dead node's unacked message back in front of its queue at once instead of
after the visibility timeout; and the reconciler must see which messages nodes hold
unacked. Each function below names the private state it reads.
They were written against Celery and kombu 5.4-5.7, which is why ``pyproject.toml``
caps both below 5.8: raise the cap only after the ownership tests pass on the new
version. Nothing else in Parley touches a name that starts with an underscore in
either library, nor the layout of kombu's keys.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from parley.cache.lua import lua
from parley.wire.envelope import Envelope
from parley.wire.keys import done_key
from parley.wire.messages import task_envelope

#: kombu's Redis transport: the hash of unacked messages (delivery tag → [message,
#: exchange, routing key]) and the sorted set of their delivery times
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def has_event_loop(consumer: Any) -> bool:
    """Whether the Celery consumer runs on kombu's hub (the Redis transport's event loop)."""
    return consumer.hub is not None


def pool_of(consumer: Any) -> Any:
    """The worker's pool (Parley's :class:`~parley.workers.lanes.LanePool`)."""
    return consumer.pool


def consumed_queues(consumer: Any) -> list[Any]:
    """The kombu queues the consumer takes messages from."""
    if consumer.task_consumer is None:
        return []
    return list(consumer.task_consumer.queues)


def call_soon(consumer: Any, function: Callable[..., object], *args: Any) -> None:
    """Run ``function`` on the worker's loop thread, between messages (``consumer.hub``)."""
    consumer.hub.call_soon(function, *args)


def consume(consumer: Any, queue: str) -> None:
    consumer.add_task_queue(queue)


def stop_consuming(consumer: Any, queues: list[str], broker: redis.Redis | None) -> None:
    """Stop consuming these queues, leaving no popped message behind (Redis broker)."""
    if consumer is None or consumer.task_consumer is None:
        return
    if broker is not None:
        settle_pending_pop(consumer.task_consumer.channel, broker)
    for queue in queues:
        consumer.cancel_task_queue(queue)


def forget_queues(consumer: Any, queues: list[str]) -> None:
    """Drop the queues from the worker's selection, so a consumer restart does not
    consume them again."""
    for queue in queues:
        consumer.app.amqp.queues.deselect(queue)


def settle_pending_pop(channel: Any, broker: redis.Redis) -> None:
    """If the task channel has a BRPOP in flight, read its answer now and push what it
    popped back to the front of its queue.

    kombu cancels a consumer without waiting for the pop already sent; a message that
    pop takes for the cancelled queue would be requeued at the BACK — behind newer
    messages — or, on shutdown, restored after the next owner started. Either breaks
    the partition's order, so the answer is read here (private kombu state:
    ``channel._in_poll`` is the connection with a pending BRPOP).
    """
    connection = getattr(channel, "_in_poll", None)
    if not connection:
        return
    try:
        reply = channel.client.parse_response(connection, "BRPOP")
    finally:
        channel._in_poll = None
    if reply:
        key, raw = reply
        broker.rpush(key, raw)  # BRPOP takes from the right: this is the front again


def unacked_messages(broker: redis.Redis) -> list[dict[str, Any]]:
    """Every message a node popped and has not acked yet, of any queue, as the decoded
    message its queue held (kombu's ``unacked`` hash: tag → JSON ``[message, exchange,
    routing_key]``, written by ``QoS.append`` right after the pop). One HVALS: a
    snapshot, so a message that enters the hash while it is read is not skipped."""
    found = []
    for raw in cast("list[bytes]", broker.hvals(UNACKED)):
        try:
            message = json.loads(raw)[0]
        except (ValueError, IndexError, KeyError, TypeError):
            continue
        if isinstance(message, dict):
            found.append(message)
    return found


def redelivery(payload: dict[str, Any]) -> None:
    """Mark a message going back on its queue as redelivered, under a delivery tag of
    its own: the node that held it may still ack its old tag (it was frozen, or lost
    its lease), and that ack must not erase the unacked record of the new delivery."""
    payload["headers"]["redelivered"] = True
    properties = payload["properties"]
    properties.setdefault("delivery_info", {})["redelivered"] = True
    properties["delivery_tag"] = str(uuid.uuid4())


def restore_one(broker: redis.Redis, queue: str, envelope: Envelope) -> bool:
    """Put the unacked message of ``queue`` that carries ``envelope`` back at the
    queue's front — unless the partition's new owner already did (``restore_unacked``
    at its take) or it was acked: then it is no longer in the unacked hash and nothing
    is pushed, so no copy ever overtakes the original. For a node that took a message
    of a partition whose lease had passed to another node (it froze, or starved)."""
    wanted = done_key(envelope)
    script = broker.register_script(lua("parley.workers", "restore_unacked"))
    for tag, raw in cast("dict[bytes, bytes]", broker.hgetall(UNACKED)).items():
        try:
            payload, _, routing_key = json.loads(raw)
            carried = Envelope.from_json(task_envelope(payload) or {})
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            continue
        if routing_key == queue and done_key(carried) == wanted:
            redelivery(payload)
            restored = script(keys=[UNACKED, UNACKED_INDEX, queue], args=[tag, json.dumps(payload)])
            return bool(restored)
    return False


def restore_unacked(broker: redis.Redis, queue: str) -> int:
    """Put a dead predecessor's unacked message(s) for ``queue`` back at its front.

    Only the lease holder consumes a queue, so at takeover anything still unacked for
    it was taken by a node that is gone; kombu would restore it only after the
    visibility timeout, behind everything newer. Reads kombu's ``unacked`` hash
    (tag → JSON ``[message, exchange, routing_key]``) and ``unacked_index``.
    """
    tags = cast("list[bytes]", broker.zrange(UNACKED_INDEX, 0, -1))  # oldest first
    if not tags:
        return 0
    ours = [
        (tag, raw)
        for tag, raw in zip(tags, broker.hmget(UNACKED, tags), strict=True)
        if raw is not None and json.loads(raw)[2] == queue
    ]
    script = broker.register_script(lua("parley.workers", "restore_unacked"))
    restored = 0
    for tag, raw in reversed(ours):  # newest first: the oldest ends up in front
        payload = json.loads(raw)[0]
        redelivery(payload)
        restored += script(keys=[UNACKED, UNACKED_INDEX, queue], args=[tag, json.dumps(payload)])
    return restored
