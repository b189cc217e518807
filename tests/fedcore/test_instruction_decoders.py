"""Instruction decoders: what a hostile or broken coordinator sends is refused with a ValueError
naming the field, what was expected and what was found."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import ConfigRecord, RecordDict

from fedcore import records as R
from fedcore.config import TaskSpec, TrainingSpec


def _record(**changes: Any) -> dict[str, Any]:
    rec = dict(R.RoundConfig(3, 7, TaskSpec(hidden=8), run_key="abc-01").to_record())
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"round": -1}, r"field 'round': expected an integer in 0\.\.10000, found int -1"),
        ({"round": True}, "field 'round': expected an integer .* found bool True"),
        ({"round": 3.0}, "found float 3.0"),
        ({"seed": "7"}, "field 'seed': expected an integer"),
        ({"epochs": 1001}, r"field 'epochs': expected an integer in 0\.\.1000"),
        ({"weight": float("nan")}, r"field 'weight': expected a finite number in \[0, 1e\+09\]"),
        ({"weight": 10**400}, "field 'weight'"),
        ({"headroom": 1.5}, "field 'headroom'"),
        ({"deadline_s": float("inf")}, "field 'deadline_s'"),
        ({"device": 5000}, "field 'device'"),
        ({"run_key": "../../etc"}, "field 'run_key': expected '' or up to 128 letters"),
        ({"run_key": "a/b"}, "field 'run_key'"),
        ({"run_key": ".."}, "field 'run_key'"),
        ({"training": '{"weight_decay": 1e999}'}, r"expected finite numbers, found inf at "),
        ({"training": '{"local_epochs": 0}'}, "expected a valid TrainingSpec section"),
        ({"task": "x" * (R.MAX_SPEC_CHARS + 1)}, "expected the JSON text of a TaskSpec"),
        ({"task": b"{}"}, "field 'task': expected the JSON text"),
    ],
)
def test_a_malformed_round_config_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        R.RoundConfig.from_record(_record(**changes))


def test_a_round_config_keeps_its_defaults_and_round_trips() -> None:
    cfg = R.RoundConfig(4, -2, TaskSpec(hidden=8), TrainingSpec(lr=0.5), run_key="k", weight=0.25)
    assert R.RoundConfig.from_record(cfg.to_record()) == cfg
    minimal = {"round": 1, "seed": 0, "task": "{}"}  # every other field takes its default
    assert R.RoundConfig.from_record(minimal) == R.RoundConfig(1, 0, TaskSpec())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (RecordDict(), "expected a 'config' record"),
        (RecordDict({R.CONFIG: ConfigRecord({"round": -3})}), "field 'round'"),
        (RecordDict({R.CONFIG: ConfigRecord({"run_key": "/etc"})}), "field 'run_key'"),
        (RecordDict({R.CONFIG: ConfigRecord({"task": "[]"})}), "valid TaskSpec"),
    ],
)
def test_a_malformed_telemetry_query_is_refused(content: RecordDict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        R.read_telemetry_instruction(content)


def test_a_telemetry_query_reads_round_run_and_task() -> None:
    task = TaskSpec(hidden=16)
    assert R.read_telemetry_instruction(R.telemetry_instruction(4, "run-1", task)) == (
        4,
        "run-1",
        task,
    )


def _aggregates(**changes: Any) -> RecordDict:
    aggs = R.CkksAggregates(
        10, [R.CkksRound(1, [b"a", b"b"], 2.0, 2), R.CkksRound(2, [b"c"], 1.5, 1)]
    )
    rec = dict(aggs.to_record())
    rec.update(changes)
    return RecordDict({R.CKKS_AGGREGATES: ConfigRecord(rec)})


@pytest.mark.parametrize(
    ("changes", "latest", "message"),
    [
        ({}, 1, r"field 'rounds': expected a list of rounds in 1\.\.1 .* found int 2"),
        ({"rounds": [2, 1]}, None, "expected strictly increasing rounds, found \\[2, 1\\]"),
        ({"rounds": [0, 1]}, None, "field 'rounds'"),
        ({"weights": [2.0, float("nan")]}, None, "field 'weights': expected a list of finite"),
        ({"weights": [0.0, 1.0]}, None, "field 'weights'"),
        ({"counts": [0, 1]}, None, "field 'counts'"),
        ({"chunk_counts": [2, 0]}, None, "field 'chunk_counts'"),
        ({"chunk_counts": [2, 2]}, None, r"expected 4 chunks \(the sum of chunk_counts\), found 3"),
        ({"counts": [2]}, None, "expected as many weights, counts and chunk counts as rounds"),
        ({"chunks": ["a", "b", "c"]}, None, "field 'chunks'"),
        ({"length": -1}, None, "field 'length'"),
        ({"length": "10"}, None, "field 'length'"),
    ],
)
def test_malformed_encrypted_aggregates_are_refused(
    changes: dict[str, Any], latest: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        R.CkksAggregates.from_content(_aggregates(**changes), latest_round=latest)


def test_aggregates_up_to_the_instructions_round_are_read() -> None:
    got = R.CkksAggregates.from_content(_aggregates(), latest_round=2)
    assert [r.round for r in got.rounds] == [1, 2] and got.rounds[0].chunks == [b"a", b"b"]
    assert got.length == 10 and (got.rounds[1].weight, got.rounds[1].count) == (1.5, 1)
