"""What replies carry besides their own answer: the next round's telemetry, the incoming model's evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedcore import carry
from fedcore import records as R
from fedcore.config import TaskSpec


def _cfg() -> R.RoundConfig:
    return R.RoundConfig(round=3, seed=7, task=TaskSpec(model="fraud-gnn"))


def _evaluation(site: str = "bank-a") -> R.EvalReply:
    hp = [0] * R.HIST_BINS
    hn = [0] * R.HIST_BINS
    hp[-1], hn[0] = 3, 9
    return R.EvalReply(site, 12, 3, 0.2, {"pr_auc": 0.75}, hp, hn, model_digest="ab12")


def test_telemetry_rides_on_an_evaluate_reply_with_its_signature() -> None:
    instruction = R.evaluate_instruction({"w": np.zeros(2, np.float32)}, _cfg())
    asked = carry.request_telemetry(instruction, 5)
    assert carry.read_telemetry_request(asked) == 5
    assert carry.read_telemetry_request(instruction) is None  # the original is left alone
    tel = R.Telemetry("bank-a", 10, "cpu", "cpu", {"u": 1.0}, model_round=4)
    signed = R.attach_signature(tel.to_content(), b"sig")
    reply = _evaluation().to_content()
    assert carry.carried_telemetry(reply) is None
    carry.attach_telemetry(reply, signed)
    assert R.read_signature(reply) is None  # the evaluation itself stays unsigned
    carried = carry.carried_telemetry(reply)
    assert carried is not None
    assert R.Telemetry.from_content(carried) == tel and R.read_signature(carried) == b"sig"
    assert R.EvalReply.from_content(reply).site_id == "bank-a"


def test_a_train_reply_carries_the_evaluation_and_the_telemetry_beside_its_signed_update() -> None:
    instruction = R.train_instruction({"w": np.zeros(2, np.float32)}, _cfg())
    asked = carry.request_telemetry(carry.request_evaluation(instruction, 2), 4)
    assert (carry.read_evaluation_request(asked), carry.read_telemetry_request(asked)) == (2, 4)
    assert carry.read_evaluation_request(instruction) is None  # the original is left alone
    # what the instruction itself says is unchanged
    arrays, cfg = R.read_instruction(asked)
    assert cfg == _cfg() and arrays is not None and list(arrays) == ["w"]

    update = R.TrainReply({"w": np.ones(2, np.float32)}, 10, 0.4, 1.5, "bank-a", round=3)
    reply = R.attach_signature(update.to_content(), b"update-sig")
    assert carry.carried_evaluation(reply) is None
    carry.attach_evaluation(reply, _evaluation().to_content())
    tel = R.Telemetry("bank-a", 10, "cpu", "cpu", {"u": 1.0}, model_round=2)
    carry.attach_telemetry(reply, R.attach_signature(tel.to_content(), b"tel-sig"))

    # the update parses and keeps its own signature, untouched by what rides along
    back = R.TrainReply.from_content(reply)
    assert back.digest() == update.digest() and R.read_signature(reply) == b"update-sig"
    evaluation = carry.carried_evaluation(reply)
    assert evaluation is not None
    assert R.EvalReply.from_content(evaluation) == _evaluation()
    carried_tel = carry.carried_telemetry(reply)
    assert carried_tel is not None and R.Telemetry.from_content(carried_tel) == tel
    assert R.read_signature(carried_tel) == b"tel-sig"


def test_a_carried_evaluation_is_checked_like_an_evaluate_reply() -> None:
    bad = _evaluation().to_content()
    bad.metric_records[R.METRICS]["hist_pos"] = [1, 2]
    reply = R.TrainReply({"w": np.ones(2, np.float32)}, 10, 0.4, 1.5, "bank-a").to_content()
    carry.attach_evaluation(reply, bad)
    evaluation = carry.carried_evaluation(reply)
    assert evaluation is not None
    with pytest.raises(ValueError, match="histograms"):
        R.EvalReply.from_content(evaluation)


@pytest.mark.parametrize(
    ("key", "read"),
    [
        (carry.TELEMETRY_REQUEST, carry.read_telemetry_request),
        (carry.EVALUATION_REQUEST, carry.read_evaluation_request),
    ],
)
def test_a_malformed_request_is_refused(key: str, read: object) -> None:
    bad = RecordDict({R.CONFIG: ConfigRecord({"round": 3, key: "soon"})})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        read(bad)  # type: ignore[operator]


def test_what_rides_along_adds_no_record_to_an_instruction_or_a_reply() -> None:
    # every record is an object on Flower's wire, pushed and pulled with a request of its own
    instruction = R.train_instruction({"w": np.zeros(2, np.float32)}, _cfg())
    asked = carry.request_telemetry(carry.request_evaluation(instruction, 2), 4)
    assert sorted(asked.keys()) == sorted(instruction.keys())
    assert R.CONFIG in instruction and carry.EVALUATION_REQUEST not in instruction[R.CONFIG]
    reply = R.TrainReply({"w": np.ones(2, np.float32)}, 10, 0.4, 1.5, "bank-a").to_content()
    before = set(reply.keys())
    carry.attach_evaluation(reply, _evaluation().to_content())
    tel = R.Telemetry("bank-a", 10, "cpu", "cpu", {}, model_round=2)  # no readings at all
    carry.attach_telemetry(reply, R.attach_signature(tel.to_content(), b"sig"))
    assert set(reply.keys()) == before
    carried_tel = carry.carried_telemetry(reply)
    assert carried_tel is not None and R.Telemetry.from_content(carried_tel) == tel


def test_garbage_in_the_carried_record_is_a_clear_error() -> None:
    reply = R.TrainReply({"w": np.ones(2, np.float32)}, 10, 0.4, 1.5, "bank-a").to_content()
    carry.attach_evaluation(reply, _evaluation().to_content())
    reply[R.CONFIG]["carried.evaluation.metrics.loss"] = "not a number"
    with pytest.raises(ValueError, match="malformed carried evaluation.metrics"):
        carry.carried_evaluation(reply)
    tel = R.Telemetry("bank-a", 10, "cpu", "cpu", {"u": 1.0}).to_content()
    carry.attach_telemetry(reply, tel)
    reply[R.CONFIG]["carried.telemetry.metrics.u"] = b"\x00"
    with pytest.raises(ValueError, match="telemetry.metrics"):
        carry.carried_telemetry(reply)
    assert carry.telemetry_or_none(reply) is None
