"""Celery task messages in the exact form Celery's Redis transport puts on a queue.

The ingress and ``parley replay`` push these straight onto partition queues (one
round trip for many envelopes) instead of paying ``apply_async`` per envelope;
workers consume them as ordinary ``parley.handle`` tasks.
"""

from __future__ import annotations

import base64
import socket
import uuid
from typing import Any

import orjson

from workers.tasks import TASK_NAME, celery_app, task_repr
from workers.webhook import Envelope

ORIGIN = f"parley@{socket.gethostname()}"


def _template() -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """Headers, properties and body of a task message, from Celery's own ``as_task_v2``,
    built once: per message only the ids, the args and their repr change."""
    headers, properties, body, _ = celery_app.amqp.as_task_v2(
        "ID",
        TASK_NAME,
        args=[],
        kwargs={},
        argsrepr="",
        kwargsrepr="{}",
        shadow="",
        origin=ORIGIN,
        ignore_result=True,
    )
    return headers, properties, list(body)


_HEADERS, _PROPERTIES, _BODY = _template()


def celery_message(envelope: Envelope, queue: str) -> bytes:
    """The JSON Celery's Redis transport puts on a queue for ``publish(envelope)``."""
    task_id = str(uuid.uuid4())
    _, kwargs, embed = _BODY
    body = orjson.dumps([[envelope.to_json()], kwargs, embed])
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                **_HEADERS,
                "id": task_id,
                "root_id": task_id,
                "argsrepr": task_repr(envelope),
                "shadow": f"parley.{envelope.kind}",
            },
            "properties": {
                **_PROPERTIES,
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def waiting_since(raw: bytes | None) -> float | None:
    """When the envelope in a queued Celery message reached the ingress (epoch seconds):
    for the oldest message of a queue, how long its partition lags behind."""
    if raw is None:
        return None
    try:
        args = orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))[0]
        return float(args[0]["received_at"])
    except (ValueError, KeyError, IndexError, TypeError):  # not a Parley task
        return None
