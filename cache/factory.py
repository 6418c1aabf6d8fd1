"""Cache factories: a backend bound to one tenant (and user).

Building a factory and its caches is cheap and opens nothing: workers make one
per webhook. Backends keep their connections and locks process-wide.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Self

from parley.cache.caches import StateCache, TableCache, UserCache
from parley.cache.errors import CacheArgumentError
from parley.cache.keys import KeyFactory, escape_id
from parley.cache.settings import CacheKind, CacheSettings
from parley.cache.store import Store


@functools.cache
def env_settings() -> CacheSettings:
    """The settings of a factory used on its own, as the caching spec's snippets do
    (``RedisCacheFactory(tenant_id=...)``): read from the environment at first use, not
    at import. An app's factory is bound to its app's settings (``configured``)."""
    return CacheSettings()


class CacheFactory(ABC):
    backend: ClassVar[str]
    #: ``None``: read ``PARLEY_*`` from the environment. Set by ``configured()``.
    settings: ClassVar[CacheSettings | None] = None
    key_factory: ClassVar[KeyFactory] = KeyFactory()

    def __init__(
        self,
        tenant_id: str,
        user_id: str | None = None,
        *,
        around: Callable[[Store], Store] | None = None,
    ) -> None:
        """``around`` wraps the store of every cache made here: the worker passes each
        operation through its retry and ownership checks (``parley.workers.calls``)."""
        escape_id(tenant_id, "tenant_id")  # fail here, not at the first cache call
        if user_id is not None:
            escape_id(user_id, "user_id")
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.around = around

    @classmethod
    def configured(cls, settings: CacheSettings | None = None, **overrides: Any) -> type[Self]:
        """A subclass bound to explicit settings, e.g. ``RedisCacheFactory.configured(
        redis_url="redis://cache:6379")``; unset fields still come from the environment."""
        base = settings or cls._settings()
        bound = type(base)(**{**base.model_dump(), **overrides}) if overrides else base
        return type(cls.__name__, (cls,), {"settings": bound})

    @classmethod
    def _settings(cls) -> CacheSettings:
        return cls.settings or env_settings()

    @abstractmethod
    def _store(self, kind: CacheKind) -> Store:
        """The process-wide store of that cache kind for these settings."""

    def _cache_store(self, kind: CacheKind) -> Store:
        store = self._store(kind)
        return store if self.around is None else self.around(store)

    def _require_user(self, what: str) -> str:
        if self.user_id is None:
            raise CacheArgumentError(f"{what} needs a user_id (tenant {self.tenant_id!r})")
        return self.user_id

    def create_state_cache(self) -> StateCache:
        return StateCache(
            self._cache_store("state"),
            self.key_factory,
            self.tenant_id,
            self._require_user("the state cache"),
            self._settings().default_ttl("state"),
        )

    def create_user_cache(self) -> UserCache:
        return UserCache(
            self._cache_store("user"),
            self.key_factory,
            self.tenant_id,
            self._require_user("the user cache"),
            self._settings().default_ttl("user"),
        )

    def create_table_cache(self) -> TableCache:
        return TableCache(
            self._cache_store("table"),
            self.key_factory,
            self.tenant_id,
            self._settings().default_ttl("table"),
        )
