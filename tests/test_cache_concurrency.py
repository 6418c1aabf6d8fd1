"""Eight processes hammer ONE document: the atomic operations lose nothing, and the same
work done as a client-side read-modify-write (the naive version) does lose updates, which
shows the test can tell the difference."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from parley.cache import create_cache_factory
from parley.cache.redis import close_pools
from tests import concurrency_worker

PROCESSES = 8
#: Rounds per process; each round is one of each atomic operation (or one naive update).
#: The JSON backend rewrites the whole file per operation, so it gets fewer rounds:
#: still 300 operations per process on the one document.
ROUNDS = {"redis": 300, "json": 75}


def run_processes(backend: str, overrides: dict[str, Any], naive: bool) -> int:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    processes = [
        ctx.Process(
            target=concurrency_worker.run,
            args=(backend, overrides, index, ROUNDS[backend], naive, barrier),
        )
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0, f"worker exited with {process.exitcode}"
    return ROUNDS[backend]


@pytest.fixture(params=["redis", "json"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "redis":
        return "redis", {"redis_url": request.getfixturevalue("redis_url")}
    return "json", {"json_cache_dir": str(tmp_path / "cache")}


async def read_document(backend: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    factory = create_cache_factory(backend[0], **backend[1])
    document = await factory(tenant_id="tenant").create_table_cache().get(concurrency_worker.DOC)
    await close_pools()
    assert document is not None
    return document


async def test_atomic_operations_lose_nothing(backend: tuple[str, dict[str, Any]]) -> None:
    rounds = run_processes(*backend, naive=False)
    document = await read_document(backend)
    total = PROCESSES * rounds
    assert document["n"] == total
    assert document["f"] == total * 0.5
    items = document["items"]
    assert len(items) == total and len(set(items)) == total
    for index in range(PROCESSES):  # each process's appends kept their order
        mine = [int(item.split("-")[1]) for item in items if item.startswith(f"{index}-")]
        assert mine == list(range(rounds))
    fields = {k for k in document if k.startswith("p")}
    assert len(fields) == total


async def test_naive_read_modify_write_loses_updates(backend: tuple[str, dict[str, Any]]) -> None:
    rounds = run_processes(*backend, naive=True)
    document = await read_document(backend)
    total = PROCESSES * rounds
    assert document["n"] < total, "the naive version lost nothing: the test cannot bite"
    assert len(document["items"]) < total
