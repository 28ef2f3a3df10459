"""A fixed 500 mutants of the corpus through ``scan``, ``ingest --pixels`` and
``ingest --anonymize --dicom`` (see :mod:`tests.fuzz.campaign`): no worker dies, every
mutant is a row or an error row, no error is ``internal``, no file lands outside the
lake, and no single file takes more than 10 s or 512 MiB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fuzz.campaign import files_outside, per_file_costs, run_campaign, seeds, shown
from tests.fuzz.mutants import write_mutants

pytestmark = pytest.mark.integration

COUNT = 500
SEED = 20261206
ESCAPE = Path("/tmp/escape")  # where a "../../../../tmp/escape" UID would lead


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[str]]:
    require(len(seeds()) > 100, "the shared corpus beside the checkout (../shared/corpus)")
    work = tmp_path_factory.mktemp("fuzz")
    mutants = work / "mutants"
    manifest = write_mutants(seeds(), mutants, COUNT, seed=SEED)
    assert len(manifest) == COUNT
    before = {
        os.fsdecode(os.path.join(d, f)) for d, _, fs in os.walk(os.fsencode(work)) for f in fs
    }
    escaped_before = ESCAPE.exists()
    results = run_campaign(mutants, work)
    outside = files_outside(
        work, before, tuple(work / name for name in ("scan", "pixels", "anonymize"))
    )
    assert escaped_before or not ESCAPE.exists()
    return mutants, results, outside


def test_every_command_ends_cleanly_with_every_mutant_accounted_for(campaign: tuple) -> None:
    mutants, results, _ = campaign
    names = {shown(n) for n in os.listdir(os.fsencode(mutants))}
    assert len(names) == COUNT
    for result in results:
        assert result.returncode == 0, (result.name, result.stderr)
        assert result.worker_deaths == 0, result.name
        assert "internal" not in result.error_codes, (result.name, result.error_codes)
        if result.name == "ingest --anonymize --dicom":
            # sources show pseudonymous labels, and identical inputs share one output file:
            # one row or error row per input is the count
            assert result.rows == COUNT, result.name
        else:
            assert result.sources == names, (result.name, sorted(names - result.sources)[:5])


def test_nothing_is_written_outside_the_lakes(campaign: tuple) -> None:
    _, _, outside = campaign
    assert outside == []


def test_no_single_mutant_takes_more_than_10_s_or_512_mib(campaign: tuple) -> None:
    mutants, _, _ = campaign
    costs = per_file_costs(mutants)
    slowest = costs[0]
    largest = max(costs, key=lambda row: row[2])
    assert slowest[1] <= 10, slowest
    assert largest[2] <= 512 * 2**20, largest
