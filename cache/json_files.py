"""JSON-file backend: one readable file per document, for single-server deployments.

Layout (the spec's): ``{PARLEY_JSON_CACHE_DIR}/states|users|tables/``. A file is
named after the document's key with ':' shown as '~'; since ids are escaped
in the key (``cache.keys``), names are unambiguous and can never hold a path
separator, and over-long ones are shortened with a hash of the key. Writes go
to a temp file that is fsynced and renamed over the old one, so a crash leaves
the old or the new document, never half of one. Read-modify-writes hold a file
lock (one of 256 stripes in ``.locks/``), so several processes stay consistent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import orjson
from filelock import FileLock, Timeout

from parley.cache.errors import CacheUnavailableError
from parley.cache.factory import CacheFactory
from parley.cache.settings import CacheKind
from parley.cache.store import LocalStore, StoredDocument

FOLDERS: dict[CacheKind, str] = {"state": "states", "user": "users", "table": "tables"}
LOCK_STRIPES = 256
LOCK_TIMEOUT = 30.0
MAX_NAME = 200  # bytes, well under the usual 255 limit of a file name


@contextlib.contextmanager
def _disk(what: str) -> Iterator[None]:
    """A failed read or write may be retried: a write lands whole (renamed into place)
    or not at all."""
    try:
        yield
    except OSError as exc:
        raise CacheUnavailableError(f"JSON cache: {what}: {exc}", retry_safe=True) from exc


class JSONFileStore(LocalStore):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._locks_dir = folder.parent / ".locks"
        self._locks: dict[int, FileLock] = {}
        self._ready = False

    def path_for(self, key: str) -> Path:
        name = key.replace(":", "~")
        if len(name.encode()) > MAX_NAME:
            name = f"{name[:100]}~{hashlib.sha256(key.encode()).hexdigest()}"
        return self.folder / f"{name}.json"

    def _now(self) -> float:
        return time.time()  # persisted expiries must survive a restart: wall clock

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[object]:
        self._ensure_folders()
        stripe = zlib.crc32(key.encode()) % LOCK_STRIPES
        lock = self._locks.get(stripe)
        if lock is None:
            lock = self._locks[stripe] = FileLock(self._locks_dir / f"{stripe:03d}.lock")
        try:
            with _disk(f"lock for {key!r}"), lock.acquire(timeout=LOCK_TIMEOUT):
                yield lock
        except Timeout as exc:
            raise CacheUnavailableError(
                f"JSON cache: lock for {key!r} not acquired", retry_safe=True
            ) from exc

    def _ensure_folders(self) -> None:
        if not self._ready:
            with _disk(f"creating {self.folder}"):
                self.folder.mkdir(parents=True, exist_ok=True)
                self._locks_dir.mkdir(parents=True, exist_ok=True)
            self._ready = True

    def _read(self, key: str) -> StoredDocument | None:
        path = self.path_for(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheUnavailableError(
                f"JSON cache: reading {key!r}: {exc}", retry_safe=True
            ) from exc
        try:
            stored = orjson.loads(raw)
            fields = {field: orjson.dumps(value) for field, value in stored["data"].items()}
            return StoredDocument(fields, stored.get("expires_at"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CacheUnavailableError(f"JSON cache: {path} is corrupt: {exc}") from exc

    def _write(self, key: str, document: StoredDocument) -> None:
        body = orjson.dumps(
            {
                "key": key,
                "expires_at": document.expires_at,
                "data": {field: orjson.Fragment(text) for field, text in document.fields.items()},
            },
            option=orjson.OPT_INDENT_2,
        )
        with _disk(f"writing {key!r}"):
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path_for(key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _remove(self, key: str) -> bool:
        with _disk(f"deleting {key!r}"):
            try:
                self.path_for(key).unlink()
            except FileNotFoundError:
                return False
            return True


class JSONCacheFactory(CacheFactory):
    """Persistent, human-readable caches on one server's disk."""

    backend = "json"
    stores: ClassVar[dict[tuple[Path, CacheKind], JSONFileStore]] = {}

    def _store(self, kind: CacheKind) -> JSONFileStore:
        root = self._settings().json_cache_dir.absolute()
        store = self.stores.get((root, kind))
        if store is None:
            store = self.stores[(root, kind)] = JSONFileStore(root / FOLDERS[kind])
        return store
