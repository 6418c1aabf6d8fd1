"""The app the pipeline and scaling benchmarks load with
``python -m parley worker --app bench.apps:bench``: four cache operations per webhook."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from parley import WappaBuilder, WappaEventHandler, Webhook


class Order(BaseModel):
    """A conversation's state, shaped like a small order flow's."""

    step: str = "start"
    size: str | None = None
    toppings: list[str] = []
    total: float = 0.0
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class BenchHandler(WappaEventHandler):
    """The pipeline benchmark's handler: four cache operations per webhook."""

    async def handle_message(self, webhook: Webhook) -> None:
        await self.state_cache.get("order", models=Order)
        await self.user_cache.set_field("profile", "last_seen", webhook.message_id)
        await self.user_cache.increment_field("profile", "message_count")
        await self.user_cache.append_to_list("history", "ids", webhook.message_id)


bench = WappaBuilder().with_redis_cache().with_event_handler(BenchHandler()).build()


class WaitingHandler(WappaEventHandler):
    """The concurrency benchmark's handler: a 200 ms wait, as for a Graph API reply or an
    LLM call, between a state read and a profile write."""

    async def handle_message(self, webhook: Webhook) -> None:
        await self.state_cache.get("order", models=Order)
        await asyncio.sleep(0.2)
        await self.user_cache.increment_field("profile", "message_count")


waiting = WappaBuilder().with_redis_cache().with_event_handler(WaitingHandler()).build()


class LagHandler(WappaEventHandler):
    """The timer benchmark's handler: records how late each run started — a message
    after it was queued (its text is the queueing time), a timer after its due time —
    in the user's state (one small document per user, as a real app's)."""

    async def handle_message(self, webhook: Webhook) -> None:
        lag = time.time() - float(webhook.get_message_text())
        await self.state_cache.append_to_list("lag", "messages", lag)

    async def handle_timer(self, webhook: Webhook) -> None:
        assert webhook.timer is not None
        lag = time.time() - webhook.timer.due_at.timestamp()
        await self.state_cache.append_to_list("lag", "timers", lag)


lag = WappaBuilder().with_redis_cache().with_event_handler(LagHandler()).build()
