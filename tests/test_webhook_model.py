"""Parsing Meta's webhook payloads: the split into envelopes and what handlers see."""

from __future__ import annotations

from typing import Any

import pytest

from parley.testing import PHONE_ID, delivery, text_message
from parley.wire.envelope import Envelope, mask_user_id
from parley.workers.webhook import InvalidWebhook, Webhook, split_delivery

USER = "16315551181"


def one(message: dict[str, Any]) -> Webhook:
    message = {"from": USER, "id": "wamid.ID", "timestamp": "1700000000", **message}
    (env,) = split_delivery(delivery([message], names={USER: "Kerry Fisher"}))
    return Webhook.from_envelope(Envelope.from_json(env.to_json()))


def test_text() -> None:
    webhook = one({"type": "text", "text": {"body": "Hello pizza"}})
    assert webhook.get_message_text() == "Hello pizza"
    assert webhook.user.user_id == USER and webhook.user.user_name == "Kerry Fisher"
    assert webhook.tenant_id == PHONE_ID and webhook.message_id == "wamid.ID"
    assert webhook.message_type == "text" and webhook.kind == "message"
    assert webhook.timestamp.isoformat() == "2023-11-14T22:13:20+00:00"
    assert webhook.is_replay is False and webhook.raw["messages"][0]["text"]["body"]


def test_interactive_and_button_replies() -> None:
    button = one(
        {
            "type": "interactive",
            "interactive": {
                "type": "button_reply",
                "button_reply": {"id": "size_large", "title": "Large"},
            },
        }
    )
    assert (button.get_message_text(), button.interactive_reply_id) == ("Large", "size_large")
    listed = one(
        {
            "type": "interactive",
            "interactive": {
                "type": "list_reply",
                "list_reply": {"id": "p1", "title": "Pepperoni", "description": "x"},
            },
        }
    )
    assert (listed.get_message_text(), listed.interactive_reply_id) == ("Pepperoni", "p1")
    quick = one({"type": "button", "button": {"text": "Yes", "payload": "confirm"}})
    assert (quick.get_message_text(), quick.interactive_reply_id) == ("Yes", "confirm")


@pytest.mark.parametrize("kind", ["image", "audio", "video", "document", "sticker"])
def test_media(kind: str) -> None:
    media = {"id": "1234", "mime_type": "image/jpeg", "sha256": "abc"}
    if kind in ("image", "video", "document"):
        media["caption"] = "look"
    if kind == "document":
        media["filename"] = "menu.pdf"
    webhook = one({"type": kind, kind: media})
    assert webhook.message_type == kind
    assert webhook.media is not None and webhook.media.id == "1234"
    assert webhook.media.mime_type == "image/jpeg"
    assert webhook.get_message_text() == media.get("caption", "")


def test_location_contacts_reaction_unsupported() -> None:
    location = one(
        {
            "type": "location",
            "location": {
                "latitude": -12.04,
                "longitude": -77.03,
                "name": "Plaza",
                "address": "Lima",
            },
        }
    )
    assert location.location and location.location.latitude == -12.04
    assert location.get_message_text() == ""
    contacts = one({"type": "contacts", "contacts": [{"name": {"formatted_name": "Ana"}}]})
    assert contacts.contacts[0]["name"]["formatted_name"] == "Ana"
    reaction = one({"type": "reaction", "reaction": {"message_id": "wamid.OLD", "emoji": "👍"}})
    assert reaction.reaction and reaction.reaction.emoji == "👍"
    odd = one({"type": "ephemeral", "errors": [{"code": 131051, "title": "Unsupported"}]})
    assert odd.message_type == "unsupported" and odd.errors[0].code == 131051
    assert odd.get_message_text() == ""


def test_statuses_and_errors() -> None:
    body = delivery([])
    value = body["entry"][0]["changes"][0]["value"]
    del value["messages"]
    value["statuses"] = [
        {
            "id": "wamid.A",
            "status": "delivered",
            "timestamp": "1700000000",
            "recipient_id": USER,
            "conversation": {"id": "c1"},
            "pricing": {"billable": True},
        },
        {"id": "wamid.A", "status": "read", "timestamp": "1700000001", "recipient_id": USER},
        {
            "id": "wamid.B",
            "status": "failed",
            "timestamp": "1700000002",
            "recipient_id": "222",
            "errors": [
                {
                    "code": 131026,
                    "title": "Message undeliverable",
                    "error_data": {"details": "not on WhatsApp"},
                }
            ],
        },
    ]
    value["errors"] = [{"code": 130429, "title": "Rate limit hit"}]
    envelopes = split_delivery(body)
    assert [e.kind for e in envelopes] == ["status", "status", "status", "error"]
    assert [e.event_id for e in envelopes[:3]] == [
        "wamid.A:delivered",
        "wamid.A:read",
        "wamid.B:failed",
    ]
    failed = Webhook.from_envelope(envelopes[2])
    assert failed.status and failed.status.status == "failed"
    assert failed.status.errors[0].code == 131026
    assert failed.status.errors[0].details == "not on WhatsApp"
    assert failed.user.user_id == "222" and failed.message_type == "failed"
    error = Webhook.from_envelope(envelopes[3])
    assert error.kind == "error" and error.errors[0].code == 130429 and error.user.user_id == ""
    assert split_delivery(body)[3].event_id == envelopes[3].event_id  # stable id: dedup works


def test_split_by_user() -> None:
    body = delivery([text_message("111", "a"), text_message("222", "b"), text_message("111", "c")])
    envelopes = split_delivery(body, received_at=1.0)
    assert [(e.user_id, e.payload["messages"][0]["text"]["body"]) for e in envelopes] == [
        ("111", "a"),
        ("222", "b"),
        ("111", "c"),
    ]
    for env in envelopes:  # each carries only its own user's contact
        assert [c["wa_id"] for c in env.payload["contacts"]] == [env.user_id]
        assert env.received_at == 1.0 and env.tenant_id == PHONE_ID
        assert Envelope.from_json(env.to_json()) == env


def test_non_message_fields_are_ignored() -> None:
    body = delivery([text_message("111", "a")])
    body["entry"][0]["changes"].append({"field": "account_update", "value": {"event": "x"}})
    assert len(split_delivery(body)) == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.update(object="page"), "object must be"),
        (lambda b: b.pop("entry"), "no 'entry'"),
        (lambda b: b.update(entry={}), "entry must be list"),
        (lambda b: b["entry"][0].pop("changes"), "no 'changes'"),
        (lambda b: b["entry"][0]["changes"][0].pop("value"), "no 'value'"),
        (lambda b: b["entry"][0]["changes"][0]["value"].pop("metadata"), "no 'metadata'"),
        (
            lambda b: b["entry"][0]["changes"][0]["value"]["metadata"].pop("phone_number_id"),
            "phone_number_id",
        ),
        (lambda b: b["entry"][0]["changes"][0]["value"]["messages"][0].pop("from"), "no 'from'"),
        (lambda b: b["entry"][0]["changes"][0]["value"]["messages"][0].pop("id"), "no 'id'"),
    ],
)
def test_invalid_shapes(mutate: Any, reason: str) -> None:
    body = delivery([text_message("111", "a")])
    mutate(body)
    with pytest.raises(InvalidWebhook, match=reason):
        split_delivery(body)
    with pytest.raises(InvalidWebhook):
        split_delivery([1, 2])


def test_mask_user_id() -> None:
    assert mask_user_id("1234567890") == "******7890"
    assert mask_user_id("12345") == "*****"
    assert mask_user_id("") == ""
