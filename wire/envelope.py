"""The envelope: one webhook event (a message, a status or an error block) for one
user, as it travels from the ingress through the queue to a worker — JSON only."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

#: A timer is a scheduled action of the app, fired into its user's lane (``parley.workers.timers``)
Kind = Literal["message", "status", "error", "timer"]


class Envelope(BaseModel):
    """The unit of work on the queue: JSON only."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    user_id: str
    kind: Kind
    event_id: str
    received_at: float
    payload: dict[str, Any]
    replay_id: str | None = None
    #: Set when the envelope is a dead letter being replayed: its entry, and the
    #: attempts and first failure it already had.
    dead_letter_id: str | None = None
    previous_attempts: int = 0
    first_failure: float | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def encode(self) -> bytes:
        """The envelope as JSON text: what the replay log, the dead letters, the
        in-flight record and the task message carry (encode once, pass the bytes on)."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        return cls.model_validate(data)


def mask_user_id(user_id: str) -> str:
    """For logs and Flower: the last 4 characters at most, the rest masked."""
    if not user_id:
        return ""
    shown = 4 if len(user_id) > 6 else 0
    return "*" * (len(user_id) - shown) + user_id[len(user_id) - shown :]


def printable(text: str) -> str:
    """``text`` safe for one log line: control characters (CR, LF, ESC…) shown escaped.
    Ids are validated at the ingress; this guards what came in before, or by replay."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
