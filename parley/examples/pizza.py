"""The caching spec's pizza flow, completed: size → toppings → confirm → order stored.
A user who leaves an order unfinished for 10 minutes is reminded once (a timer, moved
by each answer and cancelled when the order ends).

parley worker --app parley.examples.pizza:app
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from parley import WappaBuilder, WappaEventHandler, Webhook

SIZES = ("small", "medium", "large")
TOPPINGS = ("pepperoni", "mushrooms", "cheese")
DEFAULT_PRICES = {"small": 8.99, "medium": 12.99, "large": 15.99}
TOPPING_PRICE = 1.0
#: An unfinished order's reminder comes this long after the user's last answer
REMIND_AFTER = timedelta(minutes=10)
PROMPTS = {
    "size": "🍕 What size pizza? (small/medium/large)",
    "toppings": "🧀 What toppings? (pepperoni/mushrooms/cheese)",
    "confirm": "Confirm? (yes/no)",
}


class PizzaOrder(BaseModel):
    step: str = "start"
    size: str | None = None
    toppings: list[str] = []
    total: float = 0.0
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Order(BaseModel):
    customer_id: str
    size: str
    toppings: list[str]
    total: float
    status: str = "confirmed"


class PizzaOrderHandler(WappaEventHandler):
    async def price_of(self, size: str) -> float:
        """Prices live in the table cache (shared by the tenant); seeded on first use."""
        price = await self.table_cache.get_field("prices", size)
        if price is None:
            await self.table_cache.set("prices", DEFAULT_PRICES)
            price = DEFAULT_PRICES[size]
        return float(price)

    async def handle_message(self, webhook: Webhook) -> None:
        message = webhook.get_message_text().strip().lower()
        user = webhook.user.user_id
        order = await self.state_cache.get("pizza_order", models=PizzaOrder) or PizzaOrder()

        if order.step != "confirm":  # each answer moves the reminder 10 minutes on
            await self.schedule("remind", after=REMIND_AFTER)
        if order.step == "start":
            order.step = "size"
            await self.state_cache.set("pizza_order", order, ttl=1800)
            await self.messenger.send_text(PROMPTS["size"], user)
        elif order.step == "size":
            if message not in SIZES:
                await self.messenger.send_text("Please answer small, medium or large.", user)
                return
            order.size, order.step = message, "toppings"
            await self.state_cache.set("pizza_order", order, ttl=1800)
            await self.messenger.send_text(PROMPTS["toppings"], user)
        elif order.step == "toppings":
            chosen = [t.strip() for t in message.split(",") if t.strip() in TOPPINGS]
            if not chosen:
                await self.messenger.send_text("Pick from pepperoni, mushrooms, cheese.", user)
                return
            order.toppings, order.step = chosen, "confirm"
            assert order.size is not None
            order.total = round(await self.price_of(order.size) + TOPPING_PRICE * len(chosen), 2)
            await self.state_cache.set("pizza_order", order, ttl=1800)
            await self.messenger.send_text(
                f"📋 Order Summary:\nSize: {order.size.title()}\n"
                f"Toppings: {', '.join(order.toppings)}\nTotal: ${order.total:.2f}\n\n"
                + PROMPTS["confirm"],
                user,
            )
        elif order.step == "confirm":
            await self.cancel("remind")
            await self.state_cache.delete("pizza_order")
            if message != "yes":
                await self.messenger.send_text("❌ Order cancelled.", user)
                return
            number = await self.table_cache.increment_field("counters", "orders")
            assert order.size is not None
            await self.table_cache.set(
                "orders",
                f"order_{number}",
                Order(
                    customer_id=user, size=order.size, toppings=order.toppings, total=order.total
                ),
            )
            await self.user_cache.append_to_list("profile", "orders", f"order_{number}")
            await self.messenger.send_text(
                f"✅ Order #{number} confirmed: ${order.total:.2f}", user
            )

    async def handle_timer(self, webhook: Webhook) -> None:
        """The user went quiet mid-order: remind them once, where they left off."""
        order = await self.state_cache.get("pizza_order", models=PizzaOrder)
        if order is None or order.step not in PROMPTS:
            return  # finished (or expired) meanwhile
        await self.messenger.send_text(
            "⏰ Your pizza order is waiting. " + PROMPTS[order.step], webhook.user.user_id
        )


app = WappaBuilder().with_redis_cache().with_event_handler(PizzaOrderHandler()).build()
