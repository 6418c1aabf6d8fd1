"""``parley demo``: the whole pipeline in one process, playing ``examples/pizza.py``.

Each user message is a Cloud API delivery, signed with the app secret and POSTed to
the real ingress app (over ASGI, no socket); the ingress dedups, logs and publishes
it through Celery to its partition queue; a real Celery worker (solo pool, in a
thread) consumes the queues and runs the example's handler through the worker
runtime; the handler's replies go to a fake Graph API that records them.

With no ``--redis`` nothing external is used: an in-memory broker, memory caches and
an in-memory pipeline store. With ``--redis URL`` the same runs on that Redis
(broker, pipeline, caches), as a deployment would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cache.redis import close_pools
from examples.pizza import app as pizza
from workers.builder import ParleyApp
from workers.partition import queue_name
from workers.settings import Settings, set_settings

TENANT = "15550000000"
SECRET = "demo-app-secret"
TOKEN = "demo-token"
CONVERSATIONS = {
    "15550001": ["hi", "large", "pepperoni,mushrooms", "yes"],
    "15550002": ["hello", "small", "cheese", "yes"],
    "15550003": ["hey", "medium", "mushrooms", "no"],
}
REPLY_WAIT = 30.0


class FakeGraph:
    """Meta's messages endpoint, as an ASGI app: records every message sent."""

    def __init__(self) -> None:
        self.sent: dict[str, list[str]] = {}
        self.app = Starlette(
            routes=[Route("/{version}/{phone}/messages", self.send, methods=["POST"])]
        )

    async def send(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": {"message": "bad token", "code": 190}}, 401)
        body = await request.json()
        if body.get("type") == "text":
            self.sent.setdefault(body["to"], []).append(body["text"]["body"])
        return JSONResponse({"messages": [{"id": f"wamid.reply.{uuid.uuid4().hex[:12]}"}]})


def delivery(user: str, text: str) -> dict[str, Any]:
    message = {
        "from": user,
        "id": f"wamid.demo.{uuid.uuid4().hex}",  # new per run: a rerun is not a duplicate
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": TENANT, "phone_number_id": TENANT},
        "contacts": [{"profile": {"name": f"User {user[-1]}"}, "wa_id": user}],
        "messages": [message],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "demo-waba", "changes": [{"field": "messages", "value": value}]}],
    }


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


async def run_demo(redis_url: str | None) -> int:
    from celery.contrib.testing.worker import start_worker

    from ingress.accept import MemoryAcceptor
    from ingress.app import create_app
    from workers.pipeline import MemoryPipelineStore
    from workers.tasks import Runtime, celery_app, configure_celery, set_runtime

    backend = "redis" if redis_url else "memory"
    settings = Settings(
        **({"redis_url": redis_url} if redis_url else {"broker_url": "memory://localhost/"}),
        partitions=4,
        whatsapp_token=TOKEN,
        whatsapp_phone_id=TENANT,
        whatsapp_app_secret=SECRET,
        whatsapp_api_base="http://graph.demo",
    )
    set_settings(settings)
    configure_celery(settings)
    graph = FakeGraph()
    runtime = Runtime(
        ParleyApp(pizza.handler, settings, backend),
        node="demo@parley",
        pipeline=None if redis_url else MemoryPipelineStore(),
        http=httpx.AsyncClient(transport=httpx.ASGITransport(graph.app)),
    )
    set_runtime(runtime)
    ingress = create_app(settings, acceptor=None if redis_url else MemoryAcceptor(settings))
    where = f"Redis at {redis_url}" if redis_url else "memory: no external service"
    print(f"Parley demo: examples/pizza.py through the whole pipeline, on {where}")
    print("  ingress (signed POST /webhook) -> Celery -> worker -> fake Graph API\n")
    queues = [queue_name(k) for k in range(settings.partitions)]
    accepted = 0
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, queues=queues, loglevel="WARNING"
    ):
        async with (
            ingress.router.lifespan_context(ingress),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(ingress), base_url="http://ingress"
            ) as client,
        ):
            turns = max(len(messages) for messages in CONVERSATIONS.values())
            for turn in range(turns):  # the users take turns, as they would live
                for user, messages in CONVERSATIONS.items():
                    if turn >= len(messages):
                        continue
                    print(f"  {user} > {messages[turn]}")
                    body = orjson.dumps(delivery(user, messages[turn]))
                    answer = await client.post("/webhook", content=body, headers=signed(body))
                    answer.raise_for_status()
                    accepted += answer.json()["accepted"]
                    reply = await _reply(graph, user, turn)
                    print("  parley   < " + reply.replace("\n", "\n             "))
        table = runtime.app.cache_factory(tenant_id=TENANT).create_table_cache()
        orders = await table.get_field("counters", "orders")
        replies = sum(len(texts) for texts in graph.sent.values())
        print(
            f"\n{accepted} webhooks accepted by the ingress, {replies} replies sent, "
            f"{orders} orders in the table cache. Stopping the worker."
        )
    await asyncio.to_thread(runtime.close)  # its loop is the worker thread's
    await close_pools()
    return 0


async def _reply(graph: FakeGraph, user: str, turn: int) -> str:
    """The bot's reply to the user's ``turn``-th message, once the worker sent it."""
    deadline = time.monotonic() + REPLY_WAIT
    while len(graph.sent.get(user, [])) <= turn:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {user}'s message {turn + 1} in {REPLY_WAIT}s")
        await asyncio.sleep(0.01)
    return graph.sent[user][turn]
