"""One suite, every backend: DESIGN.md's cache semantics, TTL rules, models and errors."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from parley.cache import (
    CacheArgumentError,
    CacheArgumentTypeError,
    CacheError,
    CacheFactory,
    CacheTypeError,
    CacheUnavailableError,
    CacheValidationError,
    ICache,
    KeyFactory,
    WriteOutcome,
    WriteResult,
    create_cache_factory,
)
from parley.cache.redis import close_pools
from parley.testing import free_port
from tests.conftest import BACKENDS, make_factory

TENANT, USER = "hotel123", "1234567890"


@pytest.fixture
def caches(factory: type[CacheFactory]) -> tuple[ICache, ICache, ICache]:
    f = factory(tenant_id=TENANT, user_id=USER)
    return f.create_state_cache(), f.create_user_cache(), f.create_table_cache()


@pytest.fixture
def state(caches: tuple[ICache, ICache, ICache]) -> ICache:
    return caches[0]


@pytest.fixture
def users(caches: tuple[ICache, ICache, ICache]) -> ICache:
    return caches[1]


@pytest.fixture
def table(caches: tuple[ICache, ICache, ICache]) -> ICache:
    return caches[2]


async def wait_until_missing(cache: ICache, key: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await cache.exists(key):
        assert time.monotonic() < deadline, f"{key} did not expire"
        await _tick()


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.05)


# -- documents ----------------------------------------------------------------------------


async def test_json_types_survive(state: ICache) -> None:
    doc = {
        "int": 1,
        "true": True,
        "str1": "1",
        "zeros": "042",
        "none": None,
        "empty": [],
        "obj": {},
        "float": 15.99,
        "whole_float": 2.0,
        "nested": {"a": [1, {"b": None}]},
        "unicode": "¡Hola! 🍕",
        "big": 2**62,
        "neg": -3,
    }
    assert await state.set("doc", doc) is True
    got = await state.get("doc")
    assert got == doc
    assert [type(got[k]) for k in doc] == [type(v) for v in doc.values()]


async def test_get_returns_a_copy(state: ICache) -> None:
    doc = {"items": [1]}
    await state.set("doc", doc)
    doc["items"].append(2)
    first = await state.get("doc")
    first["items"].append(3)
    assert await state.get("doc") == {"items": [1]}


async def test_missing_document(state: ICache) -> None:
    assert await state.get("nope") is None
    assert await state.get_field("nope", "x") is None
    assert await state.exists("nope") is False
    assert await state.delete("nope") is False


async def test_set_replaces_the_whole_document(state: ICache) -> None:
    await state.set("doc", {"a": 1, "b": 2})
    await state.set("doc", {"c": 3})
    assert await state.get("doc") == {"c": 3}
    assert await state.get_field("doc", "a") is None


async def test_empty_document_exists(state: ICache) -> None:
    await state.set("doc", {})
    assert await state.exists("doc") is True
    assert await state.get("doc") == {}
    assert await state.delete("doc") is True
    assert await state.exists("doc") is False


async def test_fields(state: ICache) -> None:
    assert await state.set_field("doc", "step", "size") is True  # creates the document
    assert await state.get("doc") == {"step": "size"}
    await state.set_field("doc", "toppings", ["cheese"])
    assert await state.get_field("doc", "toppings") == ["cheese"]
    assert await state.get_field("doc", "missing") is None
    assert await state.get("doc") == {"step": "size", "toppings": ["cheese"]}


async def test_increment(state: ICache) -> None:
    assert await state.increment_field("c", "n") == 1
    assert await state.increment_field("c", "n", 5) == 6
    assert type(await state.increment_field("c", "n", -2)) is int
    assert await state.increment_field("c", "f", 0.1) == 0.1
    assert await state.increment_field("c", "f", 0.2) == 0.1 + 0.2
    assert await state.increment_field("c", "n", 0.5) == 4.5
    whole = await state.increment_field("c", "w", 1.0)
    assert whole == 1.0 and type(whole) is float
    assert type(await state.increment_field("c", "w", 1)) is float
    assert await state.get("c") == {"n": 4.5, "f": 0.1 + 0.2, "w": 2.0}
    await state.set_field("c", "big", 2**62)  # beyond a double's exact integers
    assert await state.increment_field("c", "big", 1) == 2**62 + 1
    with pytest.raises(CacheArgumentError, match="overflow"):
        await state.increment_field("c", "big", 2**62)
    assert await state.get_field("c", "big") == 2**62 + 1


@pytest.mark.parametrize("value", ["5", True, None, [1], {"a": 1}])
async def test_increment_non_number_leaves_document_unchanged(state: ICache, value: object) -> None:
    await state.set("c", {"x": value, "other": 1})
    with pytest.raises(CacheTypeError, match=r"'x'.*hotel123:state:c:1234567890"):
        await state.increment_field("c", "x", 1)
    assert await state.get("c") == {"x": value, "other": 1}


async def test_append(state: ICache) -> None:
    assert await state.append_to_list("order", "items", "pizza_large") is True
    await state.append_to_list("order", "items", {"q": 2, "n": None})
    await state.append_to_list("order", "items", [1, "2"])
    assert await state.get_field("order", "items") == ["pizza_large", {"q": 2, "n": None}, [1, "2"]]
    await state.set("order", {"items": []})
    await state.append_to_list("order", "items", 1)
    assert await state.get("order") == {"items": [1]}


@pytest.mark.parametrize("value", ["[1]", 1, {"a": 1}, None])
async def test_append_to_non_list_leaves_document_unchanged(state: ICache, value: object) -> None:
    await state.set("order", {"items": value})
    with pytest.raises(CacheTypeError, match="'items'"):
        await state.append_to_list("order", "items", 2)
    assert await state.get("order") == {"items": value}


# -- TTL ----------------------------------------------------------------------------------


async def test_ttl_rules(state: ICache) -> None:
    assert await state.get_ttl("doc") == -2
    await state.set("doc", {"a": 1})
    assert await state.get_ttl("doc") == -1
    assert await state.set_ttl("doc", 100) is True
    assert 99 <= await state.get_ttl("doc") <= 100
    # ttl=None keeps the current expiry, on every kind of write
    await state.set_field("doc", "b", 2)
    await state.increment_field("doc", "n")
    await state.append_to_list("doc", "l", 1)
    await state.set("doc", {"replaced": True})
    assert 98 <= await state.get_ttl("doc") <= 100
    await state.set_field("doc", "b", 2, ttl=500)
    assert 499 <= await state.get_ttl("doc") <= 500
    await state.set("doc", {"x": 1}, ttl=50)
    assert 49 <= await state.get_ttl("doc") <= 50
    assert await state.set_ttl("missing", 10) is False
    assert await state.get_ttl("missing") == -2


async def test_expired_documents_are_gone(state: ICache) -> None:
    await state.set("doc", {"a": 1}, ttl=1)
    await wait_until_missing(state, "doc")
    assert await state.get("doc") is None
    assert await state.get_ttl("doc") == -2
    # a field write after expiry creates a fresh document with no expiry
    await state.set_field("doc", "b", 1)
    assert await state.get("doc") == {"b": 1}
    assert await state.get_ttl("doc") == -1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_default_ttl_applies_on_create_only(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    factory = make_factory(backend, request, tmp_path / "cache", state_cache_ttl=300)
    state = factory(tenant_id=TENANT, user_id=USER).create_state_cache()
    await state.set("a", {"x": 1})
    await state.set_field("b", "x", 1)
    await state.increment_field("c", "x")
    await state.append_to_list("d", "x", 1)
    for key in "abcd":
        assert 299 <= await state.get_ttl(key) <= 300, key
    await state.set("e", {"x": 1}, ttl=1000)
    await state.set_field("e", "y", 2)
    await state.set("e", {"z": 3})
    assert 998 <= await state.get_ttl("e") <= 1000
    # the user cache has its own default: none
    users = factory(tenant_id=TENANT, user_id=USER).create_user_cache()
    await users.set("profile", {"x": 1})
    assert await users.get_ttl("profile") == -1
    from parley.cache.redis import close_pools

    await close_pools()


# -- models -------------------------------------------------------------------------------


class Address(BaseModel):
    city: str
    zip: str | None = None


class Customer(BaseModel):
    name: str
    tier: str = "basic"
    email: str | None = None
    addresses: list[Address] = []
    joined: datetime = Field(default_factory=lambda: datetime(2025, 1, 15, 10, 30, tzinfo=UTC))
    tags: set[str] = set()
    score: float = 0.0


async def test_models_round_trip(users: ICache) -> None:
    customer = Customer(
        name="Alice",
        email=None,
        addresses=[Address(city="Lima"), Address(city="Cusco", zip="08")],
        joined=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        tags={"vip"},
        score=1.5,
    )
    await users.set("profile", customer)
    assert await users.get("profile", models=Customer) == customer
    raw = await users.get("profile")
    assert raw["joined"] == "2025-03-01T12:00:00.123456Z"
    assert raw["addresses"][1] == {"city": "Cusco", "zip": "08"}


async def test_invalid_document_for_model(users: ICache) -> None:
    await users.set("profile", {"tier": "gold"})  # no name
    with pytest.raises(CacheValidationError, match=r"hotel123:user:1234567890.*Customer"):
        await users.get("profile", models=Customer)
    assert await users.get("missing", models=Customer) is None


async def test_model_values_in_fields(users: ICache) -> None:
    await users.set_field("profile", "address", Address(city="Lima"))
    await users.append_to_list("profile", "history", Address(city="Cusco"))
    assert await users.get("profile") == {
        "address": {"city": "Lima", "zip": None},
        "history": [{"city": "Cusco", "zip": None}],
    }


# -- argument errors ----------------------------------------------------------------------


def bad_calls(state: ICache) -> list[tuple[type[Exception], Coroutine[Any, Any, Any]]]:
    """Calls whose arguments are wrong, and the error each must raise."""
    return [
        (CacheArgumentError, state.set("", {"a": 1})),
        (CacheArgumentError, state.set_field("doc", "a\x00b", 1)),
        (CacheArgumentError, state.set("doc", {"a\x00": 1})),
        (CacheArgumentTypeError, state.set("doc", ["a", 1])),
        (CacheArgumentTypeError, state.set("doc", None)),
        (CacheArgumentTypeError, state.set("doc", "text")),
        (CacheArgumentTypeError, state.set("doc", {"a": object()})),
        (CacheArgumentTypeError, state.set("doc", {1: "a"})),
        (CacheArgumentTypeError, state.set_field("doc", 1, "a")),
        (CacheArgumentError, state.set("doc", {"a": 1}, ttl=0)),
        (CacheArgumentError, state.set_ttl("doc", -5)),
        (CacheArgumentTypeError, state.set("doc", {"a": 1}, ttl="60")),
        (CacheArgumentTypeError, state.set("doc", {"a": 1}, ttl=True)),
        (CacheArgumentTypeError, state.increment_field("doc", "a", "1")),
        (CacheArgumentTypeError, state.increment_field("doc", "a", True)),
        (CacheArgumentError, state.increment_field("doc", "a", float("nan"))),
        (CacheArgumentTypeError, state.get("doc", models=dict)),
        (CacheArgumentTypeError, state.get(None)),
        (CacheArgumentTypeError, state.create_if_absent("doc", ["a", 1])),
        (CacheArgumentTypeError, state.create_if_absent("doc", {"a": object()})),
        (CacheArgumentError, state.create_if_absent("doc", {"a\x00": 1})),
        (CacheArgumentError, state.create_if_absent("doc", {"a": 1}, ttl=0)),
        (CacheArgumentTypeError, state.create_if_absent("doc", {"a": 1}, models=dict)),
        (CacheArgumentTypeError, state.replace_if("doc", {"a": 2}, ["a"])),  # type: ignore[arg-type]
        (CacheArgumentTypeError, state.replace_if("doc", {"a": 2}, None)),  # type: ignore[arg-type]
        (CacheArgumentError, state.replace_if("doc", {"a": 2}, {"a\x00": 1})),
        (CacheArgumentTypeError, state.replace_if("doc", {"a": 2}, {"a": object()})),
        (CacheArgumentTypeError, state.replace_if("doc", "text", {"a": 1})),  # type: ignore[arg-type]
        (CacheArgumentTypeError, state.replace_if("doc", {"a": 2}, {"a": 1}, ttl="9")),  # type: ignore[arg-type]
        (CacheArgumentError, state.replace_if("", {"a": 2}, {"a": 1})),
    ]


async def test_argument_errors_change_nothing(state: ICache) -> None:
    await state.set("doc", {"a": 1})
    for error, call in bad_calls(state):
        with pytest.raises(error):
            await call
    assert await state.get("doc") == {"a": 1}
    assert issubclass(CacheArgumentError, ValueError) and issubclass(CacheArgumentError, CacheError)
    assert issubclass(CacheArgumentTypeError, TypeError)


@pytest.mark.parametrize("backend", ["json", "redis"])
async def test_argument_errors_raise_before_io(backend: str, tmp_path: Path) -> None:
    """Against a store nothing can reach (Redis on a port nothing listens on; JSON files
    under a regular file, where no folder can be made or read): any I/O before the
    arguments' check would raise CacheUnavailableError instead of the argument error."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    factory = create_cache_factory(
        backend, redis_url=f"redis://127.0.0.1:{free_port()}", json_cache_dir=blocker / "cache"
    )
    state = factory(tenant_id=TENANT, user_id=USER).create_state_cache()
    try:
        with pytest.raises(CacheUnavailableError):  # unreachable indeed
            await state.get("doc")
        for error, call in bad_calls(state):
            with pytest.raises(error):
                await call
    finally:
        await close_pools()


