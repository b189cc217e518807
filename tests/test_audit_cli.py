"""`fedcore audit verify LOG`: exit codes and output; a real run writes a valid audit log."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from coordinator.audit import AuditLog, line_hash, read_log
from fedcore.cli.main import app
from fedcore.cli.runner import RunFailed, RunPlan, run_scenario
from fedcore.config import GeneratedData, Scenario, load_scenario
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions
from fedcore.records import RoundRecord


def audit(*args: str) -> Result:
    return CliRunner().invoke(app, ["audit", *args], env={"COLUMNS": "400"})


def write_log(path: Path) -> Path:
    with AuditLog(path) as log:
        log.append("run_started", scenario="tiny [bold]x[/bold]")
        for n in (1, 2):
            rec: RoundRecord = {
                "round": n,
                "sites": ["bank-a", "bank-b"],
                "loss": 0.1,
                "eval_loss": 0.1,
                "pr_auc": 0.5,
                "roc_auc": 0.5,
                "seconds": 1.0,
                "bytes_up": 1,
                "bytes_down": 1,
                "rejected": {"bank-c": ["file not found"]},
                "per_site": {},
                "schedule": {},
            }
            log.record_round(rec)
        log.append("run_finished", status="completed")
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def rewrite(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in new))


def test_intact_log_exits_0_with_a_summary(tmp_path: Path) -> None:
    log = write_log(tmp_path / "audit.jsonl")
    res = audit("verify", str(log))
    assert res.exit_code == 0, res.output
    last = line_hash(lines(log)[-1])
    assert res.stdout.strip() == f"audit log OK: 5 entries, rounds 1..2, last hash {last}"
    assert audit("verify", str(log), "--last", last).exit_code == 0


def test_each_tampering_exits_1_naming_the_line(tmp_path: Path) -> None:
    log = write_log(tmp_path / "audit.jsonl")
    original = lines(log)
    cases: dict[str, tuple[list[bytes], str]] = {}
    edited = list(original)
    edited[2] = edited[2].replace(b"file not found", b"accepted")
    cases["edited"] = (edited, "line 3: edited")
    removed = original[:2] + original[3:]
    cases["removed"] = (removed, "line 3: seq 3 where 2 was expected")
    swapped = list(original)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    cases["reordered"] = (swapped, "line 4: seq 2 after seq 3: lines reordered")
    garbage = list(original)
    garbage[1] = b"{not json"
    cases["not json"] = (garbage, "line 2: not JSON")
    for name, (content, expected) in cases.items():
        copy = tmp_path / f"{name}.jsonl"
        rewrite(copy, content)
        res = audit("verify", str(copy))
        assert res.exit_code == 1, (name, res.output)
        assert "audit log BROKEN" in res.stderr and expected in res.stderr, (name, res.stderr)
        assert "audit log OK" not in res.stdout


def test_last_line_edit_is_caught_with_last(tmp_path: Path) -> None:
    log = write_log(tmp_path / "audit.jsonl")
    recorded = read_log(log).last_hash
    content = lines(log)
    content[-1] = content[-1].replace(b"completed", b"failed")
    rewrite(log, content)
    assert audit("verify", str(log)).exit_code == 0  # the chain alone cannot see it
    res = audit("verify", str(log), "--last", recorded)
    assert res.exit_code == 1 and f"not the expected {recorded}" in res.stderr
    rewrite(log, content[:-1])  # lines removed from the end
    assert audit("verify", str(log), "--last", recorded).exit_code == 1


def test_markup_in_the_file_is_printed_verbatim(tmp_path: Path) -> None:
    log = write_log(tmp_path / "audit.jsonl")
    content = lines(log)
    content[0] = b"[red]not[/red] json"
    rewrite(log, content)
    res = audit("verify", str(log))
    assert res.exit_code == 1 and "line 1: not JSON" in res.stderr


def test_missing_log_exits_2(tmp_path: Path) -> None:
    res = audit("verify", str(tmp_path / "nope [x].jsonl"))
    assert res.exit_code == 2
    assert "cannot read the audit log" in res.stderr and "nope [x].jsonl" in res.stderr
    res = audit("verify", str(tmp_path))  # a folder
    assert res.exit_code == 2


TINY = textwrap.dedent(
    """
    name: tiny-audit
    seed: 5
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 600, fraud_rate: 0.03}}
      - {id: bank-b, data: {kind: generated, transactions: 400, fraud_rate: 0.03}}
      - {id: bank-c, data: {kind: csv, path: c.csv, columns: COLUMNS}}
    task: {hidden: 8}
    training: {local_epochs: 1}
    scheduler: {min_sites: 2}
    """
)


def tiny_scenario(tmp_path: Path, min_sites: int = 2) -> tuple[Path, Scenario]:
    """A three-bank scenario whose bank-c loses its file after validation (it is rejected)."""
    tx = generate_transactions(GeneratedData(transactions=400, fraud_rate=0.03), seed=11)
    mapping = write_transactions_csv(tx, tmp_path / "c.csv")
    cols = json.dumps(mapping.model_dump(exclude_none=True))
    path = tmp_path / "tiny.yaml"
    path.write_text(
        TINY.replace("COLUMNS", cols).replace("min_sites: 2", f"min_sites: {min_sites}")
    )
    sc = load_scenario(path)
    (tmp_path / "c.csv").unlink()
    return path, sc


def test_a_run_writes_a_valid_audit_log_and_a_rerun_continues_it(tmp_path: Path) -> None:
    """A short in-process run: run_started, a round_completed per round, run_finished."""
    import flwr

    import fedcore

    path, sc = tiny_scenario(tmp_path)
    out = tmp_path / "out"
    run_scenario(RunPlan(path, sc, out, "inprocess", 2))
    log = out / "audit.jsonl"
    found = read_log(log)
    assert found.ok, found.problems
    events = [e["event"] for e in found.entries]
    assert events == [
        "run_started",
        "sites_joined",
        "round_completed",
        "round_completed",
        "run_finished",
    ]
    start = found.entries[0]
    assert start["scenario"] == "tiny-audit" and start["fingerprint"] == sc.fingerprint()
    assert start["scenario_path"] == str(path.resolve())
    assert start["privacy_mode"] == "plaintext" and start["members"] == [
        "bank-a",
        "bank-b",
        "bank-c",
    ]
    assert start["fedcore_version"] == fedcore.__version__
    assert start["flwr_version"] == flwr.__version__ and len(start["run_key"]) > 16
    assert len(start["scenario_sha256"]) == 64
    assert found.entries[1]["sites"] == ["bank-a", "bank-b"]  # bank-c never took part
    rounds = [e for e in found.entries if e["event"] == "round_completed"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["sites"] == ["bank-a", "bank-b"]
        assert "reports 0 training examples" in " ".join(r["rejected"]["bank-c"])
    rounds_jsonl = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    for r, rec in zip(rounds, rounds_jsonl, strict=True):
        assert r["sites"] == rec["sites"] and r["rejected"] == rec["rejected"]
    end = found.entries[-1]
    assert end["status"] == "completed" and end["rounds_completed"] == 2
    assert end["run_key"] == start["run_key"] and end["privacy"]["mode"] == "plaintext"
    assert audit("verify", str(log)).exit_code == 0

    # the same scenario into the same folder resumes: the chain goes on, the run key stays
    run_scenario(RunPlan(path, sc, out, "inprocess", 2))
    again = read_log(log)
    assert again.ok, again.problems
    assert [e["event"] for e in again.entries[5:]] == ["run_started", "run_finished"]
    assert again.entries[5]["resumed_after_round"] == 2
    assert again.entries[5]["run_key"] == start["run_key"]


def test_a_failed_run_ends_its_audit_log_with_the_reason(tmp_path: Path) -> None:
    path, sc = tiny_scenario(tmp_path, min_sites=3)
    out = tmp_path / "out"
    with pytest.raises(RunFailed):
        run_scenario(RunPlan(path, sc, out, "inprocess", 2))
    found = read_log(out / "audit.jsonl")
    assert found.ok, found.problems
    assert [e["event"] for e in found.entries] == ["run_started", "run_finished"]
    end = found.entries[-1]
    assert end["status"] == "failed" and end["rounds_completed"] == 0
    assert "need scheduler.min_sites=3" in end["error"]


def test_fedcore_run_refuses_an_out_dir_whose_audit_log_is_broken(tmp_path: Path) -> None:
    path, _ = tiny_scenario(tmp_path)
    # `fedcore run` checks every site's data first: give bank-c its file back.
    tx = generate_transactions(GeneratedData(transactions=400, fraud_rate=0.03), seed=11)
    write_transactions_csv(tx, tmp_path / "c.csv")
    out = tmp_path / "out"
    out.mkdir()
    (out / "audit.jsonl").write_text("[bold]garbage[/bold]\n")
    res = CliRunner().invoke(
        app, ["run", str(path), "--out", str(out), "--rounds", "1"], env={"COLUMNS": "400"}
    )
    assert res.exit_code == 2, res.output
    assert "cannot use the output directory" in res.stderr
    assert "audit.jsonl is broken (line 1: not JSON" in res.stderr
    assert "[bold]garbage[/bold]" not in res.stderr  # the file's text is never echoed as markup
    assert (out / "audit.jsonl").read_text() == "[bold]garbage[/bold]\n"
