"""The run report: ``<lake>/_runs/<run_id>.json`` and an HTML page beside it.

It shows counts per stage, throughput over time (an inline SVG plot), errors by
stage and code (read back from the lake's committed error rows of this run),
the slowest partitions, and the versions of everything that wrote the outputs.
"""

from __future__ import annotations

import functools
import html
import importlib.metadata
import json
import platform
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.reader import run_rows
from dicomflow.lake.writer import put_atomically
from dicomflow.pipelines.report_thumbnails import thumbnails
from dicomflow.pipelines.summary import RunSummary

RUNS_DIR = "_runs"
PACKAGES = ("dicomflow", "pydicom", "pynetdicom", "dask", "distributed", "pyarrow", "zarr", "numpy")


def versions() -> dict[str, str]:
    """The versions of Python and the packages a run used (looked up once per process)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _errors_of_run(run_errors: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((row["stage"], row["code"]) for row in run_errors)


def _run_errors(layout: LakeLayout, run_id: str) -> list[dict[str, Any]]:
    """This run's committed error rows (source, stage, code), read once for the report
    from the run's own parts (not a dataset over the whole lake's)."""
    return run_rows(layout, run_id, "errors", ["source", "stage", "code"])


def build_report(
    summary: RunSummary, layout: LakeLayout, *, name: str, started_at: datetime
) -> dict[str, Any]:
    """The report as a JSON-ready mapping."""
    run_errors = _run_errors(layout, summary.run_id)
    by_stage_code = _errors_of_run(run_errors)
    failed = list(dict.fromkeys(row["source"] for row in run_errors))
    stages: Counter[str] = Counter()
    for (stage, _), n in by_stage_code.items():
        stages[stage] += n
    processed = summary.files - summary.skipped
    return {
        "run_id": summary.run_id,
        "name": name,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(summary.seconds, 3),
        "counts": {
            "inputs": summary.files,
            "skipped_already_committed": summary.skipped,
            "processed": processed,
            "rows": summary.rows,
            "error_rows": summary.errors,
        },
        "errors_by_stage": dict(sorted(stages.items())),
        "errors_by_code": dict(sorted(summary.error_codes.items())),
        "errors_by_stage_and_code": [
            {"stage": s, "code": c, "count": n} for (s, c), n in sorted(by_stage_code.items())
        ],
        "throughput": [{"seconds": round(t, 3), "inputs_done": n} for t, n in summary.timeline],
        "files_per_second": round(summary.files_per_second, 1),
        "slowest_partitions": [
            {"seconds": round(s, 3), "inputs": n, "first_source": src}
            for s, n, src in summary.slowest
        ],
        "thumbnails": thumbnails(
            layout, summary.run_id, failed, [src for _, _, src in summary.slowest]
        ),
        "versions": versions(),
        **(
            {"deidentification_proof": summary.proof.as_dict()} if summary.proof is not None else {}
        ),
    }


def report_files(json_path: str) -> list[str]:
    """The files of the report whose JSON is at ``json_path`` (the JSON and its page)."""
    return [json_path, json_path.removesuffix(".json") + ".html"]


def write_report(
    summary: RunSummary, layout: LakeLayout, *, name: str, started_at: datetime
) -> str:
    """Write the JSON and HTML report; return where the JSON is (a URL for a bucket lake)."""
    report = build_report(summary, layout, name=name, started_at=started_at)
    fs, root = layout.filesystem()
    json_path = f"{root}/{RUNS_DIR}/{summary.run_id}.json"
    put_atomically(fs, json_path, json.dumps(report, indent=2).encode())
    put_atomically(fs, f"{root}/{RUNS_DIR}/{summary.run_id}.html", render_html(report).encode())
    return layout.url(json_path)


def _throughput_svg(points: list[dict[str, float]], width: int = 640, height: int = 200) -> str:
    """Files per second between consecutive completions, as an SVG polyline."""
    rates: list[tuple[float, float]] = []
    last_t, last_n = 0.0, 0.0
    for point in points:
        t, n = point["seconds"], point["inputs_done"]
        if t > last_t:
            rates.append((t, (n - last_n) / (t - last_t)))
        last_t, last_n = t, n
    if not rates:
        return "<p>no throughput samples</p>"
    t_max = max(t for t, _ in rates) or 1.0
    r_max = max(r for _, r in rates) or 1.0
    coords = " ".join(
        f"{40 + (width - 50) * t / t_max:.1f},{height - 20 - (height - 40) * r / r_max:.1f}"
        for t, r in rates
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="throughput">'
        f'<line x1="40" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#888"/>'
        f'<line x1="40" y1="10" x2="40" y2="{height - 20}" stroke="#888"/>'
        f'<polyline fill="none" stroke="#2a6ebb" stroke-width="2" points="{coords}"/>'
        f'<text x="42" y="18" font-size="11">{r_max:.0f} inputs/s</text>'
        f'<text x="{width - 60}" y="{height - 5}" font-size="11">{t_max:.1f} s</text>'
        "</svg>"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _thumbnail_strip(entries: list[dict[str, str]]) -> str:
    """The failed and slowest series' renders, linked from the report's folder."""
    if not entries:
        return ""
    figures = "".join(
        f'<figure style="display:inline-block;margin:4px">'
        f'<img src="../{html.escape(e["render"])}" style="max-width:128px;max-height:128px" '
        f'alt="{html.escape(e["why"])} series"><figcaption>{html.escape(e["why"])}'
        "</figcaption></figure>"
        for e in entries
    )
    return f"<h2>Failed and slowest series</h2><div>{figures}</div>"


def _proof_section(proof: dict[str, Any] | None) -> str:
    """The de-identification proof: what was checked and where a value was found."""
    if proof is None:
        return ""
    verdict = "passed: no removed value in any output" if proof["passed"] else "FAILED"
    counts = [
        {"measure": k, "value": proof[k]}
        for k in (
            "values_checked",
            "values_unchecked",
            "kept_by_profile",
            "outputs_scanned",
            "bytes_scanned",
        )
    ]
    hits = [
        {"output": h["output"], "count": h["count"], "kinds": h["kinds"]} for h in proof["hits"]
    ]
    quarantined = "".join(f"<li>{html.escape(q)}</li>" for q in proof["quarantined"])
    return (
        f"<h2>De-identification proof: {verdict}</h2>{_table(counts)}"
        f"<h3>Hits</h3>{_table(hits)}"
        + (f"<h3>Quarantined</h3><ul>{quarantined}</ul>" if quarantined else "")
    )


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page for one run."""
    counts = [{"count": k, "value": v} for k, v in report["counts"].items()]
    version_rows = [{"package": k, "version": v} for k, v in report["versions"].items()]
    title = html.escape(f"dicomflow run {report['name']} {report['run_id']}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head><body>
<h1>{title}</h1>
<p>{html.escape(report["started_at"])} → {html.escape(report["finished_at"])},
{report["seconds"]} s, {report["files_per_second"]} inputs/s</p>
<h2>Counts</h2>{_table(counts)}
<h2>Throughput over time</h2>{_throughput_svg(report["throughput"])}
<h2>Errors by stage and code</h2>{_table(report["errors_by_stage_and_code"])}
<h2>Slowest partitions</h2>{_table(report["slowest_partitions"])}
{_proof_section(report.get("deidentification_proof"))}
{_thumbnail_strip(report.get("thumbnails") or [])}
<h2>Versions</h2>{_table(version_rows)}
</body></html>
"""
