"""Structured Reports as rows: the content tree of any SR, and the measurements of the
templates people query (TID 1500 measurement reports, TID 10011/10001 dose reports,
TID 4000/4100 CAD reports).

The modules, one job each:

- :mod:`~dicomflow.sr.tree`: walk the content tree, resolve by-reference items, find
  broken and cyclic references and missing concept names;
- :mod:`~dicomflow.sr.values`: a content item's value, typed by its value type;
- :mod:`~dicomflow.sr.context`: observation context, inherited down the tree;
- :mod:`~dicomflow.sr.content`: ``sr_content`` rows;
- :mod:`~dicomflow.sr.tid1500`, :mod:`~dicomflow.sr.dose` and :mod:`~dicomflow.sr.cad`:
  ``measurements`` rows
  (:mod:`~dicomflow.sr.measurements` says which and how);
- :mod:`~dicomflow.sr.tables`: both tables' Arrow schemas;
- :mod:`~dicomflow.sr.document`: one document to its rows;
- :mod:`~dicomflow.sr.write`: measurements back out as a TID 1500 report (highdicom).

The reading is pydicom's: highdicom's parsers validate and copy a document into
objects (several times slower), accept only three SR classes and refuse the
by-reference items and vendor deviations that real reports hold, which a cohort
extraction has to keep. The tests hold the rows to highdicom's reading wherever it
parses.
"""

from __future__ import annotations

from dicomflow.sr.document import SrExtraction, extract, is_sr_class
from dicomflow.sr.tables import (
    CONTENT_SCHEMA,
    CONTENT_TABLE,
    CONTENT_VERSION,
    MEASUREMENTS_SCHEMA,
    MEASUREMENTS_TABLE,
    MEASUREMENTS_VERSION,
)

__all__ = [
    "CONTENT_SCHEMA",
    "CONTENT_TABLE",
    "CONTENT_VERSION",
    "MEASUREMENTS_SCHEMA",
    "MEASUREMENTS_TABLE",
    "MEASUREMENTS_VERSION",
    "SrExtraction",
    "extract",
    "is_sr_class",
]
