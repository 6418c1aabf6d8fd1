"""The caching spec's profile and preference handlers.

parley worker --app examples.profile:app
"""

from __future__ import annotations

from datetime import UTC, datetime

from parley import WappaBuilder, WappaEventHandler, Webhook

GREETINGS = {
    "en": "Language updated to English! 🇺🇸",
    "es": "¡Idioma cambiado a Español! 🇪🇸",
    "fr": "Langue changée en Français! 🇫🇷",
}


class ProfileHandler(WappaEventHandler):
    async def handle_message(self, webhook: Webhook) -> None:
        text = webhook.get_message_text().strip()
        now = datetime.now(UTC).isoformat()
        if not await self.user_cache.exists("profile"):
            await self.user_cache.set(
                "profile",
                {
                    "name": webhook.user.user_name,
                    "phone": webhook.user.user_id,
                    "message_count": 0,
                    "language": "en",
                    "subscription": "free",
                },
                ttl=86400,
            )
        count = await self.user_cache.increment_field("profile", "message_count", 1)
        await self.user_cache.set_field("profile", "last_seen", now, ttl=86400)
        await self.user_cache.append_to_list(
            "profile", "recent_messages", {"id": webhook.message_id, "timestamp": now}, ttl=604800
        )
        if text.lower().startswith("lang "):
            language = text.split()[1].lower()
            await self.user_cache.set_field("profile", "language", language)
            reply = GREETINGS.get(language, GREETINGS["en"])
        else:
            profile = await self.user_cache.get("profile") or {}
            hello = "¡Hola!" if profile.get("language") == "es" else "Hello!"
            reply = f"{hello} {profile.get('name') or 'there'}, that is message #{count}."
        await self.messenger.send_text(reply, webhook.user.user_id)


app = WappaBuilder().with_redis_cache().with_event_handler(ProfileHandler()).build()
