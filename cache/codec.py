"""The semantics every backend shares: argument checks, JSON encoding, field arithmetic.

A document is held by every backend as ``{field: JSON text}``. Encoding each
top-level field once, here, is what makes the backends agree: ``1``, ``True``,
``"1"`` and ``None`` stay distinct, values never share references with the
caller, and the Redis Lua scripts and the Python backends below do the same
arithmetic on the same texts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from parley.cache.errors import (
    CacheArgumentError,
    CacheArgumentTypeError,
    CacheTypeError,
    CacheValidationError,
)

Fields = dict[str, bytes]
M = TypeVar("M", bound=BaseModel)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_field(key: str, field: str) -> str:
    if not isinstance(field, str):
        raise CacheArgumentTypeError(
            f"field name for {key!r} must be a str, got {type(field).__name__}"
        )
    if "\x00" in field:
        raise CacheArgumentError(f"field name {field!r} for {key!r} contains a NUL character")
    return field


def check_ttl(ttl: int | None, key: str) -> int | None:
    """TTLs are whole seconds > 0; ``None`` means "keep the document's current expiry"."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise CacheArgumentTypeError(f"ttl for {key!r} must be an int, got {type(ttl).__name__}")
    if ttl <= 0:
        raise CacheArgumentError(f"ttl for {key!r} must be > 0 seconds, got {ttl}")
    return ttl


def encode_value(key: str, field: str, value: Any) -> bytes:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise CacheArgumentTypeError(
            f"field {field!r} of {key!r} is not JSON-serializable: {exc}"
        ) from None


def encode_document(key: str, data: Any) -> Fields:
    """A dict or a Pydantic model → ``{field: JSON text}``."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif not isinstance(data, Mapping):
        raise CacheArgumentTypeError(
            f"data for {key!r} must be a dict or a Pydantic model, got {type(data).__name__}"
        )
    return {check_field(key, field): encode_value(key, field, v) for field, v in data.items()}


def encode_expected(key: str, expected: Any) -> Fields:
    """``replace_if``'s condition → ``{field: JSON text}``, encoded exactly as a write
    would encode the values, so a value read back from the cache always matches."""
    if not isinstance(expected, Mapping):
        raise CacheArgumentTypeError(
            f"expected for {key!r} must be a dict of field: value, got {type(expected).__name__}"
        )
    return {
        check_field(key, field): encode_value(key, field, value)
        for field, value in expected.items()
    }


def json_equal(stored: bytes, expected: bytes) -> bool:
    """Whether two fields' JSON texts hold the same JSON value, types kept: ``1``,
    ``1.0``, ``True`` and ``"1"`` all differ; object key order does not matter; floats
    compare as doubles (``0.1`` written by ``increment_field`` on Redis as
    ``0.10000000000000001`` is still ``0.1``). The Python twin of ``json_equal`` in
    ``replace_if.lua``; equal texts (the usual case) short-cut the decoding."""
    return stored == expected or _same(orjson.loads(stored), orjson.loads(expected))


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):  # bool is not int, int is not float
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def fields_match(stored: Mapping[str, bytes], expected: Fields) -> bool:
    """Whether every expected field is present and ``json_equal`` to its value (a
    missing field matches nothing, not even ``None``)."""
    for field, text in expected.items():
        current = stored.get(field)
        if current is None or not json_equal(current, text):
            return False
    return True


def decode_value(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def decode_document(fields: Mapping[str, bytes]) -> dict[str, Any]:
    return {field: orjson.loads(raw) for field, raw in fields.items()}


def to_model(key: str, document: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise CacheValidationError(key, model, str(exc)) from exc


def check_model(key: str, models: Any) -> None:
    if models is not None and not (isinstance(models, type) and issubclass(models, BaseModel)):
        raise CacheArgumentTypeError(
            f"models for {key!r} must be a Pydantic model class, got {models!r}"
        )


def check_increment(key: str, field: str, increment: Any) -> int | float:
    if isinstance(increment, bool) or not isinstance(increment, int | float):
        raise CacheArgumentTypeError(
            f"increment for field {field!r} of {key!r} must be an int or float, "
            f"got {type(increment).__name__}"
        )
    if isinstance(increment, float) and not math.isfinite(increment):
        raise CacheArgumentError(f"increment for field {field!r} of {key!r} must be finite")
    amount: int | float = increment  # still Any to mypy 1.10 (no int | float narrowing)
    return amount


def incremented(
    key: str, field: str, current: bytes | None, increment: int | float
) -> tuple[int | float, bytes]:
    """The Python twin of ``increment_field.lua``: a missing field starts at 0,
    int + int stays an int (64-bit, like Redis's HINCRBY), anything else is a float."""
    old = 0 if current is None else orjson.loads(current)
    if isinstance(old, bool) or not isinstance(old, int | float):
        raise CacheTypeError(key, field, "a number")
    new = old + increment
    if isinstance(new, int) and not _INT64_MIN <= new <= _INT64_MAX:
        raise CacheArgumentError(f"incrementing field {field!r} of {key!r} would overflow")
    if isinstance(new, float) and not math.isfinite(new):
        raise CacheArgumentError(f"incrementing field {field!r} of {key!r} would overflow")
    return new, orjson.dumps(new)


def appended(key: str, field: str, current: bytes | None, value: bytes) -> bytes:
    """The Python twin of ``append_to_list.lua``: text surgery on the stored JSON array,
    so no backend re-encodes (and so perturbs) the items already there."""
    if current is None or current == b"[]":
        return b"[" + value + b"]"
    if not current.startswith(b"["):
        raise CacheTypeError(key, field, "a list")
    return current[:-1] + b"," + value + b"]"


def ttl_seconds(remaining: float) -> int:
    """Seconds left, rounded as Redis's TTL command rounds them."""
    return max(0, int(remaining + 0.5))
