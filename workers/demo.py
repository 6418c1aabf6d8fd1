"""``parley demo``: the caching spec's pizza flow for three users, printed as a chat.

Runs on the memory caches with no external service, or on Redis with ``--redis``.
"""

from __future__ import annotations

from pydantic import BaseModel

from cache import CacheFactory, create_cache_factory
from cache.redis import close_pools

TENANT = "demo-phone-id"
CONVERSATIONS = {
    "15550001": ["hi", "large", "pepperoni,mushrooms", "yes"],
    "15550002": ["hello", "small", "cheese", "yes"],
    "15550003": ["hey", "medium", "mushrooms", "no"],
}
PRICES = {"small": 8.99, "medium": 12.99, "large": 15.99}


class PizzaOrder(BaseModel):
    step: str = "start"
    size: str | None = None
    toppings: list[str] = []
    total: float = 0.0


async def reply_to(factory: type[CacheFactory], user_id: str, text: str) -> str:
    scoped = factory(tenant_id=TENANT, user_id=user_id)
    state, table = scoped.create_state_cache(), scoped.create_table_cache()
    message = text.strip().lower()
    order = await state.get("pizza_order", models=PizzaOrder) or PizzaOrder()
    if order.step == "start":
        order.step = "size"
        await state.set("pizza_order", order, ttl=1800)
        return "🍕 What size pizza? (small/medium/large)"
    if order.step == "size" and message in PRICES:
        order.size, order.step = message, "toppings"
        await state.set("pizza_order", order, ttl=1800)
        return "🧀 What toppings? (pepperoni/mushrooms/cheese)"
    if order.step == "toppings":
        order.toppings = [t.strip() for t in message.split(",")]
        order.step, order.total = "confirm", PRICES[order.size or "small"]
        await state.set("pizza_order", order, ttl=1800)
        toppings = ", ".join(order.toppings)
        return f"📋 {order.size} pizza with {toppings}: ${order.total:.2f}. Confirm? (yes/no)"
    if order.step == "confirm":
        await state.delete("pizza_order")
        if message == "yes":
            number = await table.increment_field("stats", "orders")
            await table.set("orders", f"{user_id}-{number}", order)
            return f"✅ Order #{number} placed. Thank you!"
        return "❌ Order cancelled."
    return "Sorry, I did not get that."


async def run_demo(redis_url: str | None) -> int:
    backend = "redis" if redis_url else "memory"
    factory = create_cache_factory(backend, **({"redis_url": redis_url} if redis_url else {}))
    print(f"Parley demo on the {backend} caches\n")
    turns = max(len(messages) for messages in CONVERSATIONS.values())
    for turn in range(turns):  # the users' messages interleave, as they would live
        for user_id, messages in CONVERSATIONS.items():
            if turn < len(messages):
                print(f"  {user_id} > {messages[turn]}")
                print(f"  parley   < {await reply_to(factory, user_id, messages[turn])}")
    orders = await factory(tenant_id=TENANT).create_table_cache().get_field("stats", "orders")
    print(f"\n{orders} orders stored in the table cache.")
    await close_pools()
    return 0
