"""Test helpers: run the read + flatten path in-process, and pydicom's view of the same file."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import valuerep
from pydicom.multival import MultiValue

from dicomflow.connectors.files import FilesConnector
from dicomflow.operators.flatten import OUTPUT, Flatten
from dicomflow.records import Batch, ErrorInfo, RunContext, SourceRef
from dicomflow.schemas import ColumnSpec

# Asked of a worker (``client.run(eval, FROZEN)``): how many objects its garbage collector
# leaves alone (gc.freeze). A worker's imports make about 130,000, its event loop and
# connections a few thousand.
FROZEN = "__import__('gc').get_freeze_count()"
FROZEN_AT_LEAST = 50_000


def flatten_path(path: Path) -> tuple[dict[str, Any] | None, ErrorInfo | None]:
    """Read and flatten one file exactly as a partition task would."""
    ref = SourceRef(str(path), path.stat().st_size)
    records = tuple(FilesConnector((str(path),)).fetch([ref]))
    batch = Flatten()(Batch(records, RunContext("test", datetime.now(UTC))))
    (record,) = batch.records
    return record.outputs.get(OUTPUT), record.error


def pydicom_read(path: Path) -> pydicom.FileDataset | None:
    """pydicom's default, tolerant read (None if pydicom cannot read it either)."""
    try:
        with quiet():
            return pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return None


@contextmanager
def quiet() -> Iterator[None]:
    """pydicom warns about non-conformant values; the tests compare values, not warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _convert(value: Any, vr: str) -> Any:
    if value is None or value == "":
        return None
    if vr == "DA":
        return valuerep.DA(value) if isinstance(value, str) else value
    if vr == "TM":
        return valuerep.TM(value) if isinstance(value, str) else value
    if vr == "DT":
        dt = valuerep.DT(value) if isinstance(value, str) else value
        return dt.replace(tzinfo=None)
    if vr == "DS":
        return float(value)
    if vr in ("IS", "US", "SS", "UL", "SL", "US or SS"):
        return int(value)
    if vr == "AT":
        return f"{int(value):08X}"
    return str(value)


def pydicom_typed(ds: pydicom.FileDataset, spec: ColumnSpec) -> Any:
    """What pydicom says the typed column should hold (None when pydicom rejects it)."""
    container = ds.file_meta if spec.tag >> 16 == 0x0002 else ds
    if spec.tag not in container:
        return None
    try:
        with quiet():
            value = container[spec.tag].value
        if value is None or isinstance(value, bytes) or value == "":
            return None
        values = list(value) if isinstance(value, MultiValue | list) else [value]
        converted = []
        for v in values:
            try:
                with quiet():
                    converted.append(_convert(v, spec.vr))
            except (ValueError, TypeError, OverflowError):
                converted.append(None)
    except (ValueError, TypeError, OverflowError):
        return None
    if spec.multi:
        return converted
    return converted[0] if len(converted) == 1 else None


def stored_json(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["dicom_json"])


def ct_series(folder: Path, slices: int, *, tile: int = 1) -> list[Path]:
    """A CT series made from pydicom's CT_small: one new study and series, ``slices``
    instances 2.5 mm apart, each with its own pixels (and, with ``tile``, CT_small's
    image tiled ``tile`` × ``tile``)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    pixels = np.tile(template.pixel_array, (tile, tile))
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(slices):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * number]
        ds.Rows, ds.Columns = pixels.shape
        own = pixels.copy()
        own[0, 0] = number  # every slice differs
        ds.PixelData = own.tobytes()
        paths.append(folder / f"slice{number:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def ingest_command(
    sources: Sequence[Path], lake: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """``dicomflow ingest SOURCES --out LAKE --pixels FLAGS`` on one worker, as a user
    would type it (a fresh process)."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "dicomflow", "ingest", *map(str, sources)),
            *("--out", str(lake), "--pixels", *flags, "--no-progress", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def bytes_received(run: Any) -> int:
    """Bytes of HTTP response bodies received through ``requests`` while ``run()`` runs
    (in this process)."""
    import requests

    received = 0
    send = requests.Session.send

    def counting(session: requests.Session, request: Any, **kwargs: Any) -> Any:
        nonlocal received
        response = send(session, request, **kwargs)
        received += len(response.content)
        return response

    requests.Session.send = counting  # type: ignore[method-assign]
    try:
        run()
    finally:
        requests.Session.send = send  # type: ignore[method-assign]
    return received
