"""Cache settings, from ``PARLEY_*`` environment variables (see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CacheKind = Literal["user", "state", "table"]

#: What a Redis URL starts with (redis-py's schemes)
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: The spec's database allocation on one server.
DEFAULT_DB: dict[CacheKind, int] = {"user": 0, "state": 1, "table": 2}


def with_db(url: str, db: int) -> str:
    """``redis://host:6379`` (or ``.../5``) → ``redis://host:6379/{db}``, query kept."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", populate_by_name=True)

    redis_url: str = "redis://localhost:6379"
    user_cache_url: str | None = None
    state_cache_url: str | None = None
    table_cache_url: str | None = None
    json_cache_dir: Path = Path("./cache")
    user_cache_ttl: int | None = Field(default=None, gt=0)
    state_cache_ttl: int | None = Field(default=None, gt=0)
    table_cache_ttl: int | None = Field(default=None, gt=0)
    #: Connections per Redis URL per event loop; callers beyond it wait for a free one.
    redis_max_connections: int = Field(default=64, gt=0)
    #: How long a caller waits for a free connection before CacheUnavailableError.
    redis_pool_timeout: float = Field(default=20.0, gt=0)
    redis_socket_timeout: float = Field(default=10.0, gt=0)

    @field_validator("redis_url", "user_cache_url", "state_cache_url", "table_cache_url")
    @classmethod
    def _a_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES):
            raise ValueError("must be a Redis URL: redis://host:port, rediss://… or unix://…")
        return value

    def url_for(self, kind: CacheKind) -> str:
        explicit = getattr(self, f"{kind}_cache_url")
        return explicit or with_db(self.redis_url, DEFAULT_DB[kind])

    def default_ttl(self, kind: CacheKind) -> int | None:
        return cast("int | None", getattr(self, f"{kind}_cache_ttl"))