async def test_factory_needs_ids(factory: type[CacheFactory]) -> None:
    with pytest.raises(CacheArgumentError):
        factory(tenant_id="", user_id="1")
    with pytest.raises(CacheArgumentError):
        factory(tenant_id="t").create_state_cache()
    factory(tenant_id="t").create_table_cache()  # tenant-wide: no user needed


# -- conditional writes -------------------------------------------------------------------


class Booking(BaseModel):
    holder: str | None = None
    party: int = 2


async def test_create_if_absent(table: ICache) -> None:
    first = await table.create_if_absent("slots", "10", {"holder": "ana", "party": 2})
    assert first.outcome is WriteOutcome.CREATED and first.applied and bool(first) is True
    assert first.current is None and first.key == "hotel123:df:slots:pkid:10"
    second = await table.create_if_absent("slots", "10", {"holder": "bob"})
    assert second.outcome is WriteOutcome.ALREADY_EXISTS and not second
    assert second.current == {"holder": "ana", "party": 2}
    assert await table.get("slots", "10") == {"holder": "ana", "party": 2}
    # an empty document exists too; the one-key form addresses the same row
    assert await table.create_if_absent("slots", "11", {})
    taken = await table.create_if_absent(ICache.create_table_key("slots", "11"), {"x": 1})
    assert taken.outcome is WriteOutcome.ALREADY_EXISTS and taken.current == {}
    assert (await table.create_if_absent("slots:12", {"holder": "cy"})).applied
    assert await table.get("slots", "12") == {"holder": "cy"}
    # after a delete, the row can be created again
    assert await table.delete("slots", "10") is True
    assert (await table.create_if_absent("slots", "10", {"holder": "bob"})).applied


