"""An atheris (libFuzzer) harness for the fast header reader.

``python tests/fuzz/header_harness.py SEEDS -max_total_time=N`` mutates the files in
``SEEDS`` with coverage guidance and feeds each result to
:func:`dicomflow.dicom.header.read_header` (with and without ``salvage``). The reader
may refuse an input only with dicomflow's own errors (not DICOM, truncated, malformed,
too deep, too large); anything else it raises is a crash libFuzzer reports, with the
input that caused it written beside the command (``crash-<sha1>``).
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

import atheris

with atheris.instrument_imports():
    from dicomflow.dicom.header import read_header
    from dicomflow.errors import DicomflowError


def one_input(data: bytes) -> None:
    for salvage in (False, True):
        # a refusal with a code is what the reader promises for bad input
        with contextlib.suppress(DicomflowError):
            read_header(io.BytesIO(data), size=len(data), salvage=salvage)


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom warns about the values it reads leniently
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
