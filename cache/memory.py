"""In-process backend for development and tests.

Values are stored as JSON text, so callers never share references with the
cache and get exactly what the other backends would return. Expiry runs on the
monotonic clock; expired documents are swept at most once a second, so memory
stays bounded by the live documents.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from typing import ClassVar

from parley.cache.factory import CacheFactory
from parley.cache.settings import CacheKind
from parley.cache.store import LocalStore, StoredDocument

SWEEP_INTERVAL = 1.0


class MemoryStore(LocalStore):
    def __init__(self) -> None:
        self._documents: dict[str, StoredDocument] = {}
        self._lock = threading.RLock()
        self._next_sweep = 0.0

    def _now(self) -> float:
        return time.monotonic()

    def _locked(self, key: str) -> AbstractContextManager[object]:
        return self._lock

    def _read(self, key: str) -> StoredDocument | None:
        return self._documents.get(key)

    def _write(self, key: str, document: StoredDocument) -> None:
        self._documents[key] = document
        self._sweep()

    def _remove(self, key: str) -> bool:
        return self._documents.pop(key, None) is not None

    def _sweep(self) -> None:
        now = self._now()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        expired = [
            key
            for key, doc in self._documents.items()
            if doc.expires_at is not None and doc.expires_at <= now
        ]
        for key in expired:
            del self._documents[key]

    def __len__(self) -> int:
        return len(self._documents)

    def clear(self) -> None:
        with self._lock:
            self._documents.clear()


class MemoryCacheFactory(CacheFactory):
    """Process-local caches: fast, lost on restart, one process only."""

    backend = "memory"
    stores: ClassVar[dict[CacheKind, MemoryStore]] = {
        "user": MemoryStore(),
        "state": MemoryStore(),
        "table": MemoryStore(),
    }

    def _store(self, kind: CacheKind) -> MemoryStore:
        return self.stores[kind]

    @classmethod
    def clear(cls) -> None:
        """Forget everything (tests, demos)."""
        for store in cls.stores.values():
            store.clear()
