"""Record layout: what travels between coordinator and sites survives the trip, and hostile input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedcore import records as R
from fedcore.config import PrivacySpec, TaskSpec, TrainingSpec


def _cfg(**kw: object) -> R.RoundConfig:
    base: dict[str, object] = {"round": 3, "seed": 7, "task": TaskSpec(model="fraud-gnn")}
    base.update(kw)
    return R.RoundConfig(**base)  # type: ignore[arg-type]


def test_round_config_round_trip_carries_typed_sections_and_weight() -> None:
    cfg = _cfg(privacy=PrivacySpec(mode="ckks"), run_key="abc", weight=0.25, max_sites=5)
    back = R.RoundConfig.from_record(cfg.to_record())
    assert back == cfg
    assert back.mode == "ckks" and isinstance(back.privacy, PrivacySpec)
    assert isinstance(back.task, TaskSpec) and isinstance(back.training, TrainingSpec)
    assert R.RoundConfig.from_record(_cfg().to_record()).mode == "plaintext"


def test_round_config_sections_travel_as_sorted_json() -> None:
    rec = _cfg(training=TrainingSpec(lr=0.5)).to_record()
    assert json.loads(str(rec["training"]))["lr"] == 0.5
    assert str(rec["task"]) == json.dumps(TaskSpec().model_dump(mode="json"), sort_keys=True)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("privacy", '{"mode": "rot13"}', "malformed round config"),
        ("task", "not json", "malformed round config"),
        ("round", "three", "malformed round config"),
    ],
)
def test_a_bad_round_config_says_what_is_wrong(key: str, value: str, message: str) -> None:
    rec = dict(_cfg().to_record())
    rec[key] = value
    with pytest.raises(ValueError, match=message):
        R.RoundConfig.from_record(rec)


def test_a_round_config_without_its_task_is_refused() -> None:
    rec = dict(_cfg().to_record())
    del rec["task"]
    with pytest.raises(ValueError, match="lacks 'task'"):
        R.RoundConfig.from_record(rec)


def test_ckks_aggregates_round_trip() -> None:
    aggs = R.CkksAggregates(
        length=10,
        rounds=[
            R.CkksRound(1, [b"a", b"bb"], 1.0, 3),
            R.CkksRound(2, [b"ccc"], 0.75, 2),
        ],
    )
    content = R.ckks_instruction(_cfg(), aggs, None)
    assert R.ARRAYS not in content.array_records  # no clear model after round 0
    assert R.CkksAggregates.from_content(content) == aggs


def test_ckks_instruction_carries_base_only_when_asked() -> None:
    base = {"w": np.arange(4, dtype=np.float32)}
    content = R.ckks_instruction(_cfg(), R.CkksAggregates(4), base)
    arrays, _ = R.read_instruction(content)
    assert arrays is not None and np.array_equal(arrays["w"], base["w"])


@pytest.mark.parametrize(
    "record",
    [
        {
            "length": 4,
            "rounds": [1],
            "weights": [1.0],
            "counts": [2],
            "chunk_counts": [2],
            "chunks": [b"x"],
        },
        {
            "length": 4,
            "rounds": [1, 2],
            "weights": [1.0],
            "counts": [2],
            "chunk_counts": [1],
            "chunks": [b"x"],
        },
        {
            "length": 4,
            "rounds": [1],
            "weights": [1.0],
            "counts": [2],
            "chunk_counts": [1],
            "chunks": ["text"],
        },
        {"rounds": [1], "weights": [1.0], "counts": [2], "chunk_counts": [1], "chunks": [b"x"]},
    ],
)
def test_malformed_aggregates_are_refused(record: dict[str, object]) -> None:
    content = RecordDict({R.CKKS_AGGREGATES: ConfigRecord(record)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ckks.aggregates"):
        R.CkksAggregates.from_content(content)


def test_encrypted_train_reply_round_trip_and_digest() -> None:
    reply = R.TrainReply({}, 100, 0.5, 1.0, "bank-a", encrypted=[b"c1", b"c2"], length=9, round=4)
    content = reply.to_content()
    assert R.ARRAYS not in content.array_records  # ciphertext only
    back = R.TrainReply.from_content(content)
    assert back == reply
    assert back.digest() == reply.digest()
    tampered = R.TrainReply({}, 100, 0.5, 1.0, "bank-a", encrypted=[b"c1", b"c3"], length=9)
    assert tampered.digest() != reply.digest()


def test_train_reply_with_int_chunk_is_refused() -> None:
    content = R.TrainReply({}, 1, 0.1, 0.1, "a", encrypted=[b"x"], length=1).to_content()
    content[R.CKKS_UPDATE] = ConfigRecord({"chunks": [5], "length": 1})
    with pytest.raises(ValueError, match="list of bytes"):
        R.TrainReply.from_content(content)


def test_signature_attaches_and_reads() -> None:
    content = RecordDict()
    assert R.read_signature(content) is None
    R.attach_signature(content, b"sig")
    assert R.read_signature(content) == b"sig"


def test_signing_payload_binds_kind_site_round_and_run() -> None:
    p = R.signing_payload(R.TRAIN, "bank-a", 3, "run1", b"body")
    assert p != R.signing_payload(R.TRAIN, "bank-b", 3, "run1", b"body")
    assert p != R.signing_payload(R.TRAIN, "bank-a", 4, "run1", b"body")
    assert p != R.signing_payload(R.TRAIN, "bank-a", 3, "run2", b"body")
    assert p != R.signing_payload(R.TELEMETRY, "bank-a", 3, "run1", b"body")


def test_arrays_digest_is_order_independent_and_content_sensitive() -> None:
    a = {"x": np.ones(3, np.float32), "y": np.zeros(2, np.float32)}
    b = {"y": np.zeros(2, np.float32), "x": np.ones(3, np.float32)}
    assert R.arrays_digest(a) == R.arrays_digest(b)
    c = {"x": np.ones(3, np.float32), "y": np.array([0, 1e-7], np.float32)}
    assert R.arrays_digest(a) != R.arrays_digest(c)


def test_telemetry_model_round_and_instruction_task() -> None:
    tel = R.Telemetry("bank-a", 10, "cpu", "cpu", {"u": 1.0}, model_round=4)
    assert R.Telemetry.from_content(tel.to_content()) == tel
    rnd, key, task = R.read_telemetry_instruction(
        R.telemetry_instruction(2, "k", TaskSpec(hidden=8))
    )
    assert (rnd, key, task) == (2, "k", TaskSpec(hidden=8))


def test_round_log_columns_are_round_record_keys() -> None:
    from coordinator.state import ROUND_FIELDS

    keys = set(R.RoundRecord.__required_keys__) | set(R.RoundRecord.__optional_keys__)
    assert set(ROUND_FIELDS) <= keys, set(ROUND_FIELDS) - keys
    assert {"round", "sites", "loss", "pr_auc", "rejected"} <= set(R.RoundRecord.__required_keys__)


def test_telemetry_says_the_kind_of_data_problem_and_nothing_more() -> None:
    tel = R.Telemetry("bank-a", 0, "cpu", "cpu", data_problem="missing")
    back = R.Telemetry.from_content(tel.to_content())
    assert back.data_problem == "missing" and back.digest() == tel.digest()
    # a healthy site's telemetry (no problem) signs the same digest as before the field existed
    assert (
        "data_problem" not in R.Telemetry("bank-a", 5, "cpu", "cpu").to_content()[R.TELEMETRY_INFO]
    )
    content = tel.to_content()
    content.config_records[R.TELEMETRY_INFO]["data_problem"] = "line 50, column amount: 'abc'"
    with pytest.raises(ValueError, match="telemetry data_problem: expected one of"):
        R.Telemetry.from_content(content)
