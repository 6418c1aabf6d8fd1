"""WhatsApp Cloud API webhooks: validation, the split into per-user envelopes, and the
``Webhook`` object handlers receive.

One Meta delivery can carry several messages and statuses for several users. The
ingress splits it into one ``Envelope`` per message / status / error block, each a
Meta-shaped ``value`` reduced to that one event, so a worker sees exactly what Meta
sent about it and nothing about other users.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from pydantic import BaseModel, ConfigDict

from parley.wire.envelope import Envelope, Kind


class InvalidWebhook(ValueError):
    """The body is JSON but not a WhatsApp Business Account webhook; the text says why."""


def _require(mapping: Any, key: str, where: str, kind: type = dict) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise InvalidWebhook(f"{where} has no {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise InvalidWebhook(f"{where}.{key} must be {kind.__name__}")
    return value


#: Meta's phone number ids and WhatsApp ids (``from``, ``recipient_id``) are digits
DIGITS = re.compile(r"[0-9]{1,32}")
#: Message and status ids (``wamid.HBgL…=``): base64 and a few separators, nothing that
#: could break a log line, a key, a URL or terminal markup
EVENT_ID = re.compile(r"[A-Za-z0-9._=+/:-]{1,256}")
STATUS = re.compile(r"[a-z_]{1,32}")
#: Meta's metadata is a phone number and its id; anything much larger is not Meta's
MAX_METADATA_BYTES = 1024


def _checked(value: str, pattern: re.Pattern[str], where: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidWebhook(f"{where} is not a valid id")
    return value


def split_delivery(
    body: Any, received_at: float | None = None, max_events: int | None = None
) -> list[Envelope]:
    """One envelope per message, per status and per value-level ``errors`` block, in order.
    More than ``max_events`` of them is refused before any is built."""
    if not isinstance(body, dict):
        raise InvalidWebhook("body must be a JSON object")
    if body.get("object") != "whatsapp_business_account":
        raise InvalidWebhook("object must be 'whatsapp_business_account'")
    received_at = received_at if received_at is not None else datetime.now(UTC).timestamp()
    values: list[tuple[dict[str, Any], str]] = []
    for i, entry in enumerate(_require(body, "entry", "body", list)):
        for j, change in enumerate(_require(entry, "changes", f"entry[{i}]", list)):
            where = f"entry[{i}].changes[{j}]"
            if not isinstance(change, dict):
                raise InvalidWebhook(f"{where} must be an object")
            if change.get("field") != "messages":
                continue  # account updates, templates...: not conversation events
            values.append((_require(change, "value", where), f"{where}.value"))
    if max_events is not None:
        events = sum(_event_count(value, where) for value, where in values)
        if events > max_events:
            raise InvalidWebhook(f"{events} events in one delivery (at most {max_events})")
    envelopes: list[Envelope] = []
    for value, where in values:
        envelopes += _split_value(value, where, received_at)
    return envelopes


def _event_count(value: dict[str, Any], where: str) -> int:
    for name in ("messages", "statuses", "contacts"):
        if not isinstance(value.get(name) or [], list):
            raise InvalidWebhook(f"{where}.{name} must be a list")
    return (
        len(value.get("messages") or [])
        + len(value.get("statuses") or [])
        + (1 if value.get("errors") else 0)
    )


def _split_value(value: dict[str, Any], where: str, received_at: float) -> list[Envelope]:
    metadata = _require(value, "metadata", where)
    tenant = _checked(
        _require(metadata, "phone_number_id", f"{where}.metadata", str),
        DIGITS,
        f"{where}.metadata.phone_number_id",
    )
    _event_count(value, where)  # the lists' types
    if len(metadata) > 8 or len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidWebhook(f"{where}.metadata is larger than a WhatsApp number's")
    display = metadata.get("display_phone_number")
    base = {
        "messaging_product": "whatsapp",
        # only what Parley reads: a payload's other metadata is not copied per event
        "metadata": {
            "display_phone_number": display if isinstance(display, str) else "",
            "phone_number_id": tenant,
        },
    }
    contacts: dict[str, list[dict[str, Any]]] = {}
    for contact in value.get("contacts") or []:
        if isinstance(contact, dict) and isinstance(contact.get("wa_id"), str):
            contacts.setdefault(contact["wa_id"], []).append(contact)
    out: list[Envelope] = []
    for k, message in enumerate(value.get("messages") or []):
        mwhere = f"{where}.messages[{k}]"
        user = _checked(_require(message, "from", mwhere, str), DIGITS, f"{mwhere}.from")
        message_id = _checked(_require(message, "id", mwhere, str), EVENT_ID, f"{mwhere}.id")
        payload = {**base, "contacts": contacts.get(user, []), "messages": [message]}
        out.append(
            Envelope(
                tenant_id=tenant,
                user_id=user,
                kind="message",
                event_id=message_id,
                received_at=received_at,
                payload=payload,
            )
        )
    for k, status in enumerate(value.get("statuses") or []):
        swhere = f"{where}.statuses[{k}]"
        status_id = _checked(_require(status, "id", swhere, str), EVENT_ID, f"{swhere}.id")
        state = _checked(_require(status, "status", swhere, str), STATUS, f"{swhere}.status")
        user = _checked(
            _require(status, "recipient_id", swhere, str), DIGITS, f"{swhere}.recipient_id"
        )
        out.append(
            Envelope(
                tenant_id=tenant,
                user_id=user,
                kind="status",
                event_id=f"{status_id}:{state}",
                received_at=received_at,
                payload={**base, "statuses": [status]},
            )
        )
    if value.get("errors"):
        errors = value["errors"]
        if not isinstance(errors, list):
            raise InvalidWebhook(f"{where}.errors must be a list")
        digest = hashlib.sha256(orjson.dumps(errors, option=orjson.OPT_SORT_KEYS)).hexdigest()
        out.append(
            Envelope(
                tenant_id=tenant,
                user_id="",
                kind="error",
                event_id=f"error:{digest[:32]}",
                received_at=received_at,
                payload={**base, "errors": errors},
            )
        )
    return out


class WebhookUser(BaseModel):
    user_id: str
    user_name: str | None = None


class MetaError(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: int
    title: str = ""
    message: str | None = None
    details: str | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> MetaError:
        details = (raw.get("error_data") or {}).get("details")
        return cls(
            code=int(raw.get("code", 0)),
            title=raw.get("title", ""),
            message=raw.get("message"),
            details=details,
        )


class Media(BaseModel):
    id: str | None = None
    mime_type: str | None = None
    caption: str | None = None
    sha256: str | None = None
    filename: str | None = None
    link: str | None = None


class Location(BaseModel):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class Reaction(BaseModel):
    message_id: str
    emoji: str | None = None


class StatusInfo(BaseModel):
    id: str
    status: str
    recipient_id: str
    timestamp: datetime | None = None
    conversation: dict[str, Any] | None = None
    pricing: dict[str, Any] | None = None
    errors: list[MetaError] = []


KNOWN_TYPES = {
    "text",
    "interactive",
    "button",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "reaction",
}
MEDIA_TYPES = {"image", "audio", "video", "document", "sticker"}


def _timestamp(raw: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(raw), UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


class TimerInfo(BaseModel):
    """A fired timer (``handle_timer``): what the handler scheduled, and when."""

    action: str
    key: str = ""
    data: dict[str, Any] = {}
    due_at: datetime
    scheduled_at: datetime


class Webhook(BaseModel):
    """What a handler receives: one message, status or error block of one tenant, or a
    timer it scheduled for a user."""

    tenant_id: str
    user: WebhookUser
    kind: Kind
    message_id: str
    message_type: str
    timestamp: datetime
    raw: dict[str, Any]
    replay_id: str | None = None
    errors: list[MetaError] = []
    timer: TimerInfo | None = None

    @property
    def is_replay(self) -> bool:
        return self.replay_id is not None

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Webhook:
        payload = envelope.payload
        contacts = payload.get("contacts") or [{}]
        name = (contacts[0].get("profile") or {}).get("name") if contacts else None
        common = {
            "tenant_id": envelope.tenant_id,
            "raw": payload,
            "kind": envelope.kind,
            "replay_id": envelope.replay_id,
            "user": WebhookUser(user_id=envelope.user_id, user_name=name),
        }
        if envelope.kind == "message":
            message = payload["messages"][0]
            kind = message.get("type")
            return cls(
                message_id=message["id"],
                message_type=kind if kind in KNOWN_TYPES else "unsupported",
                timestamp=_timestamp(message.get("timestamp")),
                errors=[MetaError.parse(e) for e in message.get("errors") or []],
                **common,
            )
        if envelope.kind == "status":
            status = payload["statuses"][0]
            return cls(
                message_id=status["id"],
                message_type=status["status"],
                timestamp=_timestamp(status.get("timestamp")),
                errors=[MetaError.parse(e) for e in status.get("errors") or []],
                **common,
            )
        if envelope.kind == "timer":
            return cls(
                message_id=envelope.event_id,
                message_type="timer",
                timestamp=datetime.fromtimestamp(envelope.received_at, UTC),
                timer=TimerInfo(
                    action=payload["action"],
                    key=payload.get("key", ""),
                    data=payload.get("data") or {},
                    due_at=datetime.fromtimestamp(payload["due_at"], UTC),
                    scheduled_at=datetime.fromtimestamp(payload["scheduled_at"], UTC),
                ),
                **common,
            )
        return cls(
            message_id=envelope.event_id,
            message_type="error",
            timestamp=datetime.fromtimestamp(envelope.received_at, UTC),
            errors=[MetaError.parse(e) for e in payload.get("errors") or []],
            **common,
        )

    # -- typed access to the message --------------------------------------------------

    @property
    def message(self) -> dict[str, Any]:
        messages = self.raw.get("messages") or [{}]
        return cast("dict[str, Any]", messages[0])

    def get_message_text(self) -> str:
        """The text a person typed or chose; "" when there is none. Never raises."""
        message = self.message
        kind = message.get("type")
        if kind == "text":
            return str((message.get("text") or {}).get("body", ""))
        if kind == "interactive":
            reply = self._interactive_reply()
            return str(reply.get("title", "")) if reply else ""
        if kind == "button":
            return str((message.get("button") or {}).get("text", ""))
        if kind in MEDIA_TYPES:
            return str((message.get(kind) or {}).get("caption") or "")
        return ""

    def _interactive_reply(self) -> dict[str, Any] | None:
        interactive = self.message.get("interactive") or {}
        return interactive.get("button_reply") or interactive.get("list_reply")

    @property
    def interactive_reply_id(self) -> str | None:
        if self.message.get("type") == "button":
            return (self.message.get("button") or {}).get("payload")
        reply = self._interactive_reply()
        return reply.get("id") if reply else None

    @property
    def media(self) -> Media | None:
        kind = self.message.get("type")
        if kind not in MEDIA_TYPES:
            return None
        return Media.model_validate(self.message.get(kind) or {})

    @property
    def location(self) -> Location | None:
        raw = self.message.get("location")
        return Location.model_validate(raw) if raw else None

    @property
    def contacts(self) -> list[dict[str, Any]]:
        return list(self.message.get("contacts") or [])

    @property
    def reaction(self) -> Reaction | None:
        raw = self.message.get("reaction")
        return Reaction.model_validate(raw) if raw else None

    @property
    def status(self) -> StatusInfo | None:
        if self.kind != "status":
            return None
        raw = dict(self.raw["statuses"][0])
        raw["errors"] = [MetaError.parse(e) for e in raw.get("errors") or []]
        if raw.get("timestamp") is not None:
            raw["timestamp"] = _timestamp(raw["timestamp"])
        return StatusInfo.model_validate(raw)
