# myapp.py
from parley import WappaBuilder, WappaEventHandler


class Echo(WappaEventHandler):
    async def handle_message(self, webhook):
        count = await self.user_cache.increment_field("profile", "message_count")
        await self.messenger.send_text(
            f"#{count}: {webhook.get_message_text()}", webhook.user.user_id
        )


app = (
    WappaBuilder()
    .with_redis_cache()  # PARLEY_REDIS_URL; WHATSAPP_* from the environment or .env
    .with_event_handler(Echo())
    .build()
)
