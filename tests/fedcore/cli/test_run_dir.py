"""`fedcore run --out DIR`: another scenario's run refused untouched, --rounds, resume, --force, stops."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedcore.config import GeneratedData, load_scenario
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions
from fedcore.exit_codes import EXIT_INTERRUPTED

TINY = textwrap.dedent(
    """
    name: NAME
    seed: 5
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 300, fraud_rate: 0.05}}
      - {id: bank-b, data: {kind: generated, transactions: 300, fraud_rate: 0.05}}
    task: {hidden: 8}
    training: {local_epochs: 1}
    scheduler: {min_sites: 2}
    baselines: {local_only: false, centralized: false, non_graph: false}
    export: {int8: false}
    """
)
CKKS = "privacy:\n  mode: ckks\n  ckks: {poly_modulus_degree: 4096, values_per_slot: 2}\n"


def scenario(tmp_path: Path, name: str = "tiny", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.replace("NAME", name) + extra)
    return path


def cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    from fedcore.cli.main import app

    monkeypatch.setenv("COLUMNS", "400")
    return CliRunner().invoke(app, list(args))


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_another_scenarios_run_is_refused_before_anything_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.cli.runner import OutDirTaken, RunPlan, run_scenario

    out = tmp_path / "intr"
    first = cli(monkeypatch, "run", str(scenario(tmp_path, "bank-fraud")), "--out", str(out))
    assert first.exit_code == 0, first.output
    before = digests(out)
    assert "sites/bank-a.yaml" in before and "state/state.db" in before
    other = scenario(tmp_path, "bank-fraud-3", CKKS)  # the report: a ckks run into a plaintext one
    for extra in ((), ("--force",)):
        res = cli(monkeypatch, "run", str(other), "--out", str(out), *extra)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        msg = " ".join(res.stderr.split())
        assert "cannot use the output directory" in msg
        assert "holds a run of a different scenario" in msg
        assert "'bank-fraud'" in msg and "'bank-fraud-3'" in msg
        assert "use another --out, or move" in msg
        assert digests(out) == before
    # the library path refuses too, before it writes anything (site configs, kits, run.json)
    plan = RunPlan(other, load_scenario(other), out, "inprocess", 1)
    with pytest.raises(OutDirTaken, match="different scenario"):
        run_scenario(plan)
    assert digests(out) == before


def test_inspect_refuses_other_records_and_site_sets(tmp_path: Path) -> None:
    from fedcore.cli.runner import OutDirTaken, RunPlan, inspect_out

    path = scenario(tmp_path)
    sc = load_scenario(path)
    out = tmp_path / "out"
    plan = RunPlan(path, sc, out, "inprocess", 2)
    assert inspect_out(plan) is None  # missing
    out.mkdir()
    assert inspect_out(plan) is None  # empty
    (out / "federation.json").write_text(json.dumps({"scenario": "x", "fingerprint": "0" * 16}))
    with pytest.raises(OutDirTaken, match="federation.json"):
        inspect_out(plan)
    (out / "federation.json").unlink()
    (out / "sites").mkdir()
    (out / "sites" / "bank-z.yaml").write_text("id: bank-z\n")
    with pytest.raises(OutDirTaken, match="sites"):
        inspect_out(plan)
    (out / "sites" / "bank-z.yaml").unlink()
    (out / "run.json").write_text(json.dumps({"scenario": "tiny", "fingerprint": sc.fingerprint()}))
    prior = inspect_out(plan)
    assert prior is not None and prior.rounds_done == 0 and not prior.complete


def test_rounds_zero_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    res = cli(monkeypatch, "run", str(scenario(tmp_path)), "--out", str(out), "--rounds", "0")
    assert res.exit_code == 2, res.output
    assert "--rounds" in res.output and "0" in res.output
    assert not out.exists()
    helped = cli(monkeypatch, "run", "--help")
    assert "default: the scenario's rounds" in " ".join(helped.output.split())


def test_resume_complete_and_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = scenario(tmp_path)
    out = tmp_path / "out"
    res = cli(monkeypatch, "run", str(path), "--out", str(out), "--rounds", "1")
    assert res.exit_code == 0, res.output
    res = cli(monkeypatch, "run", str(path), "--out", str(out))
    assert res.exit_code == 0, res.output
    state = out / "state" / "state.db"
    assert f"resuming after round 1 of 2 ({state})" in " ".join(res.stdout.split())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["status"] == "completed"

    before = digests(out)
    res = cli(monkeypatch, "run", str(path), "--out", str(out))
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "already complete: nothing to do (use --force to run it again from round 0)" in text
    assert "resuming" not in text
    assert digests(out) == before  # nothing recomputed

    res = cli(monkeypatch, "run", str(path), "--out", str(out), "--rounds", "1", "--force")
    assert res.exit_code == 0, res.output
    assert "starting afresh from round 0" in res.stdout and "resuming" not in res.stdout
    fresh = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in fresh["rounds"]] == [1]
    assert (out / "rounds.csv").read_text().count("\n") == 2  # header and the new round 1


def test_interrupted_run_records_it_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.cli.runner import RunPlan, run_scenario

    path = scenario(tmp_path)
    out = tmp_path / "out"

    def stop(rec: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenario(RunPlan(path, load_scenario(path), out, "inprocess", 2), on_round=stop)
    fed = json.loads((out / "federation.json").read_text())
    assert fed["status"] == "interrupted" and fed["rounds_planned"] == 2
    assert fed["rounds_done"] >= 1 and fed["fingerprint"] == load_scenario(path).fingerprint()
    assert not (out / "summary.json").exists()
    res = cli(monkeypatch, "run", str(path), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"resuming after round {fed['rounds_done']} of 2" in " ".join(res.stdout.split())


def test_interrupt_via_cli_says_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.cli import run_cmd

    def interrupted(plan: object, **_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_cmd, "run_scenario", interrupted)
    res = cli(monkeypatch, "run", str(scenario(tmp_path)), "--out", str(tmp_path / "o"))
    assert res.exit_code == EXIT_INTERRUPTED, res.output
    msg = " ".join(res.stderr.split())
    assert "interrupted after round 0 of 2" in msg and "status interrupted" in msg


def test_site_whose_data_cannot_load_is_refused_once_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx = generate_transactions(GeneratedData(transactions=300, fraud_rate=0.05), seed=11)
    mapping = write_transactions_csv(tx, tmp_path / "c.csv")
    lines = (tmp_path / "c.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("amount")] = "abc"
    lines[3] = ",".join(row)
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    cols = json.dumps(mapping.model_dump(exclude_none=True))
    site = f"  - {{id: bank-c, data: {{kind: csv, path: c.csv, columns: {cols}}}}}\n"
    path = scenario(tmp_path)
    path.write_text(path.read_text().replace("task:", site + "task:", 1))
    res = cli(monkeypatch, "run", str(path), "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    flat = " ".join(res.stderr.split())
    where = f"{tmp_path / 'c.csv'}, line 4, column 'amount': cannot read amount 'abc'"
    assert flat.count(where) == 1  # said once, before any round
    assert "site 'bank-c' (data kind csv)" in flat and "nothing was run" in flat
    assert "round" not in res.stdout and not (tmp_path / "out").exists()


def test_site_whose_training_labels_are_all_fraud_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx = generate_transactions(GeneratedData(transactions=300, fraud_rate=0.05), seed=11)
    tx = dataclasses.replace(tx, label=np.ones(len(tx), dtype=np.int64))
    mapping = write_transactions_csv(tx, tmp_path / "c.csv")
    cols = json.dumps(mapping.model_dump(exclude_none=True))
    site = f"  - {{id: bank-c, data: {{kind: csv, path: c.csv, columns: {cols}}}}}\n"
    path = scenario(tmp_path)
    path.write_text(path.read_text().replace("task:", site + "task:", 1))
    res = cli(monkeypatch, "run", str(path), "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    flat = " ".join(res.stderr.split())
    assert "training transactions" in flat and "are labelled 1 (fraud)" in flat
    assert "site 'bank-c'" in flat and "round" not in res.stdout


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/x", ".."])
def test_a_name_that_would_leave_runs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("name: NAME", f"name: {json.dumps(name)}"))
    res = cli(monkeypatch, "run", str(path))
    assert res.exit_code == 2, res.output
    assert "name: name must be 1 to 64 characters" in " ".join(res.stderr.split())
    assert sorted(tmp_path.iterdir()) == sorted([work, path])  # nothing written beside them
    assert list(work.iterdir()) == []  # not even runs/
