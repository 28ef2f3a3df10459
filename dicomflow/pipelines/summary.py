"""The outcome of a run: counts, error codes, timing and where its report went."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from dicomflow.pipelines.deid_proof import Proof
from dicomflow.records import InstanceRecord


@dataclass
class RunSummary:
    """The outcome of a run, for the CLI summary and the notebook API."""

    run_id: str
    files: int = 0
    rows: int = 0
    errors: int = 0
    skipped: int = 0  # inputs a previous run already committed
    faults: int = 0  # error rows of inputs that kept their row (an operator failed on them)
    seconds: float = 0.0
    error_codes: Counter[str] = field(default_factory=Counter)
    tables: dict[str, list[pa.Table]] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, inputs done)
    slowest: list[tuple[float, int, str]] = field(default_factory=list)  # (s, inputs, source)
    report: str | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)
    first_result_seconds: float | None = None  # from the summary's start to the first commit
    proof: Proof | None = None  # an --anonymize run's de-identification proof

    def add_faults(self, records: Sequence[InstanceRecord]) -> None:
        """Count the failed ``records`` as error rows of instances that keep their row
        (made after the run's partitions: a commitment refused, a SEG not placed)."""
        for record in records:
            if record.error is not None:
                self.errors += 1
                self.faults += 1
                self.error_codes[str(record.error.code)] += 1

    @property
    def files_per_second(self) -> float:
        done = self.files - self.skipped
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def accounted(self) -> bool:
        """Every input became a row or an error row (now, or in a run it resumed)."""
        return self.rows + self.errors - self.faults + self.skipped == self.files
