"""The DIMSE connector: a PACS reached over DICOM networking, built on pynetdicom.

Modules follow the protocol: ``address`` (the ``dimse://`` URL and options),
``association`` (opening an association safely), then one module per service
(``echo`` for C-ECHO, ``find`` for C-FIND). The services are imported when first
named: importing an address or an error does not import pynetdicom.
"""

from __future__ import annotations

import importlib
from typing import Any

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions

_SERVICES = {
    "EchoResult": "echo",
    "c_echo": "echo",
    "c_find": "find",
    "find_table": "find",
}

__all__ = ["DimseAddress", "DimseOptions", "EchoResult", "c_echo", "c_find", "find_table"]


def __getattr__(name: str) -> Any:
    module = _SERVICES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
