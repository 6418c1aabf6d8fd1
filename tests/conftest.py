from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from parley.cache import CacheFactory, create_cache_factory
from parley.cache.memory import MemoryCacheFactory
from parley.cache.redis import close_pools
from parley.testing import FakeGraphAPI, RedisServer
from tests.rabbitmq import Admin, private_vhost, shared_admin

BACKENDS = ["memory", "json", "redis"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def graph() -> Iterator[FakeGraphAPI]:
    """Meta's Graph API, faked as a real HTTP server the workers reply to."""
    with FakeGraphAPI(token="test-token") as fake:
        yield fake


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The tests' own server, emptied (it is ours: never a shared one)."""
    redis_server.client().flushall()
    return redis_server.url


def make_factory(
    backend: str, request: pytest.FixtureRequest, cache_dir: Path, **overrides: object
) -> type[CacheFactory]:
    url = request.getfixturevalue("redis_url") if backend == "redis" else "redis://127.0.0.1:1"
    MemoryCacheFactory.clear()
    return create_cache_factory(backend, redis_url=url, json_cache_dir=cache_dir, **overrides)


@pytest.fixture(params=BACKENDS)
async def factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[type[CacheFactory]]:
    """One cache factory class per backend, each on fresh, private storage."""
    yield make_factory(request.param, request, tmp_path / "cache")
    await close_pools()


@pytest.fixture
def ingress(redis_url: str) -> Iterator[httpx.Client]:
    """The ingress app served over real HTTP on the tests' redis-server."""
    from parley.asgi import create_ingress
    from tests.helpers import make_settings
    from tests.http_server import ServedApp

    with (
        ServedApp(create_ingress(make_settings(redis_url))) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        yield client


@pytest.fixture
def rabbitmq_admin() -> Admin:
    """The machine's RabbitMQ, administered for the tests (skips where none answers)."""
    return shared_admin()


@pytest.fixture
def amqp_url(rabbitmq_admin: Admin) -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:5672/<a vhost of this test's own>``, deleted after."""
    with private_vhost(rabbitmq_admin) as url:
        yield url
