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
    """``redis://host:6379`` → ``redis://host:6379/{db}``, query kept; a ``unix://``
    URL, whose path is the socket's, gets ``?db={db}``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [pair for pair in parts.query.split("&") if pair and not pair.startswith("db=")]
        query.append(f"db={db}")
        return f"unix://{parts.netloc}{parts.path}?{'&'.join(query)}"
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


#: Where settings come from besides the environment, which wins over it: the current
#: folder's ``.env``, as pydantic-settings users (and honcho, and compose) expect.
ENV_FILE = ".env"


def base_db(url: str) -> str | None:
    """The DB number a ``redis://`` URL names in its path (or ``?db=``), if any."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(pair.partition("=")[::2] for pair in parts.query.split("&") if pair)
        return query.get("db") or None
    path = parts.path.strip("/")
    return path or None


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the base server URL (``PARLEY_REDIS_URL``), or None. It
    names a server and Parley places its DBs there; a DB number in it would otherwise be
    dropped without a word (caches at 0-2, pipeline at 3)."""
    if (db := base_db(url)) is None:
        return None
    return (
        f"names DB {db}, but Parley places its DBs on that server itself (user cache 0, "
        f"state 1, table 2, pipeline 3): remove the DB number, or give each its own URL "
        "(PARLEY_USER_CACHE_URL, PARLEY_STATE_CACHE_URL, PARLEY_TABLE_CACHE_URL, "
        "PARLEY_PIPELINE_URL, PARLEY_BROKER_URL)"
    )


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

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

    @field_validator("redis_url")
    @classmethod
    def _a_server(cls, value: str) -> str:
        if problem := base_url_problem(value):
            raise ValueError(problem)
        return value

    def url_for(self, kind: CacheKind) -> str:
        explicit = getattr(self, f"{kind}_cache_url")
        return explicit or with_db(self.redis_url, DEFAULT_DB[kind])

    def default_ttl(self, kind: CacheKind) -> int | None:
        return cast("int | None", getattr(self, f"{kind}_cache_ttl"))
