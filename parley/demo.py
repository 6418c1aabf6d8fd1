"""``parley demo``: the whole pipeline in one process, playing ``parley/examples/pizza.py``.

Each user message is a Cloud API delivery, signed with the app secret and POSTed to
the real ingress app (over ASGI, no socket); the ingress dedups, logs and publishes
it through Celery to its partition queue; a real Celery worker (Parley's lane pool, in
a thread) consumes the queues and runs the example's handler through the worker
runtime; the handler's replies go to a fake Graph API (``parley.testing``, a real HTTP server
on loopback) that records them.

With no ``--redis`` nothing external is used: an in-memory broker, memory caches and
an in-memory pipeline store. With ``--redis URL`` the same runs on that Redis
(broker, pipeline, caches), as a deployment would — unless worker nodes are live
there: they would consume the demo's queues, and its replies would never come.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import orjson
import redis

from parley.asgi import create_ingress
from parley.cache.redis import close_pools, redact
from parley.ingress.accept import MemoryAcceptor
from parley.status import live_worker_nodes
from parley.testing import FakeGraphAPI, delivery, sign, text_message
from parley.wire.keys import queue_name
from parley.workers.builder import ParleyApp
from parley.workers.celery import create_celery, publish
from parley.workers.lanes import LanePool
from parley.workers.pipeline import MemoryPipelineStore
from parley.workers.runtime import Runtime
from parley.workers.settings import Settings
from parley.workers.timers import MemoryTimers

TENANT = "15550000000"
SECRET = secrets.token_hex(16)  # a new app secret for each run
TOKEN = "demo-token"
CONVERSATIONS = {
    "15550001": ["hi", "large", "pepperoni,mushrooms", "yes"],
    "15550002": ["hello", "small", "cheese", "yes"],
    "15550003": ["hey", "medium", "mushrooms", "no"],
}
REPLY_WAIT = 30.0


class NoReply(TimeoutError):
    """The worker did not answer a user's message in time."""


def busy_with_nodes(settings: Settings) -> str | None:
    """Why the demo must not run on ``settings``' Redis, or None: live worker nodes
    there would take its webhooks off their queues."""
    client = redis.Redis.from_url(settings.pipeline)
    try:
        nodes = sorted(live_worker_nodes(client))
    finally:
        client.close()
    if not nodes:
        return None
    shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    count = f"{len(nodes)} live worker node{'s' if len(nodes) != 1 else ''}"
    return (
        f"{count} on {redact(settings.pipeline)} ({shown}) would take the demo's "
        "webhooks: stop them, or run the demo on another Redis (or without --redis)"
    )


async def run_demo(redis_url: str | None) -> int:
    from celery.contrib.testing.worker import start_worker

    from parley.examples.pizza import PizzaOrderHandler  # builds its app: not at import

    backend = "redis" if redis_url else "memory"
    with FakeGraphAPI(token=TOKEN) as graph:
        connection: dict[str, Any] = (
            {"redis_url": redis_url} if redis_url else {"broker_url": "memory://localhost/"}
        )
        settings = Settings(
            **connection,
            partitions=4,
            whatsapp_token=TOKEN,
            whatsapp_phone_id=TENANT,
            whatsapp_app_secret=SECRET,
            whatsapp_api_base=graph.url,
        )
        runtime = Runtime(
            ParleyApp(PizzaOrderHandler(), settings, backend),
            node="demo@parley",
            pipeline=None if redis_url else MemoryPipelineStore(),
            timers=None if redis_url else MemoryTimers(),
        )
        celery_app = create_celery(settings, runtime.handle)
        runtime.start_timers(lambda envelope: publish(celery_app, envelope, settings.partitions))
        ingress = create_ingress(
            settings,
            acceptor=None
            if redis_url
            else MemoryAcceptor(lambda e: publish(celery_app, e, settings.partitions)),
        )
        where = f"Redis at {redis_url}" if redis_url else "memory: no external service"
        print(f"Parley demo: parley/examples/pizza.py through the whole pipeline, on {where}")
        print("  ingress (signed POST /webhook) -> Celery -> worker -> fake Graph API\n")
        queues = [queue_name(k) for k in range(settings.partitions)]
        accepted = 0
        with start_worker(
            celery_app,
            pool=LanePool,
            concurrency=settings.concurrency,
            perform_ping_check=False,
            queues=queues,
            loglevel="WARNING",
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
                        body = orjson.dumps(
                            delivery([text_message(user, messages[turn])], phone_id=TENANT)
                        )
                        answer = await client.post(
                            "/webhook", content=body, headers=sign(body, SECRET)
                        )
                        answer.raise_for_status()
                        accepted += answer.json()["accepted"]
                        reply = await _reply(graph, user, turn)
                        print("  parley   < " + reply.replace("\n", "\n             "))
            table = runtime.app.cache_factory(tenant_id=TENANT).create_table_cache()
            orders = await table.get_field("counters", "orders")
            replies = sum(1 for message in graph.sent if message.text is not None)
            print(
                f"\n{accepted} webhooks accepted by the ingress, {replies} replies sent, "
                f"{orders} orders in the table cache. Stopping the worker."
            )
        await asyncio.to_thread(runtime.close)  # waits for its loop's thread
        await close_pools()
    return 0


async def _reply(graph: FakeGraphAPI, user: str, turn: int) -> str:
    """The bot's reply to the user's ``turn``-th message, once the worker sent it."""
    deadline = time.monotonic() + REPLY_WAIT
    while len(texts := graph.texts_to(user)) <= turn:
        if time.monotonic() > deadline:
            raise NoReply(f"no reply to {user}'s message {turn + 1} in {REPLY_WAIT:.0f}s")
        await asyncio.sleep(0.01)
    return texts[turn]
