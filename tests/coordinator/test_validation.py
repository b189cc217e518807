"""Reply validation lists every reason to leave an update out."""

from __future__ import annotations

import numpy as np

from coordinator.validation import check_train_reply
from fedcore.records import TrainReply

REF = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def reply(**arrays: np.ndarray) -> TrainReply:
    return TrainReply(arrays=arrays, num_examples=10, loss=0.5, seconds=1.0, site_id="bank-a")


def test_good_reply_has_no_reasons() -> None:
    assert (
        check_train_reply(reply(w=np.ones((2, 3), np.float32), b=np.ones(3, np.float32)), REF) == []
    )


def test_every_problem_is_reported() -> None:
    bad = reply(w=np.ones((3, 2), np.float32), x=np.ones(1, np.float32))
    reasons = check_train_reply(bad, REF)
    assert "missing arrays: b" in reasons
    assert "unexpected arrays: x" in reasons
    assert "array 'w' has shape (3, 2); expected (2, 3)" in reasons


def test_nan_inf_dtype_and_counts() -> None:
    w = np.ones((2, 3), np.float32)
    w[0, 0] = np.nan
    w[1, 1] = np.inf
    r = TrainReply(
        arrays={"w": w, "b": np.ones(3, np.float64)},
        num_examples=0,
        loss=float("nan"),
        seconds=1.0,
        site_id="x",
    )
    reasons = check_train_reply(r, REF)
    assert "array 'w' holds 2 NaN/Inf value(s)" in reasons
    assert "array 'b' has dtype float64; expected float32" in reasons
    assert any("num_examples is 0" in x for x in reasons)
    assert "training loss is nan" in reasons
