"""The peers a pipeline retrieves from, behind one small interface.

A :class:`Peer` plans a query (what it should bring, by series) and fetches a
series whole or named instances of it into a folder. :mod:`dicomflow.pipelines.retrieve`
does the rest the same way for every protocol: the task graph, the cluster-wide
concurrency limit, what is already on disk, and the ``not_retrieved`` rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset

from dicomflow.connectors.dicomweb.address import DicomwebAddress, DicomwebOptions
from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions, Level, MoveDestination


@dataclass(frozen=True)
class SeriesRequest:
    """One series to fetch: its UIDs and the instances (UID → SOP class) it should hold."""

    study_uid: str
    series_uid: str
    instances: dict[str, str]


@runtime_checkable
class Peer(Protocol):
    """A source of instances: plan a query, fetch a series or some of its instances."""

    def __str__(self) -> str: ...

    def plan(self, query: Mapping[str, str]) -> list[SeriesRequest]: ...

    def fetch_series(self, request: SeriesRequest, folder: Path) -> dict[str, Path]: ...

    def fetch_instances(
        self, request: SeriesRequest, folder: Path, uids: Collection[str]
    ) -> dict[str, Path]: ...


def group_requests(found: list[tuple[str, str, str, str]]) -> list[SeriesRequest]:
    """(study, series, SOP UID, SOP class) rows → one sorted request per series."""
    series: dict[tuple[str, str], dict[str, str]] = {}
    for study, series_uid, sop_uid, sop_class in found:
        series.setdefault((study, series_uid), {})[sop_uid] = sop_class
    return [SeriesRequest(s, u, instances) for (s, u), instances in sorted(series.items())]


def _text(found: Dataset, keyword: str) -> str:
    """A returned value as text; "" when absent or empty (never "None")."""
    value = found.get(keyword)
    return "" if value is None else str(value)


UIDS_PER_GET = 500  # a UID list stays far below the 64 KiB of an explicit VR UI value


@dataclass(frozen=True)
class DimsePeer:
    """A PACS over DIMSE: C-FIND at ``query_level`` down to the instances, then C-GET, or
    C-MOVE to ``move`` (our Storage SCP, run by the caller), with retries and a breaker."""

    address: DimseAddress
    options: DimseOptions = field(default_factory=DimseOptions)
    query_level: Level = "image"
    move: MoveDestination | None = None

    def __str__(self) -> str:
        return str(self.address)

    def plan(self, query: Mapping[str, str]) -> list[SeriesRequest]:
        from dicomflow.connectors.dimse.find import find_images

        found = find_images(
            self.address,
            query,
            level=self.query_level,
            options=self.options,
            return_keys=("SOPClassUID",),
        )
        keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        return group_requests([tuple(_text(ds, k) for k in keys) for ds in found])  # type: ignore[misc]

    def _get(self, request: SeriesRequest, folder: Path, query: dict[str, str]) -> dict:
        from dicomflow.connectors.dimse.get import c_get, classes_to_accept
        from dicomflow.connectors.dimse.reliability import RetryPolicy

        level: Level = "image" if "SOPInstanceUID" in query else "series"
        if self.move is not None:
            return self._move(request, folder, query, level)
        classes = classes_to_accept(request.instances.values())
        return (
            RetryPolicy()
            .call(
                lambda: c_get(
                    self.address, level, query, folder, sop_classes=classes, options=self.options
                )
            )
            .received
        )

    def _move(
        self, request: SeriesRequest, folder: Path, query: dict[str, str], level: Level
    ) -> dict[str, Path]:
        """C-MOVE to our Storage SCP, which files what it asked for in ``folder``; what
        is there once the peer's final answer came."""
        from dicomflow.connectors.dimse.move import c_move
        from dicomflow.connectors.dimse.reliability import RetryPolicy
        from dicomflow.lake.layout import safe_uid_component

        assert self.move is not None
        ae_title = self.move.ae_title
        RetryPolicy().call(
            lambda: c_move(self.address, level, query, ae_title, options=self.options)
        )
        paths = {uid: folder / f"{safe_uid_component(uid)}.dcm" for uid in request.instances}
        return {uid: path for uid, path in paths.items() if path.exists()}

    def _series_query(self, request: SeriesRequest) -> dict[str, str]:
        return {"StudyInstanceUID": request.study_uid, "SeriesInstanceUID": request.series_uid}

    def fetch_series(self, request: SeriesRequest, folder: Path) -> dict[str, Path]:
        return self._get(request, folder, self._series_query(request))

    def fetch_instances(
        self, request: SeriesRequest, folder: Path, uids: Collection[str]
    ) -> dict[str, Path]:
        have: dict[str, Path] = {}
        wanted = list(uids)
        for start in range(0, len(wanted), UIDS_PER_GET):
            query = {
                **self._series_query(request),
                "SOPInstanceUID": "\\".join(wanted[start : start + UIDS_PER_GET]),
            }
            have.update(self._get(request, folder, query))
        return have


@dataclass(frozen=True)
class DicomwebPeer:
    """A DICOMweb server: QIDO-RS for instances, then WADO-RS by series or instance."""

    address: DicomwebAddress
    options: DicomwebOptions = field(default_factory=DicomwebOptions)

    def __str__(self) -> str:
        return str(self.address)

    def plan(self, query: Mapping[str, str]) -> list[SeriesRequest]:
        from dicomflow.connectors.dicomweb.qido import search_instances

        found = search_instances(self.address, query, self.options)
        return group_requests(
            [(f.study_uid, f.series_uid, f.sop_uid, f.sop_class_uid) for f in found]
        )

    def fetch_series(self, request: SeriesRequest, folder: Path) -> dict[str, Path]:
        """The series whole; {} when the server answers the series request with an HTTP
        error (some serve instances only), so the instances are then asked for one by one."""
        from dicomflow.connectors.dicomweb.address import DicomwebError
        from dicomflow.connectors.dicomweb.wado import retrieve_series

        try:
            return retrieve_series(
                self.address,
                self.options,
                request.study_uid,
                request.series_uid,
                folder,
                request.instances.keys(),
            )
        except DicomwebError as exc:
            if exc.status is None or exc.status in (401, 403):  # unreachable, or not allowed
                raise
            return {}

    def fetch_instances(
        self, request: SeriesRequest, folder: Path, uids: Collection[str]
    ) -> dict[str, Path]:
        from dicomflow.connectors.dicomweb.wado import retrieve_instances

        return retrieve_instances(
            self.address, self.options, request.study_uid, request.series_uid, folder, uids
        )


def peer_for(url: str, dimse: DimseOptions | None, dicomweb: DicomwebOptions | None) -> Peer:
    """The peer a ``dimse://`` or ``dicomweb+http(s)://`` source URL names."""
    if url.startswith("dimse://"):
        return DimsePeer(DimseAddress.parse(url), dimse or DimseOptions())
    return DicomwebPeer(DicomwebAddress.parse(url), dicomweb or DicomwebOptions())


def is_peer_url(url: str) -> bool:
    """True for the source URLs :func:`peer_for` understands."""
    return url.startswith(("dimse://", "dicomweb+http://", "dicomweb+https://"))
