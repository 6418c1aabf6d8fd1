"""The Celery task message of one envelope, in Celery's message protocol v2, as the
Redis transport stores it on a queue.

The ingress, ``parley replay`` and a worker putting a message back push these bytes
straight onto partition queues (one round trip for many envelopes, instead of
``apply_async`` per envelope); workers consume them as ordinary ``parley.handle``
tasks. Written out here rather than built with Celery's ``as_task_v2`` so that the
ingress and the operator tools never import Celery; a test compares every field
with what Celery itself produces.
"""

from __future__ import annotations

import base64
import socket
import uuid
from typing import Any

import orjson

from parley.wire.envelope import Envelope, mask_user_id, printable
from parley.wire.keys import queue_name
from parley.wire.partition import partition_for

#: The one task every Parley message runs
TASK_NAME = "parley.handle"
ORIGIN = f"parley@{socket.gethostname()}"


def task_repr(envelope: Envelope) -> str:
    """What Flower and logs show of a task: ids, never message text."""
    return printable(
        f"tenant={envelope.tenant_id} user={mask_user_id(envelope.user_id)} "
        f"{envelope.kind}={envelope.event_id}" + (" replay" if envelope.replay_id else "")
    )


def task_shadow(envelope: Envelope) -> str:
    """The task name Flower shows: parley.message, parley.status or parley.error."""
    return f"parley.{envelope.kind}"


def task_headers(task_id: str, envelope: Envelope) -> dict[str, Any]:
    """Protocol v2 headers, as Celery's ``as_task_v2`` writes them for a task sent with
    ``ignore_result=True``, the envelope's repr and its shadow name."""
    return {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": task_shadow(envelope),
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": task_repr(envelope),
        "kwargsrepr": "{}",
        "origin": ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


#: The body's third part: no callbacks, errbacks, chain or chord
EMBED = orjson.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def task_body(encoded: bytes) -> bytes:
    """``[args, kwargs, embed]``: the task's one argument is the envelope's JSON
    (``Envelope.encode()``, spliced in as it is)."""
    return b"[[" + encoded + b"],{}," + EMBED + b"]"


def celery_message(envelope: Envelope, queue: str, encoded: bytes | None = None) -> bytes:
    """The JSON Celery's Redis transport puts on ``queue`` for this envelope; pass
    ``encoded`` when the caller has ``envelope.encode()`` already."""
    task_id = str(uuid.uuid4())
    body = task_body(encoded if encoded is not None else envelope.encode())
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task_headers(task_id, envelope),
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                # send_task also copies these two options here; kept for an identical message
                "argsrepr": task_repr(envelope),
                "kwargsrepr": "{}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def routed_message(
    envelope: Envelope, partitions: int, encoded: bytes | None = None
) -> tuple[str, bytes]:
    """The partition queue ``envelope`` belongs on and the message to LPUSH there (the
    back of the queue: workers pop from the right)."""
    queue = queue_name(partition_for(envelope.tenant_id, envelope.user_id, partitions))
    return queue, celery_message(envelope, queue, encoded)


def task_envelope(message: Any) -> dict[str, Any] | None:
    """The envelope JSON a Celery message (decoded) carries as its one argument, or
    None when it is not a Parley task."""
    try:
        args = orjson.loads(base64.b64decode(message["body"]))[0]
        envelope = args[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return envelope if isinstance(envelope, dict) else None


def waiting_since(raw: bytes | None) -> float | None:
    """When the envelope in a queued Celery message reached the ingress (epoch seconds):
    for the oldest message of a queue, how long its partition lags behind."""
    if raw is None:
        return None
    try:
        envelope = task_envelope(orjson.loads(raw))
        return float(envelope["received_at"]) if envelope is not None else None
    except (ValueError, KeyError, TypeError):  # not a Parley task
        return None
