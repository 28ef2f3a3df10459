"""Instance operators that ask for pixels share one decoding per instance, and a batch
holds at most one slice of decoded pixels at a time."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydicom
import pytest

from dicomflow.connectors.files import FilesConnector
from dicomflow.operators import images
from dicomflow.operators.base import map_records
from dicomflow.operators.flatten import Flatten
from dicomflow.operators.images import WithImages, image_of
from dicomflow.records import Batch, InstanceRecord, RunContext
from tests.conftest import PYDICOM_TEST_FILES

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm")


@dataclass(frozen=True)
class Peek:
    """Records the shape of the pixels it is handed, and how many are held at once."""

    label: str
    seen: list[Any]

    name: ClassVar[str] = "peek"

    def __call__(self, batch: Batch) -> Batch:
        held = sum(r.image is not None for r in batch.records)
        self.seen.append(("held", held))
        return map_records(batch, self.label, self._one)

    def _one(self, record: InstanceRecord) -> InstanceRecord:
        image = image_of(record)
        if image is not None:
            self.seen.append((self.label, record.ref.url, image.pixels.array.shape))
        return record


@pytest.fixture
def batch(tmp_path: Path) -> Batch:
    for name in FILES:
        shutil.copy(PYDICOM_TEST_FILES / name, tmp_path / name)
    source = FilesConnector((str(tmp_path),))
    records = tuple(source.fetch(sorted(source.query().refs, key=lambda r: r.url)))
    return Flatten()(Batch(records, RunContext("run", datetime.now(UTC))))


def test_each_instance_is_decoded_once_for_every_operator_that_asks(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    decode = images.decode_with_header

    def counting(ds: pydicom.Dataset, header: Any, **kwargs: Any) -> Any:
        calls.append(str(ds.SOPInstanceUID))
        return decode(ds, header, **kwargs)

    monkeypatch.setattr(images, "decode_with_header", counting)
    seen: list[Any] = []
    out = WithImages((Peek("first", seen), Peek("second", seen)))(batch)
    with_images = [r for r in batch.records if r.outputs["instances"]["has_pixel_data"]]
    assert len(calls) == len(set(calls)) == len(with_images) == 3
    for label in ("first", "second"):
        shapes = {
            url: shape for lab, url, shape in (s for s in seen if len(s) == 3) if lab == label
        }
        for record in with_images:
            ds = pydicom.dcmread(record.ref.url)
            frames = int(ds.get("NumberOfFrames") or 1)
            assert shapes[record.ref.url][:3] == (frames, ds.Rows, ds.Columns)
    assert all(r.image is None for r in out.records)  # dropped once the operators ran
    assert [r.outputs["instances"] for r in out.records] == [
        r.outputs["instances"] for r in batch.records
    ]


def test_a_small_budget_holds_one_instance_at_a_time(batch: Batch) -> None:
    seen: list[Any] = []
    WithImages((Peek("only", seen),), budget=1)(batch)
    held = [n for label, n, *_ in (s for s in seen if s[0] == "held")]
    assert held and max(held) == 1


def test_pixels_reach_the_operator_with_the_modality_lut_applied(batch: Batch) -> None:
    got: dict[str, np.ndarray] = {}

    def keep(record: InstanceRecord) -> InstanceRecord:
        image = image_of(record)
        if image is not None:
            got[Path(record.ref.url).name] = image.pixels.array
        return record

    @dataclass(frozen=True)
    class Keep:
        name: ClassVar[str] = "keep"

        def __call__(self, b: Batch) -> Batch:
            return map_records(b, self.name, keep)

    WithImages((Keep(),))(batch)
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    assert np.array_equal(got["CT_small.dcm"][0], expected)
    assert "rtplan.dcm" not in got
