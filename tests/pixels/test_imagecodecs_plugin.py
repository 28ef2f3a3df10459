"""The imagecodecs RLE plugin gives arrays identical to pydicom's default decode."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import RLELossless

from dicomflow.pixels import imagecodecs_plugin
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, corpus_manifest


def _rle_files() -> list[Path]:
    files = [p for p in PYDICOM_TEST_FILES.glob("*rle*.dcm")]
    files += [
        CORPUS / r["relative_path"]
        for r in corpus_manifest()
        if r["transfer_syntax_uid"] == RLELossless
    ]
    return sorted(files)


FILES = _rle_files()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_identical_to_pydicoms_default(path: Path) -> None:
    assert imagecodecs_plugin.register()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        try:
            expected = ds.pixel_array
        except Exception:
            pytest.skip("pydicom's default backends cannot decode this file either")
        ours = pixel_array(ds, decoding_plugin=imagecodecs_plugin.LABEL)
    assert ours.dtype == expected.dtype
    assert np.array_equal(ours, expected)


def test_plugin_covers_rle_files_from_both_sources() -> None:
    assert len([p for p in FILES if p.is_relative_to(PYDICOM_TEST_FILES)]) >= 5
