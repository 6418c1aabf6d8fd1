"""The caching spec's snippets, with only their imports mapped (DESIGN.md), on every backend.

The snippets' handlers subclass ``WappaEventHandler`` (via ``SpecHandler``, which injects
what the worker injects: the three caches scoped to the webhook's tenant and user, a
messenger and a logger), so they run here on all three backends in-process; the worker
tests run the same kind of handler through real Celery workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

import pytest
from pydantic import BaseModel, Field, ValidationError

from parley import WappaEventHandler
from parley.cache import CacheFactory, ICache, KeyFactory, create_cache_factory

TENANT, USER = "hotel123", "1234567890"


@dataclass
class User:
    user_id: str = USER
    user_name: str = "Sarah"


@dataclass
class Webhook:
    text: str = ""
    user: User = field(default_factory=User)

    def get_message_text(self) -> str:
        return self.text


class Messenger:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_text(self, text: str, recipient: str) -> str:
        self.sent.append((recipient, text))
        return "wamid.test"


class SpecHandler(WappaEventHandler):
    def __init__(self, factory: type[CacheFactory]) -> None:
        scoped = factory(tenant_id=TENANT, user_id=USER)
        self.state_cache = scoped.create_state_cache()
        self.user_cache = scoped.create_user_cache()
        self.table_cache = scoped.create_table_cache()
        self.messenger = Messenger()  # type: ignore[assignment]
        self.logger = logging.getLogger("spec")


# ---- "How Caching Works in Wappa" -------------------------------------------------------


class UserProfile(BaseModel):
    name: str
    language: str = "en"
    subscription: str = "free"


class Product(BaseModel):
    name: str
    price: float
    available: bool = True


class MyApp(SpecHandler):
    async def handle_message(self, webhook):  # type: ignore[no-untyped-def]
        await self.state_cache.set("pizza_order", {"step": "size", "toppings": []})
        user = UserProfile(name="John", language="en")
        await self.user_cache.set("profile", user)
        product = Product(name="Large Pizza", price=15.99)
        await self.table_cache.set("products", "pizza_large", product)


async def test_how_caching_works(factory: type[CacheFactory]) -> None:
    app = MyApp(factory)
    await app.handle_message(Webhook())
    assert await app.state_cache.get("pizza_order") == {"step": "size", "toppings": []}
    assert await app.user_cache.get("profile", models=UserProfile) == UserProfile(name="John")
    assert (await app.table_cache.get("products", "pizza_large", models=Product)).price == 15.99


# ---- State cache deep dive ----------------------------------------------------------------


class PizzaOrder(BaseModel):
    step: str = "start"
    size: str | None = None
    toppings: list[str] = []
    total: float = 0.0
    created_at: datetime = datetime.now()


async def test_state_cache_deep_dive(factory: type[CacheFactory]) -> None:
    self, webhook = SpecHandler(factory), Webhook()
    order = PizzaOrder(step="toppings", size="large", toppings=["pepperoni", "mushrooms"], total=15.99)
    await self.state_cache.set("pizza_order", order)
    await self.state_cache.set("pizza_order", {
        "step": "toppings",
        "size": "large",
        "toppings": ["pepperoni", "mushrooms"],
        "total": 15.99,
    })
    order_state = await self.state_cache.get("pizza_order", models=PizzaOrder)
    if order_state and order_state.step == "toppings":
        await self.messenger.send_text("Add more toppings or type 'done'", webhook.user.user_id)
    order_dict = await self.state_cache.get("pizza_order")
    if order_dict and order_dict["step"] == "toppings":
        await self.messenger.send_text("Add more toppings or type 'done'", webhook.user.user_id)
    await self.state_cache.set("support_ticket", {
        "ticket_id": "T123",
        "category": "billing",
        "status": "open",
        "agent_assigned": None
    })
    assert self.messenger.sent == [(USER, "Add more toppings or type 'done'")] * 2
    assert await self.state_cache.get_field("support_ticket", "agent_assigned") is None
    assert order_dict["total"] == 15.99 and "created_at" not in order_dict  # set replaced it


# ---- User cache ---------------------------------------------------------------------------


class FullUserProfile(BaseModel):
    name: str
    language: str = "en"
    phone: str
    subscription: str = "free"
    preferences: dict = {"notifications": True, "marketing": False}
    message_count: int = 0
    last_seen: datetime = datetime.now()


async def test_user_cache_deep_dive(factory: type[CacheFactory]) -> None:
    self, webhook = SpecHandler(factory), Webhook()
    UserProfile = FullUserProfile
    user = UserProfile(
        name="Sarah Johnson",
        language="es",
        phone="1234567890",
        subscription="premium",
        message_count=1
    )
    await self.user_cache.set("profile", user)
    user_dict = {
        "name": "Sarah Johnson",
        "language": "es",
        "phone": "1234567890",
        "subscription": "premium",
        "preferences": {"notifications": True, "marketing": False},
        "message_count": 1
    }
    await self.user_cache.set("profile", user_dict)
    user = await self.user_cache.get("profile", models=UserProfile)
    if user:
        welcome_lang = "¡Hola!" if user.language == "es" else "Hello!"
        await self.messenger.send_text(f"{welcome_lang} {user.name}!", webhook.user.user_id)
    user_dict = await self.user_cache.get("profile")
    if user_dict:
        welcome_lang = "¡Hola!" if user_dict["language"] == "es" else "Hello!"
        await self.messenger.send_text(f"{welcome_lang} {user_dict['name']}!", webhook.user.user_id)
    assert self.messenger.sent == [(USER, "¡Hola! Sarah Johnson!")] * 2


# ---- Table cache --------------------------------------------------------------------------


class CatalogProduct(BaseModel):
    name: str
    price: float
    category: str
    available: bool = True
    toppings: list[str] = []


class Order(BaseModel):
    customer_id: str
    items: list[dict]
    total: float
    status: str = "pending"
    estimated_time: str | None = None


async def test_table_cache_deep_dive(factory: type[CacheFactory]) -> None:
    self, webhook = SpecHandler(factory), Webhook()
    Product = CatalogProduct
    product = Product(
        name="Large Pizza",
        price=15.99,
        category="pizza",
        available=True,
        toppings=["cheese", "pepperoni", "mushrooms"]
    )
    await self.table_cache.set("products", "pizza_large", product)
    await self.table_cache.set("products", "pizza_large", {
        "name": "Large Pizza",
        "price": 15.99,
        "category": "pizza",
        "available": True,
        "toppings": ["cheese", "pepperoni", "mushrooms"]
    })
    order = Order(
        customer_id="1234567890",
        items=[{"product": "pizza_large", "quantity": 2}],
        total=31.98,
        status="preparing",
        estimated_time="25 minutes"
    )
    await self.table_cache.set("orders", "order_12345", order)
    product = await self.table_cache.get("products", "pizza_large", models=Product)
    if product and product.available:
        await self.messenger.send_text(f"🍕 {product.name}: ${product.price}", webhook.user.user_id)
    product_dict = await self.table_cache.get("products", "pizza_large")
    if product_dict and product_dict["available"]:
        await self.messenger.send_text(
            f"🍕 {product_dict['name']}: ${product_dict['price']}", webhook.user.user_id
        )
    assert self.messenger.sent == [(USER, "🍕 Large Pizza: $15.99")] * 2
    assert await self.table_cache.get("orders", "order_12345", models=Order) == order


# ---- Pydantic BaseModel support -------------------------------------------------------------


class ValidatedProfile(BaseModel):
    name: str
    phone: str = Field(..., pattern=r"^\d{10,15}$")
    language: str = "en"
    message_count: int = Field(default=0, ge=0)
    last_seen: datetime = Field(default_factory=datetime.now)
    preferences: dict = {"notifications": True}


class ConversationState(BaseModel):
    current_step: str = "start"
    context: dict = {}
    started_at: datetime = Field(default_factory=datetime.now)


class ChatFlow(BaseModel):
    step: str
    data: dict = {}


class Customer(BaseModel):
    name: str
    email: str | None = None
    tier: str = "basic"


class MenuItem(BaseModel):
    name: str
    price: float
    category: str
    ingredients: list[str] = []


class UserStats(BaseModel):
    message_count: int = 0
    login_count: int = 0
    points: int = 0


async def test_pydantic_support(factory: type[CacheFactory]) -> None:
    self = SpecHandler(factory)
    UserProfile = ValidatedProfile
    user = UserProfile(name="John", phone="1234567890")
    user.message_count += 1
    user.last_seen = datetime.now()
    with pytest.raises(ValidationError):
        UserProfile(name="", phone="invalid")

    state = ConversationState(current_step="ordering", context={"flow": "pizza"})
    await self.state_cache.set("conversation", state, ttl=1800)
    state = await self.state_cache.get("conversation", models=ConversationState)
    assert state and state.current_step == "ordering"
    assert (datetime.now() - state.started_at).total_seconds() >= 0
    state_dict = await self.state_cache.get("conversation")
    assert state_dict["current_step"] == "ordering"
    assert 1799 <= await self.state_cache.get_ttl("conversation") <= 1800

    flow = ChatFlow(step="greeting", data={"language": "en"})
    await self.state_cache.set("chat_flow", flow)
    assert await self.state_cache.get("chat_flow", models=ChatFlow) == flow
    customer = Customer(name="Alice", email="alice@example.com", tier="premium")
    await self.user_cache.set("profile", customer)
    assert await self.user_cache.get("profile", models=Customer) == customer
    menu_item = MenuItem(
        name="Margherita Pizza", price=12.99, category="pizza", ingredients=["tomato", "mozzarella"]
    )
    await self.table_cache.set("menu", "margherita", menu_item)
    assert await self.table_cache.get("menu", "margherita", models=MenuItem) == menu_item

    await self.user_cache.set_field("stats", "message_count", 5)
    await self.user_cache.set_field("stats", "points", 100)
    new_count = await self.user_cache.increment_field("stats", "message_count", 1)
    new_points = await self.user_cache.increment_field("stats", "points", 10)
    stats = await self.user_cache.get("stats", models=UserStats)
    assert (new_count, new_points) == (6, 110)
    assert stats and stats.message_count + stats.login_count == 6
    assert await self.user_cache.get("profile", models=Customer) == customer  # untouched


# ---- Complete API reference, advanced operations, helpers ----------------------------------


async def test_advanced_operations_and_helpers(factory: type[CacheFactory]) -> None:
    self = SpecHandler(factory)
    await self.user_cache.set_field("profile", "last_seen", "2025-01-15T10:30:00Z")
    last_seen = await self.user_cache.get_field("profile", "last_seen")
    assert last_seen == "2025-01-15T10:30:00Z"
    new_count = await self.user_cache.increment_field("stats", "message_count", 1)
    await self.user_cache.increment_field("stats", "login_count", 1, ttl=3600)
    assert new_count == 1 and 3599 <= await self.user_cache.get_ttl("stats") <= 3600
    await self.state_cache.append_to_list("order", "items", "pizza_large", ttl=1800)
    await self.state_cache.append_to_list("order", "items", "coke_medium")
    assert await self.state_cache.get_field("order", "items") == ["pizza_large", "coke_medium"]
    await self.state_cache.set("pizza_order", {"step": "size"}, ttl=120)
    remaining_time = await self.state_cache.get_ttl("pizza_order")
    if remaining_time < 300:
        await self.state_cache.set_ttl("pizza_order", 1800)
    assert 1799 <= await self.state_cache.get_ttl("pizza_order") <= 1800

    table_key = ICache.create_table_key("products", "pizza_large")
    assert table_key == "products:pizza_large"
    product_data = {"name": "Large Pizza", "price": 15.99}
    await self.table_cache.set(table_key, product_data)
    assert await self.table_cache.get("products", "pizza_large") == product_data
    await self.table_cache.set_field("products", "pizza_large", "available", False)
    assert await self.table_cache.get_field(table_key, "available") is False


async def test_factory_system(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for backend in ("redis", "json", "memory"):
        factory_class = create_cache_factory(
            backend, redis_url=redis_url, json_cache_dir=tmp_path / "cache"
        )
        cache_factory = factory_class(tenant_id="hotel123", user_id="1234567890")
        state_cache = cache_factory.create_state_cache()
        user_cache = cache_factory.create_user_cache()
        table_cache = cache_factory.create_table_cache()
        await state_cache.set("pizza_order", {"step": backend})
        await user_cache.set("profile", {"b": backend})
        await table_cache.set("products", "pizza_large", {"b": backend})
        assert await state_cache.get("pizza_order") == {"step": backend}
    from parley.cache.json_files import JSONCacheFactory
    from parley.cache.memory import MemoryCacheFactory
    from parley.cache.redis import RedisCacheFactory, close_pools

    for cls in (RedisCacheFactory, JSONCacheFactory, MemoryCacheFactory):
        assert issubclass(create_cache_factory(cls.backend), cls)
        cls(tenant_id="hotel123", user_id="1234567890").create_table_cache()
    key_factory = KeyFactory(
        user_prefix="user", handler_prefix="state", table_prefix="df", pk_marker="pkid"
    )
    assert key_factory.user("hotel123", "1234567890") == "hotel123:user:1234567890"
    await close_pools()


# ---- Practical examples ---------------------------------------------------------------------


class PizzaOrderHandler(SpecHandler):
    async def handle_message(self, webhook):  # type: ignore[no-untyped-def]
        message = webhook.get_message_text().lower()
        order = await self.state_cache.get("pizza_order", models=PizzaOrder)
        if not order:
            order = PizzaOrder()
        if order.step == "start":
            order.step = "size"
            await self.state_cache.set("pizza_order", order, ttl=1800)
            await self.messenger.send_text("🍕 What size pizza? (small/medium/large)", webhook.user.user_id)
        elif order.step == "size" and message in ["small", "medium", "large"]:
            order.size = message
            order.step = "toppings"
            await self.state_cache.set("pizza_order", order, ttl=1800)
            await self.messenger.send_text("🧀 What toppings? (pepperoni/mushrooms/cheese)", webhook.user.user_id)
        elif order.step == "toppings":
            order.toppings = message.split(",")
            order.step = "confirm"
            size_prices = {"small": 8.99, "medium": 12.99, "large": 15.99}
            order.total = size_prices[order.size]
            await self.state_cache.set("pizza_order", order, ttl=1800)
            await self.messenger.send_text(
                f"📋 Order Summary:\n"
                f"Size: {order.size.title()}\n"
                f"Toppings: {', '.join(order.toppings)}\n"
                f"Total: ${order.total:.2f}\n\n"
                f"Confirm? (yes/no)",
                webhook.user.user_id
            )


async def test_pizza_ordering_flow(factory: type[CacheFactory]) -> None:
    handler = PizzaOrderHandler(factory)
    for text in ("hi", "large", "pepperoni,mushrooms"):
        await handler.handle_message(Webhook(text))
    assert [text for _, text in handler.messenger.sent] == [
        "🍕 What size pizza? (small/medium/large)",
        "🧀 What toppings? (pepperoni/mushrooms/cheese)",
        "📋 Order Summary:\nSize: Large\nToppings: pepperoni, mushrooms\nTotal: $15.99\n\n"
        "Confirm? (yes/no)",
    ]
    order = await handler.state_cache.get("pizza_order", models=PizzaOrder)
    assert order.step == "confirm" and order.toppings == ["pepperoni", "mushrooms"]


class UserProfileHandler(SpecHandler):
    async def handle_message(self, webhook):  # type: ignore[no-untyped-def]
        user = await self.user_cache.get("profile") or {
            "name": webhook.user.user_name,
            "phone": webhook.user.user_id,
            "message_count": 0,
            "language": "en",
            "subscription": "free"
        }
        new_count = await self.user_cache.increment_field("profile", "message_count", 1)
        await self.user_cache.set_field("profile", "last_seen", "2025-01-15T10:30:00Z", ttl=86400)
        await self.user_cache.set("profile", user, ttl=86400)
        await self.user_cache.append_to_list("profile", "recent_messages", {
            "text": webhook.get_message_text(),
            "timestamp": "2025-01-15T10:30:00Z"
        }, ttl=604800)
        return new_count


async def test_user_profile_management(factory: type[CacheFactory]) -> None:
    handler = UserProfileHandler(factory)
    assert await handler.handle_message(Webhook("hello")) == 1
    profile = await handler.user_cache.get("profile")
    assert profile == {
        "name": "Sarah", "phone": USER, "message_count": 0, "language": "en",
        "subscription": "free", "recent_messages": [
            {"text": "hello", "timestamp": "2025-01-15T10:30:00Z"}
        ],
    }
    assert 604799 <= await handler.user_cache.get_ttl("profile") <= 604800


class ProductCatalogHandler(SpecHandler):
    async def setup_catalog(self):  # type: ignore[no-untyped-def]
        products = [
            {"id": "pizza_small", "name": "Small Pizza", "price": 8.99, "category": "pizza"},
            {"id": "pizza_large", "name": "Large Pizza", "price": 15.99, "category": "pizza"},
            {"id": "coke_can", "name": "Coke Can", "price": 1.99, "category": "drinks"}
        ]
        for product in products:
            await self.table_cache.set("products", product["id"], product, ttl=86400)

    async def handle_browse_products(self, webhook):  # type: ignore[no-untyped-def]
        pizza_small = await self.table_cache.get("products", "pizza_small")
        pizza_large = await self.table_cache.get("products", "pizza_large")
        coke = await self.table_cache.get("products", "coke_can")
        catalog_text = "🛒 **Menu**:\n"
        for product in [pizza_small, pizza_large, coke]:
            if product:
                catalog_text += f"• {product['name']}: ${product['price']}\n"
        await self.messenger.send_text(catalog_text, webhook.user.user_id)


async def test_product_catalog(factory: type[CacheFactory]) -> None:
    handler = ProductCatalogHandler(factory)
    await handler.setup_catalog()
    await handler.handle_browse_products(Webhook())
    assert handler.messenger.sent == [(USER, (
        "🛒 **Menu**:\n• Small Pizza: $8.99\n• Large Pizza: $15.99\n• Coke Can: $1.99\n"
    ))]


class SafeHandler(SpecHandler):
    async def safe_cache_operation(self, webhook):  # type: ignore[no-untyped-def]
        try:
            success = await self.state_cache.set("conversation", {"step": "greeting"})
            if not success:
                self.logger.error("Failed to save conversation state")
            user_data = await self.user_cache.get("profile")
            if not user_data:
                user_data = {"name": "Guest", "language": "en"}
                await self.user_cache.set("profile", user_data)
        except Exception as e:
            self.logger.error(f"Cache operation failed: {e}")
            await self.messenger.send_text("Service temporarily unavailable", webhook.user.user_id)


async def test_error_handling_snippet(factory: type[CacheFactory]) -> None:
    handler = SafeHandler(factory)
    await handler.safe_cache_operation(Webhook())
    assert await handler.user_cache.get("profile") == {"name": "Guest", "language": "en"}
    assert handler.messenger.sent == []


async def test_error_handling_snippet_sees_backend_failure() -> None:
    from parley.testing import free_port

    handler = SafeHandler(create_cache_factory("redis", redis_url=f"redis://127.0.0.1:{free_port()}"))
    await handler.safe_cache_operation(Webhook())  # the spec's except branch runs
    assert handler.messenger.sent == [(USER, "Service temporarily unavailable")]


class ConversationHandler(SpecHandler):
    async def handle_message(self, webhook):  # type: ignore[no-untyped-def]
        state = await self.state_cache.get("conversation") or {"step": "start", "context": {}}
        message = webhook.get_message_text().lower()
        if state["step"] == "start":
            if "order" in message:
                await self._start_order_flow(webhook, state)

    async def _start_order_flow(self, webhook, state):  # type: ignore[no-untyped-def]
        state.update({"step": "ordering", "context": {"type": "order"}})
        await self.state_cache.set("conversation", state, ttl=1800)
        await self.messenger.send_text("🍕 Let's start your order! What would you like?", webhook.user.user_id)


class UserPreferenceHandler(SpecHandler):
    async def handle_language_change(self, webhook, language):  # type: ignore[no-untyped-def]
        await self.user_cache.set_field("profile", "language", language)
        responses = {
            "en": "Language updated to English! 🇺🇸",
            "es": "¡Idioma cambiado a Español! 🇪🇸",
            "fr": "Langue changée en Français! 🇫🇷"
        }
        response = responses.get(language, responses["en"])
        await self.messenger.send_text(response, webhook.user.user_id)


class AnalyticsHandler(SpecHandler):
    async def track_message_stats(self, webhook):  # type: ignore[no-untyped-def]
        today = datetime.now().strftime("%Y-%m-%d")
        await self.table_cache.increment_field("stats", f"messages_{today}", 1, ttl=86400)
        message = webhook.get_message_text()
        if message.startswith("/"):
            command = message.split()[0]
            await self.table_cache.increment_field("stats", f"command_{command}", 1, ttl=604800)
        user_key = f"active_users_{today}"
        await self.table_cache.append_to_list("stats", user_key, webhook.user.user_id, ttl=86400)


class StoppedClock(datetime):
    """The snippets' ``datetime`` in ``test_common_patterns``: ``now()`` stays at ``at``,
    so their dates and the test's are one date, even on a run across midnight."""

    at: datetime

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return cls.at if tz is None else cls.at.astimezone(tz)


async def test_common_patterns(
    factory: type[CacheFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now()
    today = now.strftime("%Y-%m-%d")  # computed once, and the snippets' clock stays on it
    monkeypatch.setattr(StoppedClock, "at", now, raising=False)
    monkeypatch.setitem(globals(), "datetime", StoppedClock)
    conversation = ConversationHandler(factory)
    await conversation.handle_message(Webhook("I want to order"))
    assert await conversation.state_cache.get("conversation") == {
        "step": "ordering", "context": {"type": "order"},
    }
    preferences = UserPreferenceHandler(factory)
    await preferences.handle_language_change(Webhook(), "es")
    assert await preferences.user_cache.get_field("profile", "language") == "es"
    analytics = AnalyticsHandler(factory)
    await analytics.track_message_stats(Webhook("/menu please"))
    await analytics.track_message_stats(Webhook("hi"))
    assert await analytics.table_cache.get("stats") == {
        f"messages_{today}": 2, "command_/menu": 1, f"active_users_{today}": [USER, USER],
    }
