"""The audit log: chain maths, append / continue / refuse a broken log, each tampering found."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import pytest

from coordinator.audit import (
    GENESIS_PREV,
    AuditError,
    AuditLog,
    line_hash,
    read_log,
    split_lines,
    verify_lines,
)
from fedcore.records import RoundRecord

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _round(n: int, sites: list[str], rejected: dict[str, list[str]] | None = None) -> RoundRecord:
    rec: dict[str, Any] = {
        "round": n,
        "sites": sites,
        "loss": float("nan"),
        "rejected": rejected or {},
        "per_site": {s: {"pr_auc": 0.5} for s in sites},
        "epsilon": 0.25 * n,
    }
    return cast(RoundRecord, rec)


def write_log(path: Path, rounds: int = 3) -> Path:
    """A run's log: run_started, sites_joined, one round_completed per round, run_finished."""
    with AuditLog(path, clock=lambda: T0) as audit:
        audit.append("run_started", scenario="tiny", fingerprint="abc")
        for n in range(1, rounds + 1):
            rejected = {"bank-c": ["file not found"]} if n == 2 else {}
            audit.record_round(_round(n, ["bank-a", "bank-b"], rejected))
        audit.append("run_finished", status="completed")
    return path


def lines_of(path: Path) -> list[bytes]:
    return split_lines(path.read_bytes())[0]


def problem_lines(lines: list[bytes]) -> list[int]:
    return sorted({p.line for p in verify_lines(lines)})


# --------------------------------------------------------------------------- chain maths


def test_line_hash_is_sha256_of_the_bytes_without_newline() -> None:
    assert line_hash(b'{"a":1}') == hashlib.sha256(b'{"a":1}').hexdigest()
    assert line_hash(b'{"a":1}\n') == line_hash(b'{"a":1}')
    assert GENESIS_PREV == "0" * 64


def test_split_lines() -> None:
    assert split_lines(b"") == ([], False)
    assert split_lines(b"a\nb\n") == ([b"a", b"b"], False)
    assert split_lines(b"a\nb") == ([b"a", b"b"], True)  # the last write was cut short


def test_hand_built_chain_verifies() -> None:
    first = json.dumps({"seq": 0, "time": "t", "event": "x", "prev": GENESIS_PREV}).encode()
    second = json.dumps({"seq": 1, "time": "t", "event": "y", "prev": line_hash(first)}).encode()
    assert verify_lines([first, second]) == []
    assert verify_lines([]) == []


def test_written_log_has_the_documented_shape(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    entries = [json.loads(x) for x in lines]
    assert [e["event"] for e in entries] == [
        "run_started",
        "sites_joined",
        "round_completed",
        "round_completed",
        "round_completed",
        "run_finished",
    ]
    assert [e["seq"] for e in entries] == list(range(6))
    assert entries[0]["prev"] == GENESIS_PREV
    for before, e in zip(lines, entries[1:], strict=False):
        assert e["prev"] == hashlib.sha256(before).hexdigest()
    assert entries[0]["time"] == "2026-01-02T03:04:05.000000+00:00"
    assert entries[1] == entries[1] | {"round": 1, "sites": ["bank-a", "bank-b"]}
    r2 = entries[3]
    assert r2["round"] == 2 and r2["sites"] == ["bank-a", "bank-b"]
    assert r2["rejected"] == {"bank-c": ["file not found"]} and r2["epsilon"] == 0.5
    assert "loss" not in r2  # only what the audit needs
    found = read_log(path)
    assert found.ok and found.rounds == [1, 2, 3] and found.last_hash == line_hash(lines[-1])


# --------------------------------------------------------------------------- append / continue / refuse


def test_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", rounds=1)
    before = path.read_bytes()
    with AuditLog(path) as audit:
        assert audit.next_seq == 4 and audit.last_hash == line_hash(lines_of(path)[-1])
        assert audit.sites_seen == {"bank-a", "bank-b"}
        audit.append("run_started", resumed_after_round=1)
        audit.record_round(_round(2, ["bank-a", "bank-b", "bank-d"]))
    assert path.read_bytes().startswith(before)  # appended, never rewritten
    found = read_log(path)
    assert found.ok, found.problems
    joined = [e for e in found.entries if e["event"] == "sites_joined"]
    assert [j["sites"] for j in joined] == [["bank-a", "bank-b"], ["bank-d"]]  # only new sites


def test_broken_log_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    del lines[2]
    tampered = b"\n".join(lines) + b"\n"
    path.write_bytes(tampered)
    with pytest.raises(AuditError, match=r"is broken \(line 3: seq 3 where 2 was expected"):
        AuditLog(path)
    assert path.read_bytes() == tampered


def test_nan_becomes_null_and_reserved_fields_are_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl") as audit:
        e = audit.append("x", value=float("nan"), nested={"v": [float("inf"), 1.0]})
        assert e["value"] is None and e["nested"] == {"v": [None, 1.0]}
        with pytest.raises(ValueError, match=r"\['seq'\] are reserved"):
            audit.append("y", seq=3)
    assert read_log(tmp_path / "a.jsonl").ok
    assert repr(AuditLog(tmp_path / "a.jsonl")).endswith("entries=1)")


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("at", "old", "new"),  # lines 1..6; the last can only be checked against --last
    [
        (1, b"tiny", b"tidy"),
        (3, b"bank-a", b"bank-x"),
        (4, b"file not found", b"ok"),
        (5, b"0.75", b"0.1"),
    ],
)
def test_edited_line_is_named(tmp_path: Path, at: int, old: bytes, new: bytes) -> None:
    lines = lines_of(write_log(tmp_path / "audit.jsonl"))
    assert old in lines[at - 1]
    lines[at - 1] = lines[at - 1].replace(old, new)
    problems = verify_lines(lines)
    assert [p.line for p in problems] == [at]
    assert problems[0].message.startswith("edited:")


