"""The parsed-header tree shared by both readers and by the DICOM JSON encoder.

Both the fast reader (:mod:`.fastread`) and the pydicom-backed reader
(:mod:`.pydicom_tree`) produce the same tree of :class:`Element` values, so
one encoder serves both and tests can compare the two readers directly. The
types live with the records that carry them (:mod:`dicomflow.records`).
"""

from __future__ import annotations

from dicomflow.records import UNDEFINED_LENGTH, Element, Elements

__all__ = ["UNDEFINED_LENGTH", "Element", "Elements"]
