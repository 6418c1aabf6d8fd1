"""Reading the replay log and the dead-letter stream: ``parley replay`` re-sends what
it selects, the reconciler checks that every entry ended done or dead-lettered.

Both are Redis streams written with ``*`` ids: each id is its entry's acceptance time
on the pipeline Redis's clock (``<ms>-<seq>``), so a time window is an id range.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import orjson
import redis

from parley.wire.envelope import Envelope

#: Entries read per XRANGE
CHUNK = 500


@dataclass
class Entry:
    entry_id: str
    envelope: Envelope
    fields: dict[str, str]


def select(
    client: redis.Redis,
    stream: str,
    since: str = "-",
    until: str = "+",
    *,
    tenant: str | None = None,
    user: str | None = None,
    kind: str | None = None,
) -> Iterator[Entry]:
    """The matching entries, oldest first, read in chunks."""
    start = since
    while True:
        chunk = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            client.xrange(stream, start, until, count=CHUNK),
        )
        for raw_id, raw in chunk:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            envelope = Envelope.from_json(orjson.loads(fields["envelope"]))
            if tenant and envelope.tenant_id != tenant:
                continue
            if user and envelope.user_id != user:
                continue
            if kind and envelope.kind != kind:
                continue
            yield Entry(raw_id.decode(), envelope, fields)
        if len(chunk) < CHUNK:
            return
        start = "(" + chunk[-1][0].decode()


def stream_id(entry_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``) as a pair that orders like the stream."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def after(entry_id: str) -> str:
    """The smallest id after ``entry_id``: an inclusive start that skips it."""
    ms, seq = stream_id(entry_id)
    return f"{ms}-{seq + 1}"
