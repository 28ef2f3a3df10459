"""The DIMSE connector: a PACS reached over DICOM networking, built on pynetdicom.

Modules follow the protocol: ``address`` (the ``dimse://`` URL and options),
``association`` (opening an association safely), then one module per service
(``echo`` for C-ECHO, ``find`` for C-FIND).
"""

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.connectors.dimse.echo import EchoResult, c_echo
from dicomflow.connectors.dimse.find import c_find, find_table

__all__ = ["DimseAddress", "DimseOptions", "EchoResult", "c_echo", "c_find", "find_table"]