async def test_replace_if(table: ICache) -> None:
    missing = await table.replace_if("slots", "10", {"holder": "ana"}, {"holder": None})
    assert missing.outcome is WriteOutcome.MISSING and not missing and missing.current is None
    assert await table.exists("slots", "10") is False  # never creates
    await table.set("slots", "10", {"holder": None, "party": 2, "note": "window"})
    done = await table.replace_if("slots", "10", {"holder": "ana", "party": 4}, {"holder": None})
    assert done.outcome is WriteOutcome.REPLACED and done and done.current is None
    # the whole document is replaced: no stale field survives, like set
    assert await table.get("slots", "10") == {"holder": "ana", "party": 4}
    lost = await table.replace_if("slots", "10", {"holder": "bob"}, {"holder": None})
    assert lost.outcome is WriteOutcome.CONDITION_NOT_MET and not lost
    assert lost.current == {"holder": "ana", "party": 4}
    # every expected field must match; a missing field matches nothing, not even None
    partly = await table.replace_if("slots", "10", {}, {"holder": "ana", "party": 2})
    assert partly.outcome is WriteOutcome.CONDITION_NOT_MET
    absent = await table.replace_if("slots", "10", {}, {"note": None})
    assert absent.outcome is WriteOutcome.CONDITION_NOT_MET
    both = await table.replace_if("slots", "10", {"holder": "bob"}, {"holder": "ana", "party": 4})
    assert both.outcome is WriteOutcome.REPLACED
    # expected={} means "replace if the row exists"
    assert (await table.replace_if("slots", "10", {"v": 1}, {})).applied
    assert (await table.replace_if("slots", "99", {"v": 1}, {})).outcome is WriteOutcome.MISSING
    # the one-key form, positional or with expected= by keyword
    key = ICache.create_table_key("slots", "10")
    assert (await table.replace_if(key, {"v": 2}, {"v": 1})).applied
    assert (await table.replace_if(key, {"v": 3}, expected={"v": 2})).applied
    assert await table.get(key) == {"v": 3}


