"""Key building: the spec's key formats, made injective.

Every id that comes from outside (tenant, user, flow name, table, pk) is
escaped so that it cannot cross a ``:`` boundary or act as a glob: ordinary
ids (letters, digits, ``_ . + @ = -``) stay as they are, so the spec's keys
come out exactly; anything else is percent-encoded as UTF-8, ``%`` included,
which makes the encoding reversible and therefore collision-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parley.cache.errors import CacheArgumentError, CacheArgumentTypeError

_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+@=-")
_ALL_SAFE = re.compile(r"[A-Za-z0-9_.+@=\-]+\Z")


def escape_id(value: str, what: str = "id") -> str:
    """Escape one key component; raise for empty or non-string ids."""
    if not isinstance(value, str):
        raise CacheArgumentTypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise CacheArgumentError(f"{what} must not be empty")
    if _ALL_SAFE.match(value):
        return value
    return "".join(
        ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
        for ch in value
    )


@dataclass(frozen=True, slots=True)
class KeyFactory:
    """Builds the Redis key of every document; the other backends derive their names from it."""

    user_prefix: str = "user"
    handler_prefix: str = "state"
    table_prefix: str = "df"
    pk_marker: str = "pkid"

    def user(self, tenant: str, user_id: str) -> str:
        """The user's main document (the profile): ``{tenant}:user:{user}``."""
        return (
            f"{escape_id(tenant, 'tenant_id')}:{self.user_prefix}:{escape_id(user_id, 'user_id')}"
        )

    def user_document(self, tenant: str, user_id: str, key: str) -> str:
        """Another document of the user: ``{tenant}:user:{user}:{key}``."""
        return f"{self.user(tenant, user_id)}:{escape_id(key, 'key')}"

    def handler(self, tenant: str, handler_name: str, user_id: str) -> str:
        """A conversation state: ``{tenant}:state:{name}:{user}``."""
        return (
            f"{escape_id(tenant, 'tenant_id')}:{self.handler_prefix}:"
            f"{escape_id(handler_name, 'key')}:{escape_id(user_id, 'user_id')}"
        )

    def table(self, tenant: str, table: str, pk: str | None = None) -> str:
        """A table row ``{tenant}:df:{table}:pkid:{pk}``, or with no pk the tenant-wide
        document ``{tenant}:df:{table}``."""
        base = f"{escape_id(tenant, 'tenant_id')}:{self.table_prefix}:{escape_id(table, 'table')}"
        if pk is None:
            return base
        return f"{base}:{self.pk_marker}:{escape_id(pk, 'pk')}"
