"""The scan pipeline: files → read headers → flatten → lake (or back to the caller)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomflow._version import __version__
from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import config_digest
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.pipeline import Pipeline
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.sinks import CollectSink, LakeSink, Sink


def scan_pipeline(
    sources: Sequence[str],
    *,
    out: str | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
) -> Pipeline:
    """Build the metadata scan: into the lake at ``out``, or collected when ``out`` is None."""
    options = dict(storage_options or {})
    config = config_digest({"job": "scan", "operators": ["flatten"], "version": __version__})
    sink: Sink = LakeSink(LakeLayout(out, options), config) if out else CollectSink()
    return Pipeline(
        source=FilesConnector(tuple(sources), options),
        operators=(Flatten(),),
        sinks=(sink,),
        policy=policy or PartitionPolicy(),
    )
