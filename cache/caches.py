"""The three caches a handler gets: state, user and table.

They differ only in how a caller's key becomes a document key; everything
else (checks, encoding, models, TTL arguments) is ``DocumentCache``, once,
over whichever ``Store`` the factory chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from parley.cache.codec import (
    check_field,
    check_increment,
    check_model,
    check_ttl,
    decode_document,
    decode_value,
    encode_document,
    encode_expected,
    encode_value,
    to_model,
)
from parley.cache.errors import CacheArgumentTypeError
from parley.cache.interface import ICache
from parley.cache.keys import KeyFactory
from parley.cache.results import WriteOutcome, WriteResult
from parley.cache.store import Store

M = TypeVar("M", bound=BaseModel)
_UNSET: Any = object()


class DocumentCache(ICache):
    """Implements ``ICache`` on resolved document keys; subclasses resolve them."""

    def __init__(
        self, store: Store, keys: KeyFactory, tenant_id: str, default_ttl: int | None = None
    ) -> None:
        self._store = store
        self._keys = keys
        self.tenant_id = tenant_id
        self.default_ttl = default_ttl

    def _address(self, key: str) -> str:
        raise NotImplementedError

    # -- the operations on a resolved document key ---------------------------------------

    async def _get(self, doc: str, models: type[M] | None) -> dict[str, Any] | M | None:
        check_model(doc, models)
        fields = await self._store.get(doc)
        if fields is None:
            return None
        document = decode_document(fields)
        return document if models is None else to_model(doc, document, models)

    async def _set(self, doc: str, data: Any, ttl: int | None) -> bool:
        fields = encode_document(doc, data)
        await self._store.set(doc, fields, check_ttl(ttl, doc), self.default_ttl)
        return True

    async def _get_field(self, doc: str, field: str) -> Any | None:
        return decode_value(await self._store.get_field(doc, check_field(doc, field)))

    async def _set_field(self, doc: str, field: str, value: Any, ttl: int | None) -> bool:
        text = encode_value(doc, check_field(doc, field), value)
        await self._store.set_field(doc, field, text, check_ttl(ttl, doc), self.default_ttl)
        return True

    async def _increment_field(
        self, doc: str, field: str, increment: Any, ttl: int | None
    ) -> int | float:
        check_field(doc, field)
        amount = check_increment(doc, field, increment)
        return await self._store.increment_field(
            doc, field, amount, check_ttl(ttl, doc), self.default_ttl
        )

    async def _append_to_list(self, doc: str, field: str, value: Any, ttl: int | None) -> bool:
        text = encode_value(doc, check_field(doc, field), value)
        await self._store.append_to_list(doc, field, text, check_ttl(ttl, doc), self.default_ttl)
        return True

    async def _set_ttl(self, doc: str, ttl: int) -> bool:
        if ttl is None:
            raise CacheArgumentTypeError(f"ttl for {doc!r} is required")
        return await self._store.set_ttl(doc, check_ttl(ttl, doc))  # type: ignore[arg-type]

    async def _create_if_absent(
        self, doc: str, data: Any, ttl: int | None, models: type[M] | None
    ) -> WriteResult[Any]:
        check_model(doc, models)
        fields = encode_document(doc, data)
        outcome, current = await self._store.create_if_absent(
            doc, fields, check_ttl(ttl, doc), self.default_ttl
        )
        return self._result(doc, outcome, current, models)

    async def _replace_if(
        self, doc: str, data: Any, expected: Any, ttl: int | None, models: type[M] | None
    ) -> WriteResult[Any]:
        check_model(doc, models)
        fields = encode_document(doc, data)
        condition = encode_expected(doc, expected)
        outcome, current = await self._store.replace_if(doc, fields, condition, check_ttl(ttl, doc))
        return self._result(doc, outcome, current, models)

    @staticmethod
    def _result(
        doc: str, outcome: WriteOutcome, fields: Mapping[str, bytes] | None, models: type[M] | None
    ) -> WriteResult[Any]:
        if fields is None:
            return WriteResult(outcome, None, doc)
        document = decode_document(fields)
        return WriteResult(
            outcome, document if models is None else to_model(doc, document, models), doc
        )

    # -- the public API on the caller's key ----------------------------------------------

    @overload
    async def get(self, key: str, models: None = None) -> dict[str, Any] | None: ...
    @overload
    async def get(self, key: str, models: type[M]) -> M | None: ...
    async def get(self, key: str, models: type[M] | None = None) -> dict[str, Any] | M | None:
        return await self._get(self._address(key), models)

    async def set(self, key: str, data: dict[str, Any] | BaseModel, ttl: int | None = None) -> bool:
        return await self._set(self._address(key), data, ttl)

    async def delete(self, key: str) -> bool:
        return await self._store.delete(self._address(key))

    async def exists(self, key: str) -> bool:
        return await self._store.exists(self._address(key))

    async def get_field(self, key: str, field: str) -> Any | None:
        return await self._get_field(self._address(key), field)

    async def set_field(self, key: str, field: str, value: Any, ttl: int | None = None) -> bool:
        return await self._set_field(self._address(key), field, value, ttl)

    async def increment_field(
        self, key: str, field: str, increment: int | float = 1, ttl: int | None = None
    ) -> int | float:
        return await self._increment_field(self._address(key), field, increment, ttl)

    async def append_to_list(
        self, key: str, field: str, value: Any, ttl: int | None = None
    ) -> bool:
        return await self._append_to_list(self._address(key), field, value, ttl)

    async def get_ttl(self, key: str) -> int:
        return await self._store.get_ttl(self._address(key))

    async def set_ttl(self, key: str, ttl: int) -> bool:
        return await self._set_ttl(self._address(key), ttl)

    async def create_if_absent(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        ttl: int | None = None,
        *,
        models: type[M] | None = None,
    ) -> WriteResult[Any]:
        return await self._create_if_absent(self._address(key), data, ttl, models)

    async def replace_if(
        self,
        key: str,
        data: dict[str, Any] | BaseModel,
        expected: dict[str, Any],
        ttl: int | None = None,
        *,
        models: type[M] | None = None,
    ) -> WriteResult[Any]:
        return await self._replace_if(self._address(key), data, expected, ttl, models)


class UserScopedCache(DocumentCache):
    """A cache of one user's documents (state and user caches)."""

    def __init__(
        self,
        store: Store,
        keys: KeyFactory,
        tenant_id: str,
        user_id: str,
        default_ttl: int | None = None,
    ) -> None:
        super().__init__(store, keys, tenant_id, default_ttl)
        self.user_id = user_id


