"""``parley demo``: the pizza example (``examples/pizza.py``) for three users, as a chat.

Each message is a real Cloud API delivery, split into envelopes and dispatched to the
example's handler exactly as a worker dispatches it (``workers.tasks.dispatch``), on
the memory caches with no external service, or on Redis with ``--redis``. Replies go
to a messenger that prints instead of calling the Graph API.
"""

from __future__ import annotations

import time
from typing import Any

from cache.redis import close_pools
from examples.pizza import app as pizza
from workers.builder import ParleyApp
from workers.tasks import dispatch
from workers.webhook import split_delivery

TENANT = "demo-phone-id"
CONVERSATIONS = {
    "15550001": ["hi", "large", "pepperoni,mushrooms", "yes"],
    "15550002": ["hello", "small", "cheese", "yes"],
    "15550003": ["hey", "medium", "mushrooms", "no"],
}


class PrintingMessenger:
    async def send_text(self, text: str, recipient: str, **_: Any) -> str:
        print("  parley   < " + text.replace("\n", "\n             "))
        return "wamid.demo"


def delivery(user: str, text: str, n: int) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "demo",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000",
                                "phone_number_id": TENANT,
                            },
                            "contacts": [{"profile": {"name": f"User {user[-1]}"}, "wa_id": user}],
                            "messages": [
                                {
                                    "from": user,
                                    "id": f"wamid.demo{n}",
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


async def run_demo(redis_url: str | None) -> int:
    backend = "redis" if redis_url else "memory"
    overrides = {"redis_url": redis_url} if redis_url else {}
    app = ParleyApp(pizza.handler, pizza.settings.model_copy(update=overrides), backend)
    print(f"Parley demo: examples/pizza.py on the {backend} caches\n")
    messenger = PrintingMessenger()
    turns = max(len(messages) for messages in CONVERSATIONS.values())
    n = 0
    for turn in range(turns):  # the users' messages interleave, as they would live
        for user, messages in CONVERSATIONS.items():
            if turn < len(messages):
                n += 1
                print(f"  {user} > {messages[turn]}")
                for envelope in split_delivery(delivery(user, messages[turn], n)):
                    await dispatch(app, envelope, messenger)
    table = app.cache_factory(tenant_id=TENANT).create_table_cache()
    print(f"\n{await table.get_field('counters', 'orders')} orders stored in the table cache.")
    await close_pools()
    return 0
