"""Split a listing into partitions: deterministic, big enough to amortise task overhead.

A distributed task costs a few milliseconds, so a partition holds at least
``min_files`` inputs; it is capped by count and by bytes so that memory stays
bounded. The split depends only on the inputs, never on the number of workers,
so every cluster size writes the same parts under the same names.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicomflow.records import SourceRef


@dataclass(frozen=True)
class PartitionPolicy:
    """How inputs are grouped into partitions."""

    min_files: int = 100
    max_files: int = 500
    max_bytes: int = 2 * 1024**3
    target_partitions: int = 16


@dataclass(frozen=True)
class Partition:
    """One unit of work. ``name`` is a digest of its inputs: stable and free of PHI."""

    index: int
    name: str
    refs: tuple[SourceRef, ...]

    @property
    def size_bytes(self) -> int:
        return sum(ref.size or 0 for ref in self.refs)


def _digest(refs: Sequence[SourceRef]) -> str:
    h = hashlib.sha256()
    for ref in refs:
        stamp = ref.modified.isoformat() if ref.modified else ""
        identity = ref.label if ref.label is not None else ref.url
        h.update(f"{identity}\0{ref.size}\0{stamp}\n".encode())
    return h.hexdigest()[:20]


def plan_partitions(
    refs: Sequence[SourceRef], policy: PartitionPolicy | None = None
) -> list[Partition]:
    """Group sorted ``refs`` into partitions according to ``policy``."""
    policy = policy or PartitionPolicy()
    if not refs:
        return []
    per_partition = math.ceil(len(refs) / policy.target_partitions)
    per_partition = max(policy.min_files, min(policy.max_files, per_partition))
    return split_partitions(refs, lambda _remaining: per_partition, policy.max_bytes)


def split_partitions(
    refs: Sequence[SourceRef], size_for: Callable[[int], int], max_bytes: int
) -> list[Partition]:
    """Cut ``refs``, in order, into partitions: each holds ``size_for(inputs left)`` inputs
    (asked as it starts), or fewer where ``max_bytes`` would be passed."""
    groups: list[list[SourceRef]] = []
    group_bytes = size = 0
    for remaining, ref in zip(range(len(refs), 0, -1), refs, strict=True):
        nbytes = ref.size or 0
        if not groups or len(groups[-1]) >= size or group_bytes + nbytes > max_bytes:
            size = size_for(remaining)
            groups.append([])
            group_bytes = 0
        groups[-1].append(ref)
        group_bytes += nbytes
    return [partition_named(i, g) for i, g in enumerate(groups)]


def partition_named(index: int, refs: Sequence[SourceRef]) -> Partition:
    """A partition of exactly ``refs`` (for example one series), named by their digest."""
    return Partition(index, f"part-{_digest(refs)}", tuple(refs))
