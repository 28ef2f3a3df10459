"""The built-in sources and sinks, as registered in ``dicomflow.sources`` and
``dicomflow.sinks``, and the one place a peer's connection options are built.

Each unit names its configuration model (``Config``, shown in the spec's JSON
Schema) and builds what the compiler runs:

- a source builds a *listing source* (``query()`` lists inputs on the client,
  ``fetch(refs)`` reads them on a worker, as :class:`FilesConnector` does), a
  *peer* (:class:`dicomflow.connectors.peers.Peer`: plan a query, fetch series)
  or a :class:`Listener` (a Storage SCP feeding micro-batches);
- a sink builds the :class:`LakeSink`, nothing (the ``dicom`` sink keeps the
  de-identified files, which the ``anonymize`` operator writes), or an instance
  operator that runs after every other one (``store``: C-STORE or STOW-RS).

A plugin source or sink follows the same contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dicomflow.connectors.dicomweb.address import DicomwebAddress, DicomwebOptions
from dicomflow.connectors.dicomweb.metadata import DicomwebMetadata
from dicomflow.connectors.dimse.address import (
    DimseAddress,
    DimseOptions,
    MoveDestination,
    TlsOptions,
)
from dicomflow.connectors.dimse.scp_guard import ScpLimits
from dicomflow.connectors.files import FilesConnector
from dicomflow.connectors.peers import DicomwebPeer, DimsePeer
from dicomflow.operators.base import Operator, RunSettings
from dicomflow.operators.store import Store
from dicomflow.pipelines.limits import associations_limit
from dicomflow.schemas.spec import (
    DicomSink,
    DicomwebPeerConfig,
    DicomwebSink,
    DicomwebSource,
    DimsePeerConfig,
    DimseSink,
    DimseSource,
    FilesSource,
    LakeSink,
    ListenSource,
)


def dimse_options(peer: DimsePeerConfig) -> DimseOptions:
    """How to associate with a DICOM peer, from its spec entry."""
    return DimseOptions(
        calling_ae=peer.calling_ae,
        connect_timeout=peer.connect_timeout,
        acse_timeout=peer.acse_timeout,
        dimse_timeout=peer.dimse_timeout,
        network_timeout=peer.network_timeout,
        tls=TlsOptions.from_files(peer.tls_ca, peer.tls_cert, peer.tls_key),
        username=peer.username,
        password_env=peer.password_env,
    )


def dicomweb_options(peer: DicomwebPeerConfig) -> DicomwebOptions:
    """How to talk to a DICOMweb server, from its spec entry."""
    return DicomwebOptions.from_peer(peer)


class FilesSourceUnit:
    """``files``: paths, folders, globs and fsspec URLs."""

    Config: ClassVar[type[FilesSource]] = FilesSource

    @classmethod
    def build(cls, config: FilesSource, run: RunSettings) -> FilesConnector:
        return FilesConnector(tuple(config.urls), dict(config.storage_options))


class DimseSourceUnit:
    """``dimse``: a PACS, queried with C-FIND and retrieved with C-GET or C-MOVE."""

    Config: ClassVar[type[DimseSource]] = DimseSource

    @classmethod
    def build(cls, config: DimseSource, run: RunSettings) -> DimsePeer:
        move = None
        if config.retrieve == "move":
            assert config.move_ae is not None and config.move_port is not None
            move = MoveDestination(config.move_ae, config.move_port, config.move_host)
        return DimsePeer(
            DimseAddress.parse(config.url),
            dimse_options(config),
            query_level=config.query_level,
            move=move,
        )


class DicomwebSourceUnit:
    """``dicomweb``: a DICOMweb server, searched with QIDO-RS and retrieved with WADO-RS."""

    Config: ClassVar[type[DicomwebSource]] = DicomwebSource

    @classmethod
    def build(cls, config: DicomwebSource, run: RunSettings) -> DicomwebPeer | DicomwebMetadata:
        address = DicomwebAddress.parse(config.url)
        if config.header_only:
            return DicomwebMetadata(address, dicomweb_options(config), dict(config.query))
        return DicomwebPeer(address, dicomweb_options(config))


@dataclass(frozen=True)
class Listener:
    """A Storage SCP as a source: what it receives is ingested in micro-batches."""

    ae_title: str
    port: int
    host: str
    options: DimseOptions
    allowed_callers: frozenset[str] | None
    batch_seconds: float
    limits: ScpLimits = field(default_factory=ScpLimits)


class ListenSourceUnit:
    """``listen``: instances pushed to dicomflow's own Storage SCP."""

    Config: ClassVar[type[ListenSource]] = ListenSource

    @classmethod
    def build(cls, config: ListenSource, run: RunSettings) -> Listener:
        tls = None
        if config.tls_cert:  # serve TLS; with a CA, callers must present a certificate
            tls = TlsOptions(config.tls_ca, config.tls_cert, config.tls_key)
        return Listener(
            config.ae_title,
            config.port,
            config.host,
            DimseOptions(tls=tls),
            frozenset(config.allow) or None,
            config.batch_seconds,
            ScpLimits(max_associations=config.max_associations),
        )


class LakeSinkUnit:
    """``lake``: the output lake (built by the compiler, which knows the run's tables)."""

    Config: ClassVar[type[LakeSink]] = LakeSink

    @classmethod
    def build(cls, config: LakeSink, run: RunSettings) -> None:
        return None


class DicomSinkUnit:
    """``dicom``: keep the de-identified DICOM files under ``<lake>/dicom/``."""

    Config: ClassVar[type[DicomSink]] = DicomSink

    @classmethod
    def build(cls, config: DicomSink, run: RunSettings) -> None:
        return None


class DimseSinkUnit:
    """``dimse``: C-STORE every instance written to a DICOM peer."""

    Config: ClassVar[type[DimseSink]] = DimseSink

    @classmethod
    def build(cls, config: DimseSink, run: RunSettings) -> Operator:
        return _store(DimseAddress.parse(config.url), dimse_options(config), run)


class DicomwebSinkUnit:
    """``dicomweb``: STOW-RS every instance written to a DICOMweb server."""

    Config: ClassVar[type[DicomwebSink]] = DicomwebSink

    @classmethod
    def build(cls, config: DicomwebSink, run: RunSettings) -> Operator:
        return _store(DicomwebAddress.parse(config.url), dicomweb_options(config), run)


def _store(
    address: DimseAddress | DicomwebAddress,
    options: DimseOptions | DicomwebOptions,
    run: RunSettings,
) -> Store:
    """The ``store`` operator a sending sink runs, at most ``max_associations`` at a time
    across the cluster, reading the files the operators read."""
    return Store(
        address,
        options,
        associations_limit(address, run.max_associations),
        dict(run.source_storage_options),
    )
