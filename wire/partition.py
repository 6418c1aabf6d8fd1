"""Partition routing: which queue a user's webhooks go to.

The hash is BLAKE2b over the tenant and user ids — the same answer in every process,
machine and Python version (``hash()`` is salted per process) — so every ingress
and worker agrees on where a user lives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def partition_for(tenant_id: str, user_id: str, partitions: int) -> int:
    digest = hashlib.blake2b(
        f"{len(tenant_id)}:{tenant_id}:{user_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % partitions


def parse_partitions(spec: str, partitions: int) -> list[int]:
    """``"0-7,12"`` → ``[0, 1, ..., 7, 12]``, checked against the partition count."""
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                chosen.update(range(low, high + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise ValueError(f"bad partition range {part!r} in {spec!r}") from None
    outside = sorted(p for p in chosen if not 0 <= p < partitions)
    if outside:
        raise ValueError(f"partitions {outside} outside 0-{partitions - 1} in {spec!r}")
    if not chosen:
        raise ValueError(f"no partitions in {spec!r}")
    return sorted(chosen)


def format_partitions(partitions: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7, 9, 10]`` → ``"0-3,7,9-10"``: ``parse_partitions``'s syntax."""
    spans: list[str] = []
    ordered = sorted(set(partitions))
    start = 0
    for i, k in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != k + 1:
            first = ordered[start]
            spans.append(str(k) if first == k else f"{first}-{k}")
            start = i + 1
    return ",".join(spans)
