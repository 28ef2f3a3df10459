"""Cluster-wide limits, such as concurrent associations per PACS, as picklable objects.

Operators take a ``limit`` callable and stay free of Dask; the pipeline hands
them a :class:`ClusterLimit`, which becomes a ``distributed.Semaphore`` inside
the task, shared by every worker of the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from distributed import Semaphore


@dataclass(frozen=True)
class ClusterLimit:
    """At most ``max_leases`` holders at once across the cluster, under ``name``."""

    name: str
    max_leases: int

    def __call__(self) -> Semaphore:
        return Semaphore(max_leases=self.max_leases, name=self.name)


def associations_limit(address: object, max_associations: int) -> ClusterLimit:
    """The limit shared by every task that opens associations (or HTTP requests) to one
    peer, whatever it does there (retrieve or store)."""
    return ClusterLimit(f"dicomflow-peer-{address}", max_associations)
