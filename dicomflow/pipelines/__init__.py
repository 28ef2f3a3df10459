"""Pipelines: compile source → operators → sinks into a Dask graph and run it."""

from dicomflow.pipelines.cluster import open_client
from dicomflow.pipelines.pipeline import PartitionResult, Pipeline, RunSummary, run_partition
from dicomflow.pipelines.plan import Partition, PartitionPolicy, plan_partitions
from dicomflow.pipelines.scan import scan_pipeline

__all__ = [
    "Partition",
    "PartitionPolicy",
    "PartitionResult",
    "Pipeline",
    "RunSummary",
    "open_client",
    "plan_partitions",
    "run_partition",
    "scan_pipeline",
]
