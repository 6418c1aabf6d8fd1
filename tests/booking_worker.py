"""The body of one process in the booking race (run with the spawn start method)."""

from __future__ import annotations

import asyncio
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import orjson

from parley.cache import create_cache_factory
from parley.cache.redis import close_pools

SLOTS = 10
ATTEMPTS = 50


async def _book(backend: str, overrides: dict[str, Any], index: int, barrier: Barrier) -> list[Any]:
    """50 attempts, passes over the 10 slots in the same order as every other process,
    each pass starting at a shared barrier so that the processes really collide. Each
    attempt books its slot both ways: ``create_if_absent`` on "bookings" and
    ``replace_if(expected={"holder": None})`` on "slots" (rows made free beforehand)."""
    table = create_cache_factory(backend, **overrides)(tenant_id="tenant").create_table_cache()
    records: list[Any] = []
    for attempt in range(ATTEMPTS):
        if attempt % SLOTS == 0:
            barrier.wait(timeout=120)
        slot = str(attempt % SLOTS)
        mine = {"holder": f"{index}-{attempt}", "slot": slot}
        created = await table.create_if_absent("bookings", slot, mine)
        replaced = await table.replace_if("slots", slot, mine, {"holder": None})
        records.append(
            {
                "mine": mine,
                "create": created.outcome.value,
                "create_current": created.current,
                "replace": replaced.outcome.value,
                "replace_current": replaced.current,
            }
        )
    await close_pools()
    return records


async def _book_naively(
    backend: str, overrides: dict[str, Any], index: int, barrier: Barrier
) -> list[Any]:
    """The same passes done as get-then-set: what conditional writes replace. Each pass
    races fresh slots (once a slot is taken every later naive attempt sees it), so the
    50 attempts are 50 chances to double-book."""
    table = create_cache_factory(backend, **overrides)(tenant_id="tenant").create_table_cache()
    booked: list[Any] = []
    for attempt in range(ATTEMPTS):
        if attempt % SLOTS == 0:
            barrier.wait(timeout=120)
        slot = f"{attempt // SLOTS}-{attempt % SLOTS}"
        if await table.get("naive", slot) is None:
            await table.set("naive", slot, {"holder": f"{index}-{attempt}"})
            booked.append(slot)
    await close_pools()
    return booked


def run(
    backend: str,
    overrides: dict[str, Any],
    index: int,
    naive: bool,
    barrier: Barrier,
    out: Path,
) -> None:
    body = _book_naively if naive else _book
    out.write_bytes(orjson.dumps(asyncio.run(body(backend, overrides, index, barrier))))