def test_removed_line_is_named(tmp_path: Path) -> None:
    lines = lines_of(write_log(tmp_path / "audit.jsonl"))
    del lines[3]  # seq 3 (line 4) goes: the new line 4 shows the gap
    problems = verify_lines(lines)
    assert {p.line for p in problems} == {4}
    text = " ".join(p.message for p in problems)
    assert "seq 4 where 3 was expected: 1 entry missing" in text and "removed" in text


def test_removed_first_line_is_named(tmp_path: Path) -> None:
    lines = lines_of(write_log(tmp_path / "audit.jsonl"))[1:]
    assert problem_lines(lines) == [1]


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    lines = lines_of(write_log(tmp_path / "audit.jsonl"))
    lines[2], lines[3] = lines[3], lines[2]
    problems = verify_lines(lines)
    assert {p.line for p in problems} == {3, 4, 5}
    text = " ".join(p.message for p in problems)
    assert "lines reordered" in text and "lines moved" in text


def test_line_not_json_is_named(tmp_path: Path) -> None:
    lines = lines_of(write_log(tmp_path / "audit.jsonl"))
    lines[1] = b"this is not json"
    problems = verify_lines(lines)
    assert problems[0].line == 2 and "not JSON" in problems[0].message
    assert {p.line for p in problems} == {2, 3}  # line 3's prev no longer matches line 2 either


def test_seq_gap_with_a_valid_chain_is_named(tmp_path: Path) -> None:
    """A writer that skipped a number (the chain itself intact) is still reported."""
    first = json.dumps({"seq": 0, "time": "t", "event": "x", "prev": GENESIS_PREV}).encode()
    third = json.dumps({"seq": 2, "time": "t", "event": "y", "prev": line_hash(first)}).encode()
    problems = verify_lines([first, third])
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (2, "seq 2 where 1 was expected")
    ]


def test_duplicated_line_and_missing_fields_are_named() -> None:
    first = json.dumps({"seq": 0, "time": "t", "event": "x", "prev": GENESIS_PREV}).encode()
    odd = json.dumps({"seq": "1", "prev": line_hash(first)}).encode()
    assert problem_lines([first, first]) == [2]
    messages = [p.message for p in verify_lines([first, odd, b"[1, 2]"])]
    assert any("'time' missing" in m for m in messages)
    assert any("'seq' missing or not an integer" in m for m in messages)
    assert any("not a JSON object (a list)" in m for m in messages)


def test_torn_last_line_is_reported(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    path.write_bytes(path.read_bytes()[:-1])
    found = read_log(path)
    assert [(p.line, "cut short" in p.message) for p in found.problems] == [(6, True)]
