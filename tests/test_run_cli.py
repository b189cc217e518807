"""`fedcore run` end to end on a tiny scenario (in-process engine), as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import Result
from rich.errors import MarkupError
from typer.testing import CliRunner

from fedcore.config import GeneratedData
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions

TINY = textwrap.dedent(
    """
    name: tiny
    seed: 5
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 900, fraud_rate: 0.03}}
      - {id: bank-b, data: {kind: generated, transactions: 500, fraud_rate: 0.03, customer_mix: business}}
      - {id: bank-c, data: {kind: csv, path: c.csv, columns: COLUMNS}}
    task: {hidden: 8}
    training: {local_epochs: 1}
    scheduler: {min_sites: 2}
    """
)


def fedcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_scenario(tmp_path: Path) -> Path:
    tx = generate_transactions(GeneratedData(transactions=500, fraud_rate=0.03), seed=11)
    mapping = write_transactions_csv(tx, tmp_path / "c.csv")
    cols = json.dumps(mapping.model_dump(exclude_none=True))
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("COLUMNS", cols))
    return path


def test_run_writes_summary(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    res = fedcore("run", str(scenario), "--out", str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "plaintext" in res.stderr  # the mode says so loudly, once and whole (boxed)
    from secure.modes import PLAINTEXT_WARNING

    words = " ".join(w for w in res.stderr.split() if w not in "│╭╮╰╯─")
    assert " ".join(PLAINTEXT_WARNING.split()) in words, res.stderr
    assert (res.stdout + res.stderr).count("site updates travel") == 1, res.stdout + res.stderr
    assert "pre-processing before quantization" not in res.stdout + res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["scenario"] == "tiny" and s["engine"] == "inprocess"
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    for r in s["rounds"]:
        assert set(r) >= {"round", "sites", "loss", "pr_auc", "seconds", "bytes_up", "bytes_down"}
        assert r["sites"] == ["bank-a", "bank-b", "bank-c"] and r["bytes_up"] > 0
    assert set(s["final"]) >= {"pr_auc", "roc_auc", "f1", "fpr"}
    b = s["baselines"]
    assert (
        set(b["local_only"]["per_site"]) == {"bank-a", "bank-b", "bank-c"}
        and "mean" in b["local_only"]
    )
    assert "pr_auc" in b["centralized"] and "pr_auc" in b["non_graph"]
    assert s["wall_seconds"] > 0
    assert (out / "model.safetensors").stat().st_size > 0
    assert (out / "rounds.csv").read_text().count("\n") == 3
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert all(isinstance(v, torch.Tensor) for v in weights.values())


def test_site_with_missing_data_is_left_out(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    # the scenario was valid when written; the bank's file disappears before the run
    text = scenario.read_text()
    (tmp_path / "c.csv").rename(tmp_path / "moved.csv")
    scenario.write_text(text)
    res = fedcore("validate", str(scenario))
    assert res.returncode == 2 and "file not found" in res.stderr
    # at run time the coordinator does not see site files: simulate by running on a scenario whose
    # site file goes missing after fedcore wrote the site configs
    from fedcore.cli.runner import RunPlan, run_scenario
    from fedcore.config import load_scenario

    (tmp_path / "moved.csv").rename(tmp_path / "c.csv")
    sc = load_scenario(scenario)
    (tmp_path / "c.csv").unlink()
    summary = run_scenario(RunPlan(scenario, sc, out, "inprocess", 2), on_round=None)
    assert all(r["sites"] == ["bank-a", "bank-b"] for r in summary["rounds"])
    # the site tells the coordinator the kind of problem only, never the error's text
    assert summary["rounds"][0]["rejected"]["bank-c"] == [
        "telemetry: reports 0 training examples: its data file is missing; expected at least 1"
    ]


def test_too_few_sites_exits_1_and_keeps_state(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    text = scenario.read_text().replace("min_sites: 2", "min_sites: 3")
    scenario.write_text(text)
    out = tmp_path / "out"
    from fedcore.cli.runner import RunFailed, RunPlan, run_scenario
    from fedcore.config import load_scenario

    sc = load_scenario(scenario)
    (tmp_path / "c.csv").write_text("not,a,bank,export\n1,2,3,4\n")
    try:
        run_scenario(RunPlan(scenario, sc, out, "inprocess", 2))
    except RunFailed as exc:
        # bank-c's telemetry already says its data fail the checks: round 1 cannot start
        assert "only 2 site(s) answered telemetry, need scheduler.min_sites=3" in str(exc)
        assert "bank-c: reports 0 training examples: its data fail the data checks" in str(exc)
    else:
        raise AssertionError("the run should have failed")
    assert json.loads((out / "federation.json").read_text())["status"] == "failed"


def test_ckks_dp_run_records_privacy_and_never_writes_secrets(tmp_path: Path) -> None:
    import base64

    scenario = write_scenario(tmp_path)
    text = scenario.read_text() + (
        "privacy:\n  mode: ckks\n  ckks: {poly_modulus_degree: 4096, values_per_slot: 2}\n"
        "  dp: {noise_multiplier: 1.0, clip_norm: 0.1}\n"
    )
    scenario.write_text(text)
    out = tmp_path / "out"
    res = fedcore("run", str(scenario), "--out", str(out), "-v")
    assert res.returncode == 0, res.stderr + res.stdout
    s = json.loads((out / "summary.json").read_text())
    priv = s["privacy"]
    assert priv["mode"] == "ckks" and priv["authenticated"] is True
    assert priv["ckks"]["coordinator_holds_secret_key"] is False
    assert priv["epsilon"] > 0 and priv["delta"] == 1e-5
    assert priv["bytes_up"] > 0 and priv["bytes_down"] > 0
    assert s["model_holder"] == "sites" and not (out / "model.safetensors").exists()
    assert [r["epsilon"] for r in s["rounds"]] == sorted(r["epsilon"] for r in s["rounds"])
    assert "ε" in res.stdout  # the running epsilon is printed per round

    # every secret in the kits: PEM/OpenSSH key bodies and slices of the CKKS secret context
    kits = out / "kits"
    secret_names = {"ca.key", "server.key", "client.key", "node.key", "ckks-secret.ctx"}
    needles: list[bytes] = []
    for f in kits.rglob("*"):
        if f.name not in secret_names:
            continue
        data = f.read_bytes()
        if f.suffix == ".ctx":
            for i in range(0, len(data) - 48, max(1, len(data) // 8)):
                piece = data[i : i + 48]
                needles += [piece, piece.hex().encode(), base64.b64encode(piece)[:40]]
        else:
            needles += [ln for ln in data.splitlines() if len(ln) >= 40 and b"-----" not in ln]
    assert needles
    haystacks = [res.stdout.encode(), res.stderr.encode()]
    haystacks += [f.read_bytes() for f in out.rglob("*") if f.is_file() and kits not in f.parents]
    for needle in needles:
        for hay in haystacks:
            assert needle not in hay


def test_out_dir_of_another_scenario_is_refused_cleanly(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    assert fedcore("run", str(scenario), "--out", str(out), "--rounds", "1").returncode == 0
    before = (out / "rounds.csv").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(scenario.read_text().replace("seed: 5", "seed: 6"))
    res = fedcore("run", str(other), "--out", str(out), "--rounds", "1")
    assert res.returncode == 2, res.stderr
    assert "cannot use the output directory" in res.stderr and "different scenario" in res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "rounds.csv").read_text() == before  # the earlier run is untouched


MARKUP_LIKE = "site bank-b: POST [/v1/fleet/activate-node] refused; log tail: [bold]x[/bold] \\[y]"


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """`fedcore ARGS` in this process (so a test can patch the runner), wide enough for one line."""
    from fedcore.cli.main import app

    monkeypatch.setenv("COLUMNS", "400")
    return CliRunner().invoke(app, list(args))


def test_failure_message_with_markup_like_text_is_printed_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.cli import run_cmd
    from fedcore.cli.runner import RunFailed

    def fail(plan: object, **_: object) -> None:
        raise RunFailed(MARKUP_LIKE)

    monkeypatch.setattr(run_cmd, "run_scenario", fail)
    out = tmp_path / "out[bold]"
    res = _cli(monkeypatch, "run", str(write_scenario(tmp_path)), "--out", str(out))
    assert res.exit_code == 1, res.output  # README: 1 the federation failed
    assert not isinstance(res.exception, MarkupError) and "MarkupError" not in res.output
    assert f"federation failed: {MARKUP_LIKE}" in res.stderr
    assert f"kept in {out}" in res.stderr


def test_export_failure_with_markup_like_text_is_shown_verbatim() -> None:
    from rich.console import Console

    from fedcore.cli.run_cmd import summary_tables

    summary = {
        "final": {"pr_auc": 0.5, "per_site": {"bank-[a]": {"pr_auc": 0.5}}},
        "baselines": {},
        "exports": {"bank-[a]": {"error": MARKUP_LIKE}, "[b]": {"path_taken": "[i]int8"}},
    }
    console = Console(width=400, record=True)
    for table in summary_tables(summary):
        console.print(table)
    text = console.export_text()
    assert f"failed: {MARKUP_LIKE}" in text and "bank-[a]" in text and "[i]int8" in text


def test_second_run_into_a_locked_out_dir_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from fedcore.storage import exclusive_lock

    def must_not_run(plan: object, **_: object) -> None:
        raise AssertionError("the run went ahead beside the one holding the lock")

    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    with exclusive_lock(out / ".lock"):
        monkeypatch.setattr("fedcore.cli.runner._run_locked", must_not_run)
        res = _cli(monkeypatch, "run", str(scenario), "--out", str(out))
    assert res.exit_code == 2, res.output
    assert "cannot use the output directory" in res.stderr
    assert str(out) in res.stderr and f"process {os.getpid()}" in res.stderr


def test_a_run_releases_its_lock_so_a_rerun_resumes(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    assert fedcore("run", str(scenario), "--out", str(out), "--rounds", "1").returncode == 0
    res = fedcore("run", str(scenario), "--out", str(out), "--rounds", "2")
    assert res.returncode == 0, res.stderr
    assert (out / "rounds.csv").read_text().count("\n") == 3  # header, round 1 kept, round 2
    assert (out / ".lock").read_text() == ""  # released: no holder named