class StateCache(UserScopedCache):
    """Conversation state of one user: ``{tenant}:state:{key}:{user}``."""

    def _address(self, key: str) -> str:
        return self._keys.handler(self.tenant_id, key, self.user_id)


class UserCache(UserScopedCache):
    """One user's documents. ``"profile"`` (the default key) is the user's main document
    ``{tenant}:user:{user}``; any other key is its own document, so writing ``"stats"``
    can never wipe the profile."""

    PROFILE = "profile"

    def _address(self, key: str) -> str:
        if key == self.PROFILE:
            return self._keys.user(self.tenant_id, self.user_id)
        return self._keys.user_document(self.tenant_id, self.user_id, key)

    @overload
    async def get(self, key: str = PROFILE, models: None = None) -> dict[str, Any] | None: ...
    @overload
    async def get(self, key: str, models: type[M]) -> M | None: ...
    async def get(
        self, key: str = PROFILE, models: type[M] | None = None
    ) -> dict[str, Any] | M | None:
        return await super().get(key, models)


class TableCache(DocumentCache):
    """Tenant-wide tables. Every call takes ``(table, pk, ...)`` or the one-key form:
    ``"table:pk"`` (see ``ICache.create_table_key``) for a row, or a name without ':'
    for a tenant-wide document such as the spec's ``"stats"``."""

    def _address(self, key: str) -> str:
        return self._row(key, None)

    def _row(self, table: str, pk: str | None) -> str:
        if pk is not None:
            return self._keys.table(self.tenant_id, table, pk)
        if not isinstance(table, str):
            raise CacheArgumentTypeError(f"table key must be a str, got {type(table).__name__}")
        name, colon, row = table.partition(":")
        return self._keys.table(self.tenant_id, name, row if colon else None)

    async def get(  # type: ignore[override]
        self, table: str, pk: str | None = None, models: type[M] | None = None
    ) -> dict[str, Any] | M | None:
        if isinstance(pk, type):  # get("products:pizza_large", Product)
            pk, models = None, pk
        return await self._get(self._row(table, pk), models)

    async def set(  # type: ignore[override]
        self, table: str, pk_or_data: Any, data: Any = _UNSET, ttl: int | None = None
    ) -> bool:
        if data is _UNSET:
            return await self._set(self._row(table, None), pk_or_data, ttl)
        return await self._set(self._row(table, pk_or_data), data, ttl)

    async def delete(self, table: str, pk: str | None = None) -> bool:
        return await self._store.delete(self._row(table, pk))

    async def exists(self, table: str, pk: str | None = None) -> bool:
        return await self._store.exists(self._row(table, pk))

    async def get_field(  # type: ignore[override]
        self, table: str, pk_or_field: str, field: str = _UNSET
    ) -> Any | None:
        if field is _UNSET:
            return await self._get_field(self._row(table, None), pk_or_field)
        return await self._get_field(self._row(table, pk_or_field), field)

    async def set_field(  # type: ignore[override]
        self, table: str, a: str, b: Any, c: Any = _UNSET, ttl: int | None = None
    ) -> bool:
        if c is _UNSET:  # (key, field, value)
            return await self._set_field(self._row(table, None), a, b, ttl)
        return await self._set_field(self._row(table, a), b, c, ttl)  # (table, pk, field, value)

    async def increment_field(  # type: ignore[override]
        self,
        table: str,
        a: str,
        b: Any = _UNSET,
        c: Any = _UNSET,
        *,
        increment: int | float = _UNSET,
        ttl: int | None = None,
    ) -> int | float:
        if isinstance(b, str):  # (table, pk, field[, increment])
            amount = c if c is not _UNSET else increment
            doc, field = self._row(table, a), b
        else:  # (key, field[, increment])
            amount = b if b is not _UNSET else increment
            doc, field = self._row(table, None), a
        return await self._increment_field(doc, field, 1 if amount is _UNSET else amount, ttl)

    async def append_to_list(  # type: ignore[override]
        self, table: str, a: str, b: Any, c: Any = _UNSET, ttl: int | None = None
    ) -> bool:
        if c is _UNSET:  # (key, field, value)
            return await self._append_to_list(self._row(table, None), a, b, ttl)
        return await self._append_to_list(self._row(table, a), b, c, ttl)

    async def get_ttl(self, table: str, pk: str | None = None) -> int:
        return await self._store.get_ttl(self._row(table, pk))

    async def set_ttl(  # type: ignore[override]
        self, table: str, pk_or_ttl: Any, ttl: int = _UNSET
    ) -> bool:
        if ttl is _UNSET:
            return await self._set_ttl(self._row(table, None), pk_or_ttl)
        return await self._set_ttl(self._row(table, pk_or_ttl), ttl)

    # -- conditional writes: (table, pk, data, ...) or the one-key form (key, data, ...) --

    def _one_key(self, pk: Any) -> bool:
        """The one-key form puts the data where the pk goes; a pk of any other type
        (an int, say) is a two-key call, and the key check names it."""
        return isinstance(pk, Mapping | BaseModel)

    @overload  # type: ignore[override]
    async def create_if_absent(
        self,
        table: str,
        pk: Any,
        data: Any = ...,
        ttl: int | None = None,
        *,
        models: None = None,
    ) -> WriteResult[dict[str, Any]]: ...
    @overload
    async def create_if_absent(
        self, table: str, pk: Any, data: Any = ..., ttl: int | None = None, *, models: type[M]
    ) -> WriteResult[M]: ...
    async def create_if_absent(
        self,
        table: str,
        pk: Any,
        data: Any = _UNSET,
        ttl: int | None = None,
        *,
        models: type[M] | None = None,
    ) -> WriteResult[Any]:
        """``create_if_absent("bookings", "slot-10", data)``, or in the one-key form
        ``create_if_absent("bookings:slot-10", data, ttl=...)``."""
        if self._one_key(pk):
            doc = self._row(table, None)
            if data is not _UNSET:
                raise CacheArgumentTypeError(
                    f"create_if_absent({table!r}, data, ...): pass ttl= by keyword"
                )
            return await self._create_if_absent(doc, pk, ttl, models)
        doc = self._row(table, pk)
        if data is _UNSET:
            raise CacheArgumentTypeError(f"create_if_absent on {doc!r} needs the data to write")
        return await self._create_if_absent(doc, data, ttl, models)

    @overload  # type: ignore[override]
    async def replace_if(
        self,
        table: str,
        pk: Any,
        data: Any = ...,
        expected: Any = ...,
        ttl: int | None = None,
        *,
        models: None = None,
    ) -> WriteResult[dict[str, Any]]: ...
    @overload
    async def replace_if(
        self,
        table: str,
        pk: Any,
        data: Any = ...,
        expected: Any = ...,
        ttl: int | None = None,
        *,
        models: type[M],
    ) -> WriteResult[M]: ...
    async def replace_if(
        self,
        table: str,
        pk: Any,
        data: Any = _UNSET,
        expected: Any = _UNSET,
        ttl: int | None = None,
        *,
        models: type[M] | None = None,
    ) -> WriteResult[Any]:
        """``replace_if("bookings", "slot-10", data, {"holder": None})``, or in the
        one-key form ``replace_if("bookings:slot-10", data, {"holder": None}, ttl=...)``."""
        if self._one_key(pk):
            doc = self._row(table, None)
            if data is not _UNSET and expected is not _UNSET:
                raise CacheArgumentTypeError(
                    f"replace_if({table!r}, data, expected, ...): pass ttl= by keyword"
                )
            condition = expected if data is _UNSET else data
            if condition is _UNSET:
                raise CacheArgumentTypeError(f"replace_if on {doc!r} needs expected={{...}}")
            return await self._replace_if(doc, pk, condition, ttl, models)
        doc = self._row(table, pk)
        if data is _UNSET or expected is _UNSET:
            raise CacheArgumentTypeError(
                f"replace_if on {doc!r} needs the data to write and expected={{...}}"
            )
        return await self._replace_if(doc, data, expected, ttl, models)
