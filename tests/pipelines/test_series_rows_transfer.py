"""A reading task's result moves between workers with its encoded frames in one buffer,
out of band, and arrives with every chunk, error and empty frame as it left."""

from __future__ import annotations

import os
import pickle
import time

from distributed.protocol import dumps, loads

from dicomflow.errors import ErrorCode
from dicomflow.pipelines.series_tasks import SeriesRows
from dicomflow.pixels.series_writer import EncodedImage
from dicomflow.records import ErrorInfo, InstanceRecord, SourceRef


def _rows() -> SeriesRows:
    encoded: dict[int, EncodedImage | ErrorInfo] = {
        index: EncodedImage(
            "int16",
            (3, 4, 5),
            {"units": "HU"},
            (os.urandom(1000 + index), None, os.urandom(7)),
        )
        for index in range(0, 40, 2)
    }
    encoded[1] = ErrorInfo("write_pixels", ErrorCode.DECODE_FAILED, "broken")
    encoded[3] = EncodedImage("uint8", (1, 2, 2), {}, (None,))
    records = tuple(InstanceRecord(SourceRef(f"/x/{i}.dcm", 10)) for i in range(40))
    return SeriesRows(started=time.time(), records=records, encoded=encoded)


def _same(ours: SeriesRows, theirs: SeriesRows) -> None:
    assert ours.encoded.keys() == theirs.encoded.keys()
    for index, image in theirs.encoded.items():
        arrived = ours.encoded[index]
        if isinstance(image, ErrorInfo):
            assert arrived == image
            continue
        assert isinstance(arrived, EncodedImage)
        assert (arrived.dtype, arrived.shape, arrived.reference) == (
            image.dtype,
            image.shape,
            image.reference,
        )
        assert [None if c is None else bytes(c) for c in arrived.chunks] == list(image.chunks)
    assert ours.records == theirs.records


def test_plain_pickle_round_trip() -> None:
    rows = _rows()
    _same(pickle.loads(pickle.dumps(rows, protocol=5)), rows)


def test_dask_moves_the_frames_out_of_band_in_one_frame() -> None:
    rows = _rows()
    frames = dumps({"rows": rows})
    chunk_bytes = sum(
        len(c) for e in rows.encoded.values() if isinstance(e, EncodedImage) for c in e.chunks if c
    )
    assert max(len(memoryview(f)) for f in frames) >= chunk_bytes  # one frame holds them all
    assert len(frames) <= 4
    _same(loads(frames)["rows"], rows)


def test_older_pickle_protocols_still_work() -> None:
    rows = _rows()
    for protocol in (2, 4):
        _same(pickle.loads(pickle.dumps(rows, protocol=protocol)), rows)
