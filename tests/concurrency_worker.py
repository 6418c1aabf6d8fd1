"""The body of one process in the multi-process cache tests (run with the spawn start method)."""

from __future__ import annotations

import asyncio
from multiprocessing.synchronize import Barrier
from typing import Any

from parley.cache import create_cache_factory
from parley.cache.redis import close_pools

DOC = "shared"


async def _run(
    backend: str, overrides: dict[str, Any], index: int, rounds: int, naive: bool
) -> None:
    factory = create_cache_factory(backend, **overrides)
    table = factory(tenant_id="tenant").create_table_cache()
    for j in range(rounds):
        if naive:  # read-modify-write from the client: what the caches must not do
            doc = await table.get(DOC) or {}
            doc["n"] = doc.get("n", 0) + 1
            doc["items"] = [*doc.get("items", []), f"{index}-{j}"]
            await table.set(DOC, doc)
        else:
            await table.increment_field(DOC, "n", 1)
            await table.increment_field(DOC, "f", 0.5)
            await table.append_to_list(DOC, "items", f"{index}-{j}")
            await table.set_field(DOC, f"p{index}_{j}", j)
    await close_pools()


def run(
    backend: str, overrides: dict[str, Any], index: int, rounds: int, naive: bool, barrier: Barrier
) -> None:
    barrier.wait(timeout=60)  # start together, so the processes really interleave
    asyncio.run(_run(backend, overrides, index, rounds, naive))