#: (stored, expected): different JSON values, one pair per way to confuse them
DIFFERENT = [
    (1, True),
    (True, 1),
    (1, "1"),
    ("1", 1),
    (1, 1.0),
    (1.0, 1),
    (0, False),
    (0, None),
    ("", None),
    (None, False),
    ("042", 42),
    ([], {}),
    ([1, 2], [2, 1]),
    ([1], [1.0]),
    ([1], [True]),
    ({"a": 1}, {"a": True}),
    ({"a": 1}, {"a": 1, "b": None}),
    ({"a": {"b": 1}}, {"a": {"b": 1.0}}),
    (2**62 + 1, 2**62),  # beyond a double's exact integers
    ([2**62 + 1], [2**62]),
    ("pizza", "Pizza"),
    ("café", "cafe"),
]

#: (stored, expected): the same JSON value
SAME = [
    (None, None),
    (False, False),
    (0, 0),
    (-3, -3),
    (2**62 + 1, 2**62 + 1),
    (1.5, 1.5),
    (0.0, -0.0),
    ("", ""),
    ('¡Hola! 🍕 "x" \n', '¡Hola! 🍕 "x" \n'),
    ([], []),
    ({}, {}),
    ({"a": 1, "b": [1, {"c": None}]}, {"b": [1, {"c": None}], "a": 1}),  # key order
    ([{"x": 1.25, "y": "2"}, [True]], [{"y": "2", "x": 1.25}, [True]]),
]


