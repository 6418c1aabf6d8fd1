"""Parley's caches: the caching spec's API on memory, JSON-file and Redis backends."""

from __future__ import annotations

from parley.cache.caches import StateCache, TableCache, UserCache
from parley.cache.errors import (
    CacheArgumentError,
    CacheArgumentTypeError,
    CacheError,
    CacheTypeError,
    CacheUnavailableError,
    CacheValidationError,
)
from parley.cache.factory import CacheFactory
from parley.cache.interface import ICache
from parley.cache.keys import KeyFactory
from parley.cache.results import WriteOutcome, WriteResult
from parley.cache.settings import CacheSettings

__all__ = [
    "CacheArgumentError",
    "CacheArgumentTypeError",
    "CacheError",
    "CacheFactory",
    "CacheSettings",
    "CacheTypeError",
    "CacheUnavailableError",
    "CacheValidationError",
    "ICache",
    "KeyFactory",
    "StateCache",
    "TableCache",
    "UserCache",
    "WriteOutcome",
    "WriteResult",
    "create_cache_factory",
]

BACKENDS = ("memory", "json", "redis")


def create_cache_factory(
    backend: str, settings: CacheSettings | None = None, **overrides: object
) -> type[CacheFactory]:
    """The factory class of a backend, e.g. ``create_cache_factory("redis")``; with settings
    or overrides (``redis_url=...``), a subclass bound to them."""
    factory: type[CacheFactory]
    if backend == "memory":
        from parley.cache.memory import MemoryCacheFactory as factory
    elif backend == "json":
        from parley.cache.json_files import JSONCacheFactory as factory
    elif backend == "redis":
        from parley.cache.redis import RedisCacheFactory as factory
    else:
        raise CacheArgumentError(f"unknown cache backend {backend!r}; choose one of {BACKENDS}")
    if settings is None and not overrides:
        return factory
    return factory.configured(settings, **overrides)
