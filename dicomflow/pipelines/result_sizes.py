"""What the pipelines' task results weigh, for Dask's memory manager.

Dask sizes an object of a type it does not know as ``sys.getsizeof`` of the object
alone. A reading result holding a 1.4 MB ``instances`` table and 200 records counted
as 56 bytes: the workers never spilled held results to disk, however many the run
kept, and the scheduler placed each series' commit without knowing where the bulk
of its rows was. The modules that define result types register their sizes with
:func:`dask.sizeof.sizeof`, built from the helpers here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from dask.sizeof import sizeof

from dicomflow.dicom.elements import Elements
from dicomflow.records import Header, InstanceRecord

SAMPLED_RECORDS = 16  # records measured in full; a result's other records are alike


def mapping_bytes(mapping: Mapping[Any, Any]) -> int:
    """A dict and every key and value in it (Dask's own dict size samples ten values,
    and a row's one large value, its header as DICOM JSON, is easily missed)."""
    return sys.getsizeof(mapping) + sum(
        sizeof(key) + (mapping_bytes(value) if isinstance(value, Mapping) else sizeof(value))
        for key, value in mapping.items()
    )


def items_bytes(items: Sequence[Any]) -> int:
    """A sequence and each item in it, all measured (Dask's own samples ten at random)."""
    return sys.getsizeof(items) + sum(map(sizeof, items))


def elements_bytes(elements: Elements) -> int:
    """A parsed header tree: each element and its value, sequences item by item."""
    total = sys.getsizeof(elements)
    for element in elements:
        total += sys.getsizeof(element)
        if element.vr == "SQ" and isinstance(element.value, tuple):  # items of elements
            total += sys.getsizeof(element.value) + sum(map(elements_bytes, element.value))
        elif element.value is not None:
            total += sizeof(element.value)
    return total


def header_bytes(header: Header) -> int:
    return (
        sys.getsizeof(header) + elements_bytes(header.elements) + elements_bytes(header.file_meta)
    )


def record_bytes(record: InstanceRecord) -> int:
    """One record: its reference, outputs (rows), header and error."""
    total = sys.getsizeof(record) + sys.getsizeof(record.ref) + sizeof(record.ref.url)
    total += mapping_bytes(record.outputs)
    if record.header is not None:
        total += header_bytes(record.header)
    for problem in record.problems:
        total += sys.getsizeof(problem) + sizeof(problem.message)
    return total


def records_bytes(records: Sequence[InstanceRecord]) -> int:
    """Records of one task: up to :data:`SAMPLED_RECORDS` of them, evenly spread, measured
    in full and scaled to the count (the same every time, unlike Dask's random sample)."""
    count = len(records)
    if count == 0:
        return sys.getsizeof(records)
    step = max(1, count // SAMPLED_RECORDS)
    sample = records[::step][:SAMPLED_RECORDS]
    measured = sum(map(record_bytes, sample))
    return sys.getsizeof(records) + measured * count // len(sample)


sizeof.register(InstanceRecord, record_bytes)
