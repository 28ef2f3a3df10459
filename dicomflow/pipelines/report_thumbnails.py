"""The run report's strip of thumbnails: the failed and the slowest series, where renders
exist (the ``render`` operator's ``render_path`` on ``instances``).

A series is *failed* when one of its instances has an error row of this run (an instance
that kept its row: a fault in a later operator), and *slowest* when it holds the first
input of one of the slowest partitions. Each gets the render of its first instance that
has one; nothing is rendered here.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicomflow.lake.layout import LakeLayout

RENDER_PATH = "render_path"
MAX_THUMBNAILS = 12


def thumbnails(
    layout: LakeLayout,
    run_id: str,
    failed_sources: Sequence[str],
    slowest_sources: Sequence[str],
) -> list[dict[str, str]]:
    """Up to :data:`MAX_THUMBNAILS` ``{"series", "why", "render"}`` entries, failed series
    (those holding one of ``failed_sources``, the run's error rows) first; none when the
    lake has no renders."""
    from dicomflow.lake.reader import run_rows

    rows = run_rows(layout, run_id, "instances", ["source", "SeriesInstanceUID", RENDER_PATH])
    if not any(r.get(RENDER_PATH) for r in rows):
        return []
    series_of = {r["source"]: r["SeriesInstanceUID"] for r in rows}
    render_of: dict[str, str] = {}
    for row in rows:
        if row.get(RENDER_PATH) and row.get("SeriesInstanceUID"):
            render_of.setdefault(row["SeriesInstanceUID"], row[RENDER_PATH])
    chosen: list[dict[str, str]] = []
    for why, sources in (("failed", failed_sources), ("slowest", slowest_sources)):
        for source in sources:
            uid = series_of.get(source)
            if uid and uid in render_of and all(c["series"] != uid for c in chosen):
                chosen.append({"series": uid, "why": why, "render": render_of[uid]})
    return chosen[:MAX_THUMBNAILS]
