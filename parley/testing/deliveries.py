"""Realistic WhatsApp Cloud API deliveries, signed as Meta signs them: for the demo,
the tests and the benchmarks."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
import uuid
from typing import Any

from parley.wire.envelope import Envelope
from parley.workers.webhook import split_delivery

PHONE_ID = "106540352242922"
#: Message ids differ between processes and runs, so a rerun against the same Redis
#: is never taken for Meta's redelivery of an earlier one
_RUN = uuid.uuid4().hex[:8].upper()
_ids = itertools.count(1)


def text_message(user: str, text: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "from": user,
        "id": message_id or f"wamid.TEST{_RUN}{next(_ids):08d}",
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


def sign(body: bytes, secret: str) -> dict[str, str]:
    """The headers of a delivery Meta signed with the app secret."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
