"""``ICache``: the API handlers call, exactly the caching spec's table."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from parley.cache.results import WriteResult

M = TypeVar("M", bound=BaseModel)


class ICache(ABC):
    """One cache scoped to a tenant (and, for state and user caches, a user).

    A value is a *document*: a dict or a Pydantic model. Writes with ``ttl=None``
    keep the document's current expiry; a write that creates a document applies
    the cache's default TTL. Backend failures raise ``CacheUnavailableError``.
    """

    @overload
    async def get(self, key: str, models: None = None) -> dict[str, Any] | None: ...
    @overload
    async def get(self, key: str, models: type[M]) -> M | None: ...
    @abstractmethod
    async def get(self, key: str, models: type[M] | None = None) -> dict[str, Any] | M | None:
        """The document (as ``models`` if given), or ``None`` when missing."""

    @abstractmethod
    async def set(self, key: str, data: dict[str, Any] | BaseModel, ttl: int | None = None) -> bool:
        """Replace the whole document atomically."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """``True`` when a document was deleted."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def get_field(self, key: str, field: str) -> Any | None:
        """One top-level field, ``None`` when the field or the document is missing."""

    @abstractmethod
    async def set_field(self, key: str, field: str, value: Any, ttl: int | None = None) -> bool:
        """Set one field, creating the document if missing."""

    @abstractmethod
    async def increment_field(
        self, key: str, field: str, increment: int | float = 1, ttl: int | None = None
    ) -> int | float:
        """Atomically add ``increment``; a missing field starts at 0. Returns the new value."""

    @abstractmethod
    async def append_to_list(
        self, key: str, field: str, value: Any, ttl: int | None = None
    ) -> bool:
        """Atomically append; a missing field becomes ``[value]``."""

    @abstractmethod
    async def get_ttl(self, key: str) -> int:
        """Seconds left; ``-1`` no expiry; ``-2`` no such document."""

    @abstractmethod
    async def set_ttl(self, key: str, ttl: int) -> bool:
        """``False`` when the document is missing."""

    @overload
    async def create_if_absent(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        ttl: int | None = None,
        *,
        models: None = None,
    ) -> WriteResult[dict[str, Any]]: ...
    @overload
    async def create_if_absent(
        self, key: str, data: dict[str, Any] | BaseModel, ttl: int | None = None, *, models: type[M]
    ) -> WriteResult[M]: ...
    @abstractmethod
    async def create_if_absent(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        ttl: int | None = None,
        *,
        models: type[M] | None = None,
    ) -> WriteResult[dict[str, Any]] | WriteResult[M]:
        """Write the document only if none exists, atomically: ``CREATED``, or
        ``ALREADY_EXISTS`` with the document that is there (as ``models`` if given)."""

    @overload
    async def replace_if(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        expected: dict[str, Any],
        ttl: int | None = None,
        *,
        models: None = None,
    ) -> WriteResult[dict[str, Any]]: ...
    @overload
    async def replace_if(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        expected: dict[str, Any],
        ttl: int | None = None,
        *,
        models: type[M],
    ) -> WriteResult[M]: ...
    @abstractmethod
    async def replace_if(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        expected: dict[str, Any],
        ttl: int | None = None,
        *,
        models: type[M] | None = None,
    ) -> WriteResult[dict[str, Any]] | WriteResult[M]:
        """Replace the whole document only if each field of ``expected`` holds that
        value (JSON equality, types kept), atomically: ``REPLACED``, ``MISSING``, or
        ``CONDITION_NOT_MET`` with the document that is there."""

    @staticmethod
    def create_table_key(table: str, pk: str) -> str:
        """The spec's one-key table form ``"table:pk"``, with ':' inside each part made '_'."""
        return f"{table.replace(':', '_')}:{pk.replace(':', '_')}"
