"""`fed-coordinator --version` and `fed-client --version`: fedcore's version and Flower's, exit 0."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from fedcore import __version__
from fedcore.cli import client_cmd, coordinator_cmd


@pytest.mark.parametrize("app", [coordinator_cmd.app, client_cmd.app])
def test_version(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"fedcore {__version__} (Flower {version('flwr')})"


@pytest.mark.parametrize("app", [coordinator_cmd.app, client_cmd.app])
def test_version_is_listed_in_help(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--version" in res.output
