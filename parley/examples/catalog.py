"""Catalog browsing from the table cache (the spec's ProductCatalogHandler).

parley worker --app examples.catalog:app
"""

from __future__ import annotations

from parley import WappaBuilder, WappaEventHandler, Webhook

PRODUCTS = [
    {"id": "pizza_small", "name": "Small Pizza", "price": 8.99, "category": "pizza"},
    {"id": "pizza_large", "name": "Large Pizza", "price": 15.99, "category": "pizza"},
    {"id": "coke_can", "name": "Coke Can", "price": 1.99, "category": "drinks"},
]


class ProductCatalogHandler(WappaEventHandler):
    async def setup_catalog(self) -> None:
        for product in PRODUCTS:
            await self.table_cache.set("products", product["id"], product, ttl=86400)
        await self.table_cache.set("catalog", {"ids": [p["id"] for p in PRODUCTS]}, ttl=86400)

    async def handle_message(self, webhook: Webhook) -> None:
        catalog = await self.table_cache.get("catalog")
        if catalog is None:
            await self.setup_catalog()
            catalog = await self.table_cache.get("catalog") or {"ids": []}
        wanted = webhook.get_message_text().strip().lower()
        lines = ["🛒 Menu:"]
        for product_id in catalog["ids"]:
            product = await self.table_cache.get("products", product_id)
            if product and wanted in ("menu", "", product["category"]):
                lines.append(f"• {product['name']}: ${product['price']}")
        await self.messenger.send_text("\n".join(lines), webhook.user.user_id)


app = WappaBuilder().with_redis_cache().with_event_handler(ProductCatalogHandler()).build()
