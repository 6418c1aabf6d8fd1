"""The storage interface the three backends implement, and the Python half of it.

Caches (``cache.caches``) do the argument checks, key building and JSON
encoding once; a store only keeps ``{field: JSON text}`` documents and does
the atomic operations. The memory and JSON-file stores share ``LocalStore``,
which runs each read-modify-write under a per-document lock; the Redis store
does the same operations as Lua scripts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from parley.cache.codec import Fields, appended, fields_match, incremented, ttl_seconds
from parley.cache.results import WriteOutcome

T = TypeVar("T")


class Store(Protocol):
    """What a backend must do. ``ttl=None`` keeps the current expiry; ``default_ttl``
    applies only when the write creates the document."""

    async def get(self, key: str) -> Fields | None: ...
    async def set(
        self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None
    ) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def exists(self, key: str) -> bool: ...
    async def get_field(self, key: str, field: str) -> bytes | None: ...
    async def set_field(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None: ...
    async def increment_field(
        self, key: str, field: str, increment: int | float, ttl: int | None, default_ttl: int | None
    ) -> int | float: ...
    async def append_to_list(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None: ...
    async def get_ttl(self, key: str) -> int: ...
    async def set_ttl(self, key: str, ttl: int) -> bool: ...
    async def create_if_absent(
        self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        """CREATED, or ALREADY_EXISTS with the document's fields (left unchanged)."""
        ...

    async def replace_if(
        self, key: str, fields: Fields, expected: Fields, ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        """REPLACED (expiry kept unless ``ttl``), MISSING, or CONDITION_NOT_MET with the
        document's fields (left unchanged); ``expected`` compares by ``json_equal``."""
        ...


@dataclass(slots=True)
class StoredDocument:
    fields: Fields
    expires_at: float | None  # on the store's own clock


class LocalStore(ABC):
    """Document operations in Python for the backends that live in this process or on disk."""

    @abstractmethod
    def _now(self) -> float: ...

    @abstractmethod
    def _locked(self, key: str) -> AbstractContextManager[object]: ...

    @abstractmethod
    def _read(self, key: str) -> StoredDocument | None:
        """The document as stored, expired or not."""

    @abstractmethod
    def _write(self, key: str, document: StoredDocument) -> None: ...

    @abstractmethod
    def _remove(self, key: str) -> bool: ...

    def _live(self, key: str) -> StoredDocument | None:
        document = self._read(key)
        if document is None:
            return None
        if document.expires_at is not None and document.expires_at <= self._now():
            return None
        return document

    def _expiry(
        self, current: StoredDocument | None, ttl: int | None, default_ttl: int | None
    ) -> float | None:
        if ttl is not None:
            return self._now() + ttl
        if current is not None:
            return current.expires_at
        return None if default_ttl is None else self._now() + default_ttl

    def _modify(
        self, key: str, ttl: int | None, default_ttl: int | None, change: Callable[[Fields], T]
    ) -> T:
        """Read, change and write one document under its lock; ``change`` raising leaves
        the document as it was."""
        with self._locked(key):
            current = self._live(key)
            fields = dict(current.fields) if current else {}
            result = change(fields)
            self._write(key, StoredDocument(fields, self._expiry(current, ttl, default_ttl)))
            return result

    async def get(self, key: str) -> Fields | None:
        document = self._live(key)
        return None if document is None else dict(document.fields)

    async def set(self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None) -> None:
        def replace(current: Fields) -> None:
            current.clear()
            current.update(fields)

        self._modify(key, ttl, default_ttl, replace)

    async def delete(self, key: str) -> bool:
        with self._locked(key):
            live = self._live(key) is not None
            removed = self._remove(key)
            return live and removed

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    async def get_field(self, key: str, field: str) -> bytes | None:
        document = self._live(key)
        return None if document is None else document.fields.get(field)

    async def set_field(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None:
        self._modify(key, ttl, default_ttl, lambda fields: fields.__setitem__(field, value))

    async def increment_field(
        self, key: str, field: str, increment: int | float, ttl: int | None, default_ttl: int | None
    ) -> int | float:
        def add(fields: Fields) -> int | float:
            new, text = incremented(key, field, fields.get(field), increment)
            fields[field] = text
            return new

        return self._modify(key, ttl, default_ttl, add)

    async def append_to_list(
        self, key: str, field: str, value: bytes, ttl: int | None, default_ttl: int | None
    ) -> None:
        def append(fields: Fields) -> None:
            fields[field] = appended(key, field, fields.get(field), value)

        self._modify(key, ttl, default_ttl, append)

    async def get_ttl(self, key: str) -> int:
        document = self._live(key)
        if document is None:
            return -2
        if document.expires_at is None:
            return -1
        return ttl_seconds(document.expires_at - self._now())

    async def set_ttl(self, key: str, ttl: int) -> bool:
        with self._locked(key):
            document = self._live(key)
            if document is None:
                return False
            document.expires_at = self._now() + ttl
            self._write(key, document)
            return True

    async def create_if_absent(
        self, key: str, fields: Fields, ttl: int | None, default_ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        with self._locked(key):
            current = self._live(key)
            if current is not None:
                return WriteOutcome.ALREADY_EXISTS, dict(current.fields)
            self._write(key, StoredDocument(dict(fields), self._expiry(None, ttl, default_ttl)))
            return WriteOutcome.CREATED, None

    async def replace_if(
        self, key: str, fields: Fields, expected: Fields, ttl: int | None
    ) -> tuple[WriteOutcome, Fields | None]:
        with self._locked(key):
            current = self._live(key)
            if current is None:
                return WriteOutcome.MISSING, None
            if not fields_match(current.fields, expected):
                return WriteOutcome.CONDITION_NOT_MET, dict(current.fields)
            self._write(key, StoredDocument(dict(fields), self._expiry(current, ttl, None)))
            return WriteOutcome.REPLACED, None
