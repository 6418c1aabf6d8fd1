"""The cache's exception hierarchy.

Every error names the document key (which carries the tenant and user) or the
argument at fault, so a log line alone tells what went wrong where.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error the caches raise."""


class CacheArgumentError(CacheError, ValueError):
    """A bad argument (empty key, NUL in a field name, bad TTL), raised before any I/O."""


class CacheArgumentTypeError(CacheError, TypeError):
    """An argument of the wrong type (non-dict data, non-JSON value), raised before any I/O."""


class CacheValidationError(CacheError):
    """A stored document does not validate against the model asked for."""

    def __init__(self, key: str, model: type, detail: str) -> None:
        super().__init__(f"document {key!r} does not validate as {model.__name__}: {detail}")
        self.key = key
        self.model = model


class CacheTypeError(CacheError, TypeError):
    """A field holds the wrong JSON type for the operation; the document is left unchanged."""

    def __init__(self, key: str, field: str, expected: str) -> None:
        super().__init__(f"field {field!r} of document {key!r} is not {expected}")
        self.key = key
        self.field = field


class CacheUnavailableError(CacheError):
    """The backend itself failed (server down, disk full).

    Raised instead of returning ``False``: a write that silently fails is lost data.
    ``retry_safe`` says whether running the operation again cannot apply it twice: it
    never reached the server, or it is a read or an idempotent write. An increment whose
    reply was lost may have run, so it is not retry-safe, and its message says so.
    """

    def __init__(self, message: str, *, retry_safe: bool = False) -> None:
        super().__init__(message)
        self.retry_safe = retry_safe
