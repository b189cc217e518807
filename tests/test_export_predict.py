"""After the last round each site exports its model; `fed-client predict` scores CSVs with it."""

from __future__ import annotations

import csv
import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcore.cli.client_cmd import app as client_app
from fedcore.cli.runner import RunPlan, run_scenario
from fedcore.config import GeneratedData, load_scenario
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions

SCENARIO = textwrap.dedent(
    """\
    name: export-test
    seed: 4
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 900, fraud_rate: 0.03}}
      - {id: bank-b, data: {kind: generated, transactions: 600, fraud_rate: 0.03}}
    task: {hidden: 8, layers: 1}
    training: {local_epochs: 2}
    scheduler: {min_sites: 2}
    privacy: PRIVACY
    baselines: {local_only: false, centralized: false, non_graph: false}
    """
)


@pytest.fixture(
    scope="module",
    params=["{mode: plaintext}", "{mode: ckks, ckks: {poly_modulus_degree: 4096}}"],
    ids=["plaintext", "ckks"],
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("export")
    path = root / "s.yaml"
    path.write_text(SCENARIO.replace("PRIVACY", request.param))
    sc = load_scenario(path)
    summary = run_scenario(RunPlan(path, sc, root / "out", "inprocess", sc.rounds))
    return {"summary": summary, "root": root}


def test_every_site_exports_and_summary_lists_manifests(run: dict[str, Any]) -> None:
    exports = run["summary"]["exports"]
    assert set(exports) == {"bank-a", "bank-b"}
    for site, m in exports.items():
        assert "error" not in m, (site, m)
        model = Path(m["model_path"])
        assert model.is_file() and model.is_relative_to(run["root"] / "out" / "sites" / site)
        assert hashlib.sha256(model.read_bytes()).hexdigest() == m["sha256"]
        assert model.stat().st_size == m["size_bytes"]
        assert m["path_taken"] in ("onnx-static", "onnx-dynamic", "fp32-kept", "torch-dynamic")
        assert m["provider"] == "CPUExecutionProvider"
        assert m["fp32_metric"] is not None and Path(m["manifest"]).is_file()
        if m["path_taken"] in ("onnx-static", "onnx-dynamic"):
            assert m["drop"] <= m["tolerance"]
        # the site keeps its transactions as the history new ones are scored in
        history = run["root"] / "out" / "sites" / site / "history" / "history.sqlite"
        assert m["history"]["path"] == str(history) and history.is_file(), m
        assert m["history"]["added"] == m["history"]["transactions"] > 0, m


def _csv(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    tx = generate_transactions(GeneratedData(transactions=400, fraud_rate=0.03), seed=9)
    src = tmp_path / "full.csv"
    write_transactions_csv(tx, src)
    if not drop:
        return src
    out = tmp_path / "partial.csv"
    with open(src, newline="") as fin, open(out, "w", newline="") as fout:
        rows = list(csv.DictReader(fin))
        keep = [c for c in rows[0] if c not in drop]
        w = csv.DictWriter(fout, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def test_predict_scores_every_row(run: dict[str, Any], tmp_path: Path) -> None:
    model = run["summary"]["exports"]["bank-a"]["model_path"]
    data = _csv(tmp_path, drop=("label",))  # unlabeled, as a bank would score
    out = tmp_path / "scores.csv"
    res = CliRunner().invoke(
        client_app, ["predict", "--model", model, "--input", str(data), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 400
    scores = [float(r["score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 10
    assert {r["flagged"] for r in rows} <= {"0", "1"}


def test_predict_rejects_wrong_columns(run: dict[str, Any], tmp_path: Path) -> None:
    model = run["summary"]["exports"]["bank-b"]["model_path"]
    data = _csv(tmp_path, drop=("amount", "timestamp"))
    res = CliRunner().invoke(client_app, ["predict", "--model", model, "--input", str(data)])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "missing column(s) amount, timestamp" in text


def test_predict_refuses_a_tampered_model(run: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    src = Path(run["summary"]["exports"]["bank-a"]["model_path"]).parent
    copy = tmp_path / "export"
    shutil.copytree(src, copy)
    served = copy / run["summary"]["exports"]["bank-a"]["file"]
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")
    res = CliRunner().invoke(
        client_app, ["predict", "--model", str(served), "--input", str(_csv(tmp_path))]
    )
    assert res.exit_code != 0
    assert "sha256" in res.output.lower() or "hash" in res.output.lower(), res.output


def test_fed_client_serve_starts_from_a_runs_site_state_scores_and_stops_on_sigterm(
    run: dict[str, Any], tmp_path: Path
) -> None:
    """What a bank does after `fedcore run`: serve its export over HTTP in the context of its history."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    state = run["root"] / "out" / "sites" / "bank-b"
    history = state / "history" / "history.sqlite"
    held = int(run["summary"]["exports"]["bank-b"]["history"]["transactions"])
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "fedcore.cli.client_cmd", "serve", "--state", str(state)]
    cmd += ["--host", "127.0.0.1", "--port", "0"]
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = ""
        deadline = time.monotonic() + 120
        while not url and time.monotonic() < deadline and proc.poll() is None:
            lines = [x for x in log.read_text().splitlines() if x.startswith("listening on ")]
            url = lines[0].split()[2] if lines else ""
            time.sleep(0.1)
        assert url, log.read_text()
        row = {
            "tx_id": "new-1",
            "payer": "AC0000001",
            "payee": "AC0000002",
            "amount": 120.0,
            "timestamp": "2024-03-01T10:00:00Z",
            "channel_online": 1,
            "card_present": 0,
            "hour_of_day": 10,
            "account_age_days": 300,
        }
        request = urllib.request.Request(
            url + "/v1/score", json.dumps(row).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            scored = json.loads(answer.read())
        assert scored["tx_id"] == "new-1" and 0.0 <= scored["score"] <= 1.0
        assert scored["flagged"] == (scored["score"] >= scored["threshold"])
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    import sqlite3

    with sqlite3.connect(history) as db:  # the new transaction joined the site's history
        assert db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] == held + 1
        assert db.execute("SELECT payer FROM transactions WHERE tx_id = 'new-1'").fetchone()
