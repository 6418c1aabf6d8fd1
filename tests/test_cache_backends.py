"""What only one backend can show: Redis layout, pools, scripts and outages; JSON files;
memory sweeping."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from parley.cache import CacheUnavailableError, ICache, create_cache_factory
from parley.cache.json_files import JSONCacheFactory
from parley.cache.memory import MemoryCacheFactory, MemoryStore
from parley.cache.redis import close_pools
from parley.testing import RedisServer, free_port

TENANT, USER = "hotel123", "1234567890"


@pytest.fixture
async def redis_factory(redis_url: str):  # type: ignore[no-untyped-def]
    yield create_cache_factory("redis", redis_url=redis_url)
    await close_pools()


async def test_spec_key_table_on_the_wire(redis_factory, redis_server: RedisServer) -> None:  # type: ignore[no-untyped-def]
    f = redis_factory(tenant_id=TENANT, user_id=USER)
    await f.create_state_cache().set("pizza_order", {"step": "size"})
    await f.create_user_cache().set("profile", {"name": "John"})
    await f.create_table_cache().set("products", "pizza_large", {"price": 15.99})
    assert redis_server.client(1).keys() == [b"hotel123:state:pizza_order:1234567890"]
    assert redis_server.client(0).keys() == [b"hotel123:user:1234567890"]
    assert redis_server.client(2).keys() == [b"hotel123:df:products:pkid:pizza_large"]
    # one hash per document, one JSON text per top-level field
    stored = redis_server.client(2).hgetall("hotel123:df:products:pkid:pizza_large")
    assert orjson.loads(stored[b"price"]) == 15.99


async def test_each_cache_can_have_its_own_url(redis_url: str, redis_server: RedisServer) -> None:
    factory = create_cache_factory("redis", redis_url=redis_url, user_cache_url=f"{redis_url}/7")
    await factory(tenant_id=TENANT, user_id=USER).create_user_cache().set("profile", {"a": 1})
    assert redis_server.client(7).keys() == [b"hotel123:user:1234567890"]
    assert redis_server.client(0).keys() == []
    await close_pools()


async def test_scripts_survive_script_flush_and_restart(redis_factory) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer().start()
    try:
        factory = create_cache_factory("redis", redis_url=server.url)
        state = factory(tenant_id=TENANT, user_id=USER).create_state_cache()
        assert await state.increment_field("c", "n") == 1
        server.client().script_flush()
        assert await state.increment_field("c", "n") == 2
        server.stop()
        server.start()  # same port, empty (no persistence), no scripts loaded
        assert await state.increment_field("c", "n") == 1
        await state.append_to_list("c", "l", 1)
        assert await state.get("c") == {"n": 1, "l": [1]}
    finally:
        await close_pools()
        server.close()


async def test_backend_down_raises_for_every_operation() -> None:
    factory = create_cache_factory("redis", redis_url=f"redis://127.0.0.1:{free_port()}")
    state = factory(tenant_id=TENANT, user_id=USER).create_state_cache()
    calls = [
        state.get("k"),
        state.set("k", {"a": 1}),
        state.delete("k"),
        state.exists("k"),
        state.get_field("k", "a"),
        state.set_field("k", "a", 1),
        state.increment_field("k", "a"),
        state.append_to_list("k", "a", 1),
        state.get_ttl("k"),
        state.set_ttl("k", 5),
    ]
    for call in calls:
        with pytest.raises(CacheUnavailableError, match=r"hotel123:state:k:1234567890"):
            await call
    await close_pools()


async def test_concurrent_operations_wait_for_a_connection(
    redis_url: str, redis_server: RedisServer
) -> None:
    factory = create_cache_factory(
        "redis", redis_url=redis_url, table_cache_url=f"{redis_url}/9", redis_max_connections=8
    )
    table = factory(tenant_id=TENANT).create_table_cache()
    results = await asyncio.gather(
        *(table.append_to_list("stats", "items", i) for i in range(250)),
        *(table.increment_field("stats", "n") for _ in range(250)),
    )
    assert all(r is True for r in results[:250])
    assert sorted(results[250:]) == list(range(1, 251))
    document = await table.get("stats")
    assert sorted(document["items"]) == list(range(250)) and document["n"] == 250
    clients = redis_server.client().client_list()
    assert len([c for c in clients if c["db"] == "9"]) <= 8
    await close_pools()


async def test_caches_per_webhook_open_no_connections(
    redis_factory, redis_server: RedisServer
) -> None:  # type: ignore[no-untyped-def]
    await redis_factory(tenant_id=TENANT, user_id="0").create_user_cache().set("profile", {})
    before = redis_server.client().info("clients")["connected_clients"]
    for i in range(1000):
        f = redis_factory(tenant_id=TENANT, user_id=str(i))
        await f.create_user_cache().set_field("profile", "n", i)
        f.create_state_cache()
        f.create_table_cache()
    after = redis_server.client().info("clients")["connected_clients"]
    assert after == before


# -- JSON files ---------------------------------------------------------------------------


async def test_json_layout_is_readable(tmp_path: Path) -> None:
    factory = create_cache_factory("json", json_cache_dir=tmp_path)
    f = factory(tenant_id=TENANT, user_id="+1234567890")
    await f.create_user_cache().set("profile", {"name": "Sarah"}, ttl=60)
    await f.create_state_cache().set("pizza_order", {"step": "size"})
    await f.create_table_cache().set("products", "pizza_large", {"price": 15.99})
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json"))
    assert names == [
        "states/hotel123~state~pizza_order~+1234567890.json",
        "tables/hotel123~df~products~pkid~pizza_large.json",
        "users/hotel123~user~+1234567890.json",
    ]
    stored = orjson.loads((tmp_path / names[2]).read_bytes())
    assert stored["data"] == {"name": "Sarah"} and stored["key"] == "hotel123:user:+1234567890"
    assert stored["expires_at"] > time.time()
    assert not list(tmp_path.rglob(".tmp-*"))  # temp files renamed into place


async def test_json_disk_failure_raises(tmp_path: Path) -> None:
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the cache folder should be")
    factory = create_cache_factory("json", json_cache_dir=root)
    state = factory(tenant_id=TENANT, user_id=USER).create_state_cache()
    with pytest.raises(CacheUnavailableError, match=r"hotel123:state:k:1234567890|not-a-folder"):
        await state.set("k", {"a": 1})
    JSONCacheFactory.stores.clear()


async def test_json_corrupt_file_raises(tmp_path: Path) -> None:
    factory = create_cache_factory("json", json_cache_dir=tmp_path)
    state = factory(tenant_id=TENANT, user_id=USER).create_state_cache()
    await state.set("k", {"a": 1})
    next(tmp_path.rglob("*.json")).write_text("{not json")
    with pytest.raises(CacheUnavailableError, match="corrupt"):
        await state.get("k")


# -- memory -------------------------------------------------------------------------------


async def test_memory_sweeps_expired_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    now = [1000.0]
    monkeypatch.setattr(store, "_now", lambda: now[0])
    for i in range(100):
        await store.set(f"k{i}", {"a": b"1"}, ttl=10, default_ttl=None)
    await store.set("keep", {"a": b"1"}, ttl=None, default_ttl=None)
    assert len(store) == 101
    now[0] += 11  # every k* expired; the next write sweeps them
    await store.set("other", {"a": b"1"}, ttl=None, default_ttl=None)
    assert len(store) == 2


def test_memory_factory_shares_storage_in_the_process() -> None:
    MemoryCacheFactory.clear()
    assert MemoryCacheFactory(tenant_id="t", user_id="u").create_user_cache()._store is (
        MemoryCacheFactory(tenant_id="t", user_id="v").create_user_cache()._store
    )


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown cache backend 'mongo'"):
        create_cache_factory("mongo")


def test_icache_is_the_interface() -> None:
    f = MemoryCacheFactory(tenant_id="t", user_id="u")
    assert all(
        isinstance(c, ICache)
        for c in (f.create_state_cache(), f.create_user_cache(), f.create_table_cache())
    )
