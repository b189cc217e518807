"""`fedcore validate`: a scenario's site data read as a run reads it, a site file checked as one."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from fedcore.cli.validate_cmd import validate
from fedcore.config import GeneratedData
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions

ROOT = Path(__file__).resolve().parents[3]

SCENARIO = textwrap.dedent(
    """
    name: tiny
    seed: 5
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 300, fraud_rate: 0.03}}
      - {id: bank-c, data: {kind: csv, path: c.csv, columns: COLUMNS}}
    scheduler: {min_sites: 2}
    """
)


def invoke(path: Path) -> Result:
    app = typer.Typer()
    app.command()(validate)
    return CliRunner().invoke(app, [str(path)], env={"COLUMNS": "1000"})  # rich: no wrapping


def write_scenario(tmp_path: Path) -> tuple[Path, Path]:
    """A scenario with one CSV site; returns the scenario and the CSV."""
    tx = generate_transactions(GeneratedData(transactions=300, fraud_rate=0.03), seed=11)
    mapping = write_transactions_csv(tx, tmp_path / "c.csv")
    path = tmp_path / "tiny.yaml"
    path.write_text(SCENARIO.replace("COLUMNS", json.dumps(mapping.model_dump(exclude_none=True))))
    return path, tmp_path / "c.csv"


def edit_csv(path: Path, line: int, column: str, value: str) -> None:
    """Set ``column`` on file line ``line`` (1: the header) to ``value``."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    col = rows[0].index(column)
    rows[line - 1][col] = value
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_good_csv_is_ok(tmp_path: Path) -> None:
    scenario, _ = write_scenario(tmp_path)
    res = invoke(scenario)
    assert res.exit_code == 0, res.output
    assert "ok" in res.output and "scenario 'tiny', 2 sites (bank-a, bank-c)" in res.output


def test_header_without_a_mapped_column(tmp_path: Path) -> None:
    scenario, data = write_scenario(tmp_path)
    edit_csv(data, 1, "amount", "amt")
    res = invoke(scenario)
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "invalid site data" in out and "site 'bank-c' (data kind csv)" in out
    assert f"{data}, line 1: header lacks column(s) 'amount' (for amount)" in out  # expected
    assert "columns found:" in out and "'amt'" in out  # found
    assert "Fix data.columns in the config or the CSV header" in out  # fix
    assert "bank-a" not in out.split("invalid site data", 1)[1]  # the good site is not named


def test_a_value_that_is_not_a_number(tmp_path: Path) -> None:
    scenario, data = write_scenario(tmp_path)
    edit_csv(data, 4, "amount", "abc")
    res = invoke(scenario)
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert f"{data}, line 4, column 'amount': cannot read amount 'abc'" in out
    assert "expected a number such as 12.5" in out


def test_validate_and_the_loader_agree(tmp_path: Path) -> None:
    """The message is the run's own: the loader of a run raises the same text."""
    from fedcore.config import load_scenario
    from fedcore.data.csv_loader import load_transactions_csv
    from fedcore.data.transactions import DataError

    scenario, data = write_scenario(tmp_path)
    edit_csv(data, 3, "label", "maybe")
    site = load_scenario(scenario).site("bank-c")
    with pytest.raises(DataError) as err:
        load_transactions_csv(site.data, [])  # type: ignore[arg-type]
    assert str(err.value) in " ".join(invoke(scenario).output.split())


def test_shipped_site_file_is_validated_as_a_site_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = invoke(ROOT / "scenarios" / "sites" / "bank-a.yaml")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "site file of 'bank-a' (bank), data generated" in out
    assert f"state directory {tmp_path / 'fedcore-site-bank-a'}" in out
    assert "problem" not in out


def test_broken_site_file_says_it_is_a_site_file(tmp_path: Path) -> None:
    site = tmp_path / "bank-x.yaml"
    shutil.copy(ROOT / "scenarios" / "sites" / "bank-a.yaml", site)
    site.write_text(site.read_text().replace("customer_mix: mixed", "customer_mix: retial"))
    res = invoke(site)
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "invalid site file" in out and "this is a site file" in out
    assert "1 problem:" in out and "did you mean 'retail'?" in out
    assert "name: required field" not in out and "sites" not in out


def test_site_file_data_is_read(tmp_path: Path) -> None:
    _, data = write_scenario(tmp_path)
    edit_csv(data, 2, "timestamp", "yesterday")
    cols = {"payer": "payer", "payee": "payee", "amount": "amount", "timestamp": "timestamp"}
    site = tmp_path / "bank-c.yaml"
    site.write_text(
        "id: bank-c\ndata: {kind: csv, path: c.csv, columns: "
        + json.dumps({**cols, "label": "label"})
        + "}\n"
    )
    res = invoke(site)
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "site 'bank-c' (data kind csv)" in out
    assert f"{data}, line 2, column 'timestamp': cannot read timestamp 'yesterday'" in out


def test_dicom_folder_without_files(tmp_path: Path) -> None:
    (tmp_path / "dicom").mkdir()
    (tmp_path / "cand.csv").write_text("series_uid,x_mm,y_mm,z_mm,nodule\n")
    site = tmp_path / "h.yaml"
    site.write_text(
        "id: hosp-a\nkind: hospital\ndata: {kind: dicom, path: dicom, candidates: cand.csv}\n"
    )
    res = invoke(site)
    assert res.exit_code == 2
    assert "folder holds no files" in " ".join(res.output.split())
