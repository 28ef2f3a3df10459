"""``-h`` works like ``--help``, on the command and on each subcommand."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dicomflow.cli import cli


@pytest.mark.parametrize("args", [[], ["scan"], ["ingest"], ["listen"], ["run"]])
def test_dash_h_prints_the_same_help_as_dash_dash_help(args: list[str]) -> None:
    runner = CliRunner()
    short = runner.invoke(cli, [*args, "-h"])
    long = runner.invoke(cli, [*args, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.output == long.output and "Usage:" in short.output