@pytest.mark.parametrize(("stored", "expected"), DIFFERENT)
async def test_replace_if_keeps_json_types(table: ICache, stored: Any, expected: Any) -> None:
    await table.set("t", "pk", {"v": stored})
    result = await table.replace_if("t", "pk", {"v": "new"}, {"v": expected})
    assert result.outcome is WriteOutcome.CONDITION_NOT_MET
    assert result.current == {"v": stored}
    assert [type(v) for v in result.current.values()] == [type(stored)]
    assert await table.get("t", "pk") == {"v": stored}


@pytest.mark.parametrize(("stored", "expected"), SAME)
async def test_replace_if_matches_equal_json(table: ICache, stored: Any, expected: Any) -> None:
    await table.set("t", "pk", {"v": stored})
    assert (await table.replace_if("t", "pk", {"v": "new"}, {"v": expected})).applied
    assert await table.get("t", "pk") == {"v": "new"}


async def test_replace_if_matches_what_other_operations_wrote(table: ICache) -> None:
    """A value read back always matches, whichever operation wrote it: a float sum
    (stored by Redis's script with 17 digits: 0.1 as 0.10000000000000001), a list built
    by appends, a model's dump."""
    await table.increment_field("t", "pk", "f", 0.1)
    await table.increment_field("t", "pk", "sum", 0.1)
    await table.increment_field("t", "pk", "sum", 0.2)
    await table.increment_field("t", "pk", "n", 2**62)
    await table.increment_field("t", "pk", "n", 1)
    await table.append_to_list("t", "pk", "items", {"b": 1, "a": [1.5]})
    await table.append_to_list("t", "pk", "items", "x")
    await table.set_field("t", "pk", "booking", Booking(holder="ana"))
    read = await table.get("t", "pk")
    assert read is not None
    assert read["f"] == 0.1 and read["sum"] == 0.1 + 0.2 and read["n"] == 2**62 + 1
    assert (await table.replace_if("t", "pk", {"done": True}, read)).applied
    await table.set("t", "pk", {"booking": {"party": 2, "holder": "ana"}})
    assert (await table.replace_if("t", "pk", {}, {"booking": Booking(holder="ana")})).applied


async def test_conditional_writes_ttl_rules(table: ICache) -> None:
    # create: ttl=None applies the default (none here); a ttl applies it
    await table.create_if_absent("t", "a", {"x": 1})
    assert await table.get_ttl("t", "a") == -1
    await table.create_if_absent("t", "b", {"x": 1}, ttl=100)
    assert 99 <= await table.get_ttl("t", "b") <= 100
    # a create that did not apply leaves the row's expiry alone
    await table.create_if_absent("t", "b", {"x": 2}, ttl=500)
    assert 99 <= await table.get_ttl("t", "b") <= 100
    # replace: ttl=None keeps the current expiry (none stays none), a ttl sets it
    assert (await table.replace_if("t", "b", {"x": 2}, {"x": 1})).applied
    assert 98 <= await table.get_ttl("t", "b") <= 100
    assert (await table.replace_if("t", "a", {"x": 2}, {"x": 1})).applied
    assert await table.get_ttl("t", "a") == -1
    assert (await table.replace_if("t", "a", {"x": 3}, {"x": 2}, ttl=300)).applied
    assert 299 <= await table.get_ttl("t", "a") <= 300
    # a replace whose condition failed leaves the expiry alone
    assert not await table.replace_if("t", "a", {"x": 4}, {"x": 0}, ttl=10)
    assert 298 <= await table.get_ttl("t", "a") <= 300


