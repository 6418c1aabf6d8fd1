"""Who may consume which partition: live nodes, rendezvous hashing and partition leases.

All state lives in the pipeline DB, so any number of nodes on any machines agree:

- ``parley:nodes`` — a sorted set of live nodes, each scored with the time (Redis's
  clock) its heartbeat runs out;
- ``parley:lease:<k>`` — partition k's lease: the holder's node name, with an expiry.
  Set only if free, renewed and released only by its holder (Lua), so two nodes never
  hold one partition at once.

Rendezvous (highest-random-weight) hashing picks each partition's owner from the live
nodes alone — no coordinator, no stored assignment — and a node joining or leaving
moves only about 1/N of the partitions.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import cast

import redis

from parley.cache.lua import lua
from parley.wire.keys import NODES, OWNERSHIP_CHANNEL, lease_key


def weight(node: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{partition}:{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(partitions: int, nodes: Iterable[str]) -> dict[int, str]:
    """Each partition's owner among the live nodes: rendezvous hashing with bounded
    loads. (partition, node) pairs are taken by descending weight, skipping nodes that
    have their share already (floor(P/N) in a first pass, one more in a second), so every
    node owns floor or ceil of P/N, while a join or leave still moves only about 1/N of
    the partitions."""
    live = sorted(set(nodes))
    if not live:
        return {}
    return _assignment(partitions, tuple(live))


@functools.lru_cache(maxsize=64)
def _assignment(partitions: int, live: tuple[str, ...]) -> dict[int, str]:
    pairs = sorted(
        ((weight(node, k), node, k) for k in range(partitions) for node in live), reverse=True
    )
    owners: dict[int, str] = {}
    load = dict.fromkeys(live, 0)
    share = partitions // len(live)
    for cap in (share, share + 1):  # everyone gets its floor first, then the remainder
        for _, node, k in pairs:
            if k not in owners and load[node] < cap:
                owners[k] = node
                load[node] += 1
    return owners


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Leases:
    """One node's view of the registry and its leases (synchronous: it runs on the
    ownership thread, beside the worker's event loop, not on it)."""

    def __init__(self, client: redis.Redis, node: str, ttl: float) -> None:
        self.client = client
        self.node = node
        self.ttl_ms = max(1, int(ttl * 1000))
        self._heartbeat, self._acquire, self._renew, self._release = (
            client.register_script(lua("parley.workers", name))
            for name in ("heartbeat", "lease_acquire", "lease_renew", "lease_release")
        )

    def heartbeat(self) -> list[str]:
        """Register this node as live for one more ttl; returns every live node."""
        return [_text(n) for n in self._heartbeat(keys=[NODES], args=[self.node, self.ttl_ms])]

    def leave(self) -> None:
        self.client.zrem(NODES, self.node)
        self.client.publish(OWNERSHIP_CHANNEL, f"left {self.node}")

    def acquire(self, partition: int) -> bool:
        return bool(self._acquire(keys=[lease_key(partition)], args=[self.node, self.ttl_ms]))

    def renew(self, partitions: Iterable[int]) -> set[int]:
        """Renew these leases; returns the ones this node still holds."""
        chosen = sorted(partitions)
        if not chosen:
            return set()
        held = self._renew(keys=[lease_key(k) for k in chosen], args=[self.node, self.ttl_ms])
        return {k for k, ok in zip(chosen, held, strict=True) if ok}

    def release(self, partitions: Iterable[int]) -> int:
        chosen = sorted(partitions)
        if not chosen:
            return 0
        released = self._release(keys=[lease_key(k) for k in chosen], args=[self.node])
        self.client.publish(OWNERSHIP_CHANNEL, f"released {self.node}")
        return int(released)

    def announce(self) -> None:
        self.client.publish(OWNERSHIP_CHANNEL, f"joined {self.node}")


def live_nodes(client: redis.Redis) -> dict[str, float]:
    """Live nodes and when (epoch seconds) each one's heartbeat runs out."""
    scored = cast("list[tuple[bytes, float]]", client.zrange(NODES, 0, -1, withscores=True))
    return {_text(node): score / 1000 for node, score in scored}


def holders(client: redis.Redis, partitions: int) -> list[str | None]:
    """Each partition's lease holder (None: nobody)."""
    values = client.mget([lease_key(k) for k in range(partitions)])
    return [_text(v) if v is not None else None for v in values]
