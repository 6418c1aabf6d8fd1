"""Realistic WhatsApp Cloud API deliveries for tests and benchmarks."""

from __future__ import annotations

import itertools
import time
from typing import Any

from workers.webhook import Envelope, split_delivery

PHONE_ID = "106540352242922"
_ids = itertools.count(1)


def text_message(user: str, text: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "from": user,
        "id": message_id or f"wamid.TEST{next(_ids):012d}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }


def delivery(
    messages: list[dict[str, Any]], phone_id: str = PHONE_ID, names: dict[str, str] | None = None
) -> dict[str, Any]:
    users = list(dict.fromkeys(m["from"] for m in messages))
    names = names or {}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": phone_id,
                            },
                            "contacts": [
                                {"profile": {"name": names.get(u, f"User {u[-4:]}")}, "wa_id": u}
                                for u in users
                            ],
                            "messages": messages,
                        },
                    }
                ],
            }
        ],
    }


def envelope(user: str, text: str, phone_id: str = PHONE_ID) -> Envelope:
    (only,) = split_delivery(delivery([text_message(user, text)], phone_id))
    return only
