"""Connectors: how to reach a place, addressed by URL. One module per protocol."""

from dicomflow.connectors.files import FilesConnector

__all__ = ["FilesConnector"]
