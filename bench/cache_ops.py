"""Median latency of each Redis cache operation next to its floor, in the same run.

The floor is the raw redis.asyncio command that does the same work (or EVALSHA of a
minimal script where one command cannot), on the same server and connection pool
settings. Calls alternate between project and floor, so both see the same machine.

    python -m bench.cache_ops [--iterations N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

from parley.cache import create_cache_factory
from parley.cache.redis import close_pools
from parley.testing import RedisServer

Op = Callable[[], Awaitable[object]]


class Profile(BaseModel):
    name: str
    language: str = "en"
    message_count: int = 0
    tags: list[str] = []
    last_seen: datetime


MIN_SET = "redis.call('DEL', KEYS[1]) return redis.call('HSET', KEYS[1], unpack(ARGV))"
MIN_APPEND = (
    "local c = redis.call('HGET', KEYS[1], ARGV[1]) "
    "local n = c and (string.sub(c, 1, -2) .. ',' .. ARGV[2] .. ']') or ('[' .. ARGV[2] .. ']') "
    "return redis.call('HSET', KEYS[1], ARGV[1], n)"
)


#: the conditional writes' floors: the same work with no TTL rules, no type-aware
#: comparison (one field, compared as text) and no result decoding
MIN_CREATE = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end "
    "return redis.call('HSET', KEYS[1], unpack(ARGV))"
)
MIN_REPLACE = (
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
    "if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then "
    "return redis.call('HGETALL', KEYS[1]) end "
    "redis.call('DEL', KEYS[1]) return redis.call('HSET', KEYS[1], unpack(ARGV, 3))"
)
BOOKING = {"holder": "ana", "party": 2, "slot": "2025-01-15T20:00", "note": None}


async def measure(project: Op, floor: Op, iterations: int) -> tuple[float, float]:
    ours: list[int] = []
    raw: list[int] = []
    for _ in range(50):  # warm up connections and scripts
        await project()
        await floor()
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        await project()
        t1 = time.perf_counter_ns()
        await floor()
        t2 = time.perf_counter_ns()
        ours.append(t1 - t0)
        raw.append(t2 - t1)
    return statistics.median(ours) / 1000, statistics.median(raw) / 1000


async def main(iterations: int) -> None:
    server = RedisServer().start()
    try:
        factory = create_cache_factory("redis", redis_url=server.url)
        scoped = factory(tenant_id="hotel123", user_id="1234567890")
        users, table = scoped.create_user_cache(), scoped.create_table_cache()
        raw = Redis.from_url(f"{server.url}/5")
        min_set = raw.register_script(MIN_SET)
        min_append = raw.register_script(MIN_APPEND)
        profile = Profile(name="Sarah", tags=["vip"], last_seen=datetime.now(UTC))
        profile_fields = {k: orjson.dumps(v) for k, v in profile.model_dump(mode="json").items()}
        flat = [x for kv in profile_fields.items() for x in kv]
        await users.set("profile", profile)
        await raw.hset("raw:profile", mapping=profile_fields)
        min_create = raw.register_script(MIN_CREATE)
        min_replace = raw.register_script(MIN_REPLACE)
        booking_flat = [x for k, v in BOOKING.items() for x in (k, orjson.dumps(v))]
        holder = orjson.dumps(BOOKING["holder"])
        fresh = itertools.count()
        fresh_raw = itertools.count()
        await table.set("bookings", "taken", BOOKING)
        await raw.hset("raw:taken", mapping={k: orjson.dumps(v) for k, v in BOOKING.items()})

        cases: list[tuple[str, Op, Op]] = [
            (
                "get (model)",
                lambda: users.get("profile", models=Profile),
                lambda: raw.hgetall("raw:profile"),
            ),
            (
                "set (model)",
                lambda: users.set("profile", profile),
                lambda: min_set(keys=["raw:profile"], args=flat),
            ),
            (
                "get_field",
                lambda: users.get_field("profile", "name"),
                lambda: raw.hget("raw:profile", "name"),
            ),
            (
                "set_field",
                lambda: users.set_field("profile", "language", "es"),
                lambda: raw.hset("raw:profile", "language", '"es"'),
            ),
            (
                "increment_field",
                lambda: users.increment_field("profile", "message_count"),
                lambda: raw.hincrby("raw:profile", "message_count", 1),
            ),
            (
                "append_to_list",
                lambda: table.append_to_list("stats", "items", 1),
                lambda: min_append(keys=["raw:list"], args=["items", "1"]),
            ),
            (
                "create (new)",
                lambda: table.create_if_absent("bookings", f"n{next(fresh)}", BOOKING),
                lambda: min_create(keys=[f"raw:n{next(fresh_raw)}"], args=booking_flat),
            ),
            (
                "create (taken)",
                lambda: table.create_if_absent("bookings", "taken", BOOKING),
                lambda: min_create(keys=["raw:taken"], args=booking_flat),
            ),
            (
                "replace_if (met)",
                lambda: table.replace_if("bookings", "taken", BOOKING, {"holder": "ana"}),
                lambda: min_replace(keys=["raw:taken"], args=["holder", holder, *booking_flat]),
            ),
            (
                "replace_if (not)",
                lambda: table.replace_if("bookings", "taken", BOOKING, {"holder": "bob"}),
                lambda: min_replace(keys=["raw:taken"], args=["holder", b'"bob"', *booking_flat]),
            ),
        ]
        print(f"Redis cache ops, median of {iterations} calls each (µs), one client, loopback")
        print(f"{'operation':<18}{'parley':>10}{'floor':>10}{'ratio':>8}  floor is")
        floors = [
            "HGETALL",
            "EVALSHA DEL+HSET",
            "HGET",
            "HSET",
            "HINCRBY",
            "EVALSHA HGET+HSET",
            "EVALSHA EXISTS+HSET",
            "EVALSHA EXISTS+HGETALL",
            "EVALSHA HGET+DEL+HSET",
            "EVALSHA HGET+HGETALL",
        ]
        ratios = []
        for (name, project, floor), floor_name in zip(cases, floors, strict=True):
            ours, theirs = await measure(project, floor, iterations)
            ratios.append((name, ours / theirs))
            print(f"{name:<18}{ours:>10.1f}{theirs:>10.1f}{ours / theirs:>8.2f}  {floor_name}")
            if name == "append_to_list":  # keep the list from growing without bound
                await table.delete("stats")
        await raw.aclose()
        await close_pools()
        print("ratios: " + "  ".join(f"{name}={ratio:.2f}x" for name, ratio in ratios))
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3000)
    asyncio.run(main(parser.parse_args().iterations))
