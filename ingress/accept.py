"""Turning envelopes into Celery messages and accepting them in one Redis round trip.

The ingress does not call ``apply_async`` per envelope (a publish costs ~1.5 ms):
it builds the very message Celery's Redis transport would (headers and properties
from Celery's own ``as_task_v2``) and a Lua script dedups, appends to the replay log
and LPUSHes onto the partition queue — where workers consume it as an ordinary task.
That needs the broker and the pipeline in the same Redis DB (the default); otherwise
the ingress logs and dedups with a script, then publishes through Celery, and undoes
the marks if publishing fails.
"""

from __future__ import annotations

import base64
import socket
import uuid
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from cache.keys import escape_id
from cache.redis import evalsha
from workers.partition import partition_for, queue_name
from workers.settings import Settings
from workers.tasks import TASK_NAME, celery_app, publish, task_repr
from workers.webhook import Envelope

REPLAY_LOG = "parley:log"
ACCEPT = (resources.files("ingress") / "scripts" / "accept.lua").read_text()
ORIGIN = f"parley-ingress@{socket.gethostname()}"


def seen_key(envelope: Envelope) -> str:
    return (
        f"parley:seen:{escape_id(envelope.tenant_id, 'tenant_id')}:"
        f"{escape_id(envelope.event_id, 'event_id')}"
    )


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


class Acceptor:
    def __init__(self, client: Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.one_round_trip = settings.broker == settings.pipeline
        self._accept = client.register_script(ACCEPT)

    async def accept(self, envelopes: list[Envelope]) -> list[str | None]:
        """Per envelope its replay-log id, or None for a duplicate. Raises on backend
        failure, having marked nothing as seen."""
        if not envelopes:
            return []
        keys: list[str] = [REPLAY_LOG]
        args: list[Any] = [self.settings.dedup_ttl]
        for envelope in envelopes:
            partition = partition_for(
                envelope.tenant_id, envelope.user_id, self.settings.partitions
            )
            queue = queue_name(partition)
            keys += [seen_key(envelope), queue]
            args += [
                orjson.dumps(envelope.to_json()),
                celery_message(envelope, queue) if self.one_round_trip else b"",
                partition,
                f"{envelope.tenant_id}|{envelope.user_id}|{envelope.kind}",
            ]
        if self.one_round_trip:
            ids = await evalsha(self.client, self._accept, keys, args)
            return [i.decode() if i else None for i in ids]
        return await self._accept_then_publish(envelopes, keys, args)

    async def _accept_then_publish(
        self, envelopes: list[Envelope], keys: list[str], args: list[Any]
    ) -> list[str | None]:
        ids = [
            i.decode() if i else None for i in await evalsha(self.client, self._accept, keys, args)
        ]
        try:
            for envelope, log_id in zip(envelopes, ids, strict=True):
                if log_id:
                    publish(envelope, self.settings)
        except Exception:
            async with self.client.pipeline(transaction=True) as pipe:
                for envelope, log_id in zip(envelopes, ids, strict=True):
                    if log_id:
                        pipe.delete(seen_key(envelope))
                        pipe.xdel(REPLAY_LOG, log_id)
                await pipe.execute()
            raise
        return ids