async def test_conditional_writes_on_expired_rows(table: ICache) -> None:
    await table.set("t", "a", {"x": 1}, ttl=1)
    await table.set("t", "b", {"x": 1}, ttl=1)
    await wait_until_missing(table, ICache.create_table_key("t", "a"))
    await wait_until_missing(table, ICache.create_table_key("t", "b"))
    # an expired row is no row: replace finds it MISSING, create creates it (no expiry)
    assert (await table.replace_if("t", "a", {"x": 2}, {"x": 1})).outcome is WriteOutcome.MISSING
    assert await table.exists("t", "a") is False
    assert (await table.create_if_absent("t", "b", {"x": 2})).applied
    assert await table.get("t", "b") == {"x": 2}
    assert await table.get_ttl("t", "b") == -1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_conditional_writes_default_ttl(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    factory = make_factory(backend, request, tmp_path / "cache", table_cache_ttl=300)
    table = factory(tenant_id=TENANT).create_table_cache()
    try:
        assert (await table.create_if_absent("t", "a", {"x": 1})).applied
        assert 299 <= await table.get_ttl("t", "a") <= 300
        assert (await table.create_if_absent("t", "b", {"x": 1}, ttl=1000)).applied
        assert 999 <= await table.get_ttl("t", "b") <= 1000
        # replacing never creates, so the default never applies: the expiry is kept
        await table.set_ttl("t", "a", 50)
        assert (await table.replace_if("t", "a", {"x": 2}, {"x": 1})).applied
        assert 49 <= await table.get_ttl("t", "a") <= 50
    finally:
        await close_pools()


async def test_conditional_writes_models(table: ICache) -> None:
    created = await table.create_if_absent("t", "a", Booking(holder="ana"), models=Booking)
    assert created.applied and created.current is None
    taken = await table.create_if_absent("t", "a", Booking(holder="bob"), models=Booking)
    assert taken.current == Booking(holder="ana", party=2)
    lost = await table.replace_if("t", "a", Booking(holder="bob"), {"holder": None}, models=Booking)
    assert lost.outcome is WriteOutcome.CONDITION_NOT_MET
    assert isinstance(lost.current, Booking) and lost.current.holder == "ana"
    won = await table.replace_if("t", "a", Booking(holder="bob", party=3), {"holder": "ana"})
    assert won.applied
    assert await table.get("t", "a", Booking) == Booking(holder="bob", party=3)
    # a row that does not validate: the error names the key and the model
    await table.set("t", "bad", {"party": "many"})
    with pytest.raises(CacheValidationError, match=r"hotel123:df:t:pkid:bad.*Booking"):
        await table.create_if_absent("t", "bad", {"party": 1}, models=Booking)
    with pytest.raises(CacheValidationError, match=r"hotel123:df:t:pkid:bad.*Booking"):
        await table.replace_if("t", "bad", {}, {"party": 1}, models=Booking)
    assert await table.get("t", "bad") == {"party": "many"}


async def test_conditional_writes_on_state_and_user_caches(state: ICache, users: ICache) -> None:
    assert (await state.create_if_absent("pizza_order", {"step": "size"})).applied
    again = await state.create_if_absent("pizza_order", {"step": "new"})
    assert again.outcome is WriteOutcome.ALREADY_EXISTS and again.current == {"step": "size"}
    assert (await state.replace_if("pizza_order", {"step": "crust"}, {"step": "size"})).applied
    assert await state.get("pizza_order") == {"step": "crust"}
    assert (await users.create_if_absent("profile", Booking(holder="ana"))).applied
    result = await users.replace_if("profile", {"holder": "x"}, {"party": 3}, models=Booking)
    assert result.outcome is WriteOutcome.CONDITION_NOT_MET
    assert result.current == Booking(holder="ana")
    assert await users.get() == {"holder": "ana", "party": 2}


async def test_conditional_write_argument_errors_name_the_row(table: ICache) -> None:
    await table.set("t", "a", {"x": 1})
    with pytest.raises(CacheArgumentTypeError, match=r"expected for 'hotel123:df:t:pkid:a'"):
        await table.replace_if("t", "a", {"x": 2}, [("x", 1)])
    with pytest.raises(CacheArgumentError, match=r"field name 'x\\x00'.*pkid:a"):
        await table.replace_if("t", "a", {"x": 2}, {"x\x00": 1})
    with pytest.raises(CacheArgumentTypeError, match=r"field 'x' of 'hotel123:df:t:pkid:a'"):
        await table.replace_if("t", "a", {"x": 2}, {"x": {1, 2}})
    with pytest.raises(CacheArgumentTypeError, match="needs the data"):
        await table.create_if_absent("t", "a")
    with pytest.raises(CacheArgumentTypeError, match="needs the data to write and expected"):
        await table.replace_if("t", "a", {"x": 2})
    with pytest.raises(CacheArgumentTypeError, match="pass ttl= by keyword"):
        await table.create_if_absent("t:a", {"x": 2}, 60)
    with pytest.raises(CacheArgumentTypeError, match="table must be a str"):
        await table.create_if_absent(None, "a", {"x": 2})
    with pytest.raises(CacheArgumentTypeError, match="pk must be a str, got int"):
        await table.create_if_absent("t", 10, {"x": 2})
    with pytest.raises(CacheArgumentError, match="table must not be empty"):
        await table.replace_if("", "a", {"x": 2}, {"x": 1})
    assert await table.get("t", "a") == {"x": 1}


def test_write_result_is_a_frozen_value() -> None:
    result: WriteResult[dict[str, Any]] = WriteResult(WriteOutcome.CREATED, None, "k")
    assert result == WriteResult(WriteOutcome.CREATED, None, "k") and result.applied
    with pytest.raises(AttributeError):
        result.outcome = WriteOutcome.MISSING  # type: ignore[misc]
    assert WriteOutcome("condition_not_met") is WriteOutcome.CONDITION_NOT_MET
    assert not WriteResult(WriteOutcome.MISSING) and not WriteResult(WriteOutcome.ALREADY_EXISTS)


# -- keys, scoping, isolation -------------------------------------------------------------


def test_key_factory_produces_the_spec_keys() -> None:
    keys = KeyFactory(
        user_prefix="user", handler_prefix="state", table_prefix="df", pk_marker="pkid"
    )
    assert keys.user("hotel123", "1234567890") == "hotel123:user:1234567890"
    assert keys.handler("hotel123", "pizza_order", "1234567890") == (
        "hotel123:state:pizza_order:1234567890"
    )
    assert keys.table("hotel123", "products", "pizza_large") == (
        "hotel123:df:products:pkid:pizza_large"
    )
    assert keys.user("t", "+51 999") == "t:user:+51%20999"
    assert keys.user("a:b", "c") != keys.user("a", "b:c")
    assert keys.user("a%3Ab", "c") != keys.user("a:b", "c")
    assert ICache.create_table_key("user:profiles", "john:smith:123") == (
        "user_profiles:john_smith_123"
    )


async def test_user_documents_are_separate(users: ICache) -> None:
    await users.set("profile", {"name": "Sarah"})
    await users.set("stats", {"message_count": 1})
    await users.set_field("stats", "points", 100)
    assert await users.get() == {"name": "Sarah"}  # key defaults to "profile"
    assert await users.get("stats") == {"message_count": 1, "points": 100}


async def test_table_forms(table: ICache) -> None:
    await table.set("products", "pizza_large", {"name": "Large Pizza", "price": 15.99})
    key = ICache.create_table_key("products", "pizza_large")
    assert await table.get(key) == await table.get("products", "pizza_large")
    assert await table.get_field("products", "pizza_large", "price") == 15.99
    assert await table.get_field(key, "price") == 15.99
    await table.set_field("products", "pizza_large", "available", False)
    await table.set_field(key, "stock", 3)
    assert await table.increment_field("products", "pizza_large", "stock") == 4
    assert await table.increment_field("products", "pizza_large", "stock", 2) == 6
    assert await table.increment_field(key, "stock", -1) == 5
    await table.append_to_list("products", "pizza_large", "tags", "hot")
    await table.append_to_list(key, "tags", "new")
    assert await table.get("products", "pizza_large") == {
        "name": "Large Pizza",
        "price": 15.99,
        "available": False,
        "stock": 5,
        "tags": ["hot", "new"],
    }
    # a tenant-wide document, named without ':'
    assert await table.increment_field("stats", "messages_2025-01-15", 1, ttl=86400) == 1
    await table.append_to_list("stats", "active_users_2025-01-15", "123", ttl=86400)
    assert await table.get("stats") == {
        "messages_2025-01-15": 1,
        "active_users_2025-01-15": ["123"],
    }
    assert 86399 <= await table.get_ttl("stats") <= 86400
    assert await table.set_ttl("products", "pizza_large", 60) is True
    assert 59 <= await table.get_ttl(key) <= 60
    assert await table.exists("products", "pizza_large") is True
    assert await table.delete(key) is True
    assert await table.exists("products", "pizza_large") is False


async def test_isolation(factory: type[CacheFactory]) -> None:
    a1 = factory(tenant_id="A", user_id="1")
    a2 = factory(tenant_id="A", user_id="2")
    b1 = factory(tenant_id="B", user_id="1")
    for f in (a1, a2, b1):
        who = f"{f.tenant_id}/{f.user_id}"
        await f.create_state_cache().set("flow", {"who": who})
        await f.create_user_cache().set("profile", {"who": who})
    await a1.create_table_cache().set("t", "pk", {"tenant": "A"})
    for f in (a1, a2, b1):
        who = f"{f.tenant_id}/{f.user_id}"
        assert await f.create_state_cache().get("flow") == {"who": who}
        assert await f.create_user_cache().get("profile") == {"who": who}
    assert await a2.create_table_cache().get("t", "pk") == {"tenant": "A"}  # tenant-wide
    assert await b1.create_table_cache().get("t", "pk") is None


HOSTILE = [
    "a",
    "a:b",
    "b:c",
    "a_b",
    "b_c",
    "c",
    "*",
    "?",
    "[",
    "]",
    "a*",
    "../",
    "../../etc/passwd",
    "..",
    ".",
    "/",
    "a b",
    " ",
    "ünï©ødé",
    "🍕",
    "x" * 1024,
    "a%3Ab",
    "a~b",
    "\\",
    "\x00",
    "state",
    "user",
    "df",
    "pkid",
]


async def test_hostile_ids_never_collide_or_escape(
    factory: type[CacheFactory], tmp_path: Path
) -> None:
    pairs = [(t, u) for t in HOSTILE[:12] for u in ("c", "b:c", "*", "../x", "x" * 1024)]
    pairs += [(t, "1") for t in HOSTILE]
    for tenant, user in pairs:
        f = factory(tenant_id=tenant, user_id=user)
        me = [tenant, user]
        await f.create_state_cache().set(user, {"me": me})
        await f.create_user_cache().set(tenant, {"me": me})
        await f.create_user_cache().set_field("profile", "me", me)
        await f.create_table_cache().set(tenant, user, {"me": me})
        await f.create_table_cache().increment_field(user, "n")
    for tenant, user in pairs:
        f = factory(tenant_id=tenant, user_id=user)
        me = [tenant, user]
        assert await f.create_state_cache().get(user) == {"me": me}
        assert await f.create_user_cache().get(tenant) == {"me": me}
        assert await f.create_user_cache().get() == {"me": me}
        assert await f.create_table_cache().get(tenant, user) == {"me": me}
    # every document has a key of its own, and (json) no file lies outside the cache folder
    assert await document_count(factory, tmp_path / "cache") == 5 * len(set(pairs))
    assert [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "cache")] == []
    for tenant, user in set(pairs):
        table = factory(tenant_id=tenant, user_id=user).create_table_cache()
        assert await table.get_field(user, "n") == 1


async def document_count(factory: type[CacheFactory], cache_dir: Path) -> int:
    if factory.backend == "memory":
        from parley.cache.memory import MemoryCacheFactory

        return sum(len(store) for store in MemoryCacheFactory.stores.values())
    if factory.backend == "json":
        return len(list(cache_dir.rglob("*.json")))
    from redis.asyncio import Redis

    total = 0
    for kind in ("user", "state", "table"):
        client = Redis.from_url(factory.settings.url_for(kind))  # type: ignore[union-attr]
        total += await client.dbsize()
        await client.aclose()
    return total
