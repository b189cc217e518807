"""Reply validation lists every reason to leave an update out."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_arrays_in_another_order_are_accepted() -> None:
    reply = TrainReply(
        {"b": np.ones(3, np.float32), "w": np.ones((2, 3), np.float32)}, 5, 0.1, 1.0, "x"
    )
    assert check_train_reply(reply, REF) == []


def test_an_update_beyond_the_sanity_ceiling_is_refused() -> None:
    from coordinator.validation import UPDATE_CEILING, update_ratio

    ref = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    # ||global|| = sqrt(6); a step of s in every one of the 9 values has norm 3s
    step = UPDATE_CEILING * (np.sqrt(6) + 1) / 3
    within = {k: v + np.float32(0.99 * step) for k, v in ref.items()}
    beyond = {k: v + np.float32(1.01 * step) for k, v in ref.items()}
    assert update_ratio(within, ref) == pytest.approx(0.99 * UPDATE_CEILING, rel=1e-5)
    assert check_train_reply(TrainReply(within, 5, 0.1, 1.0, "x"), ref) == []
    reasons = check_train_reply(TrainReply(beyond, 5, 0.1, 1.0, "x"), ref)
    assert len(reasons) == 1 and reasons[0].startswith("update too large")
    # finite float32 values near their largest: the norm overflows to inf, still refused
    huge = {"w": np.full((2, 3), 3.4e38, np.float32), "b": np.zeros(3, np.float32)}
    assert update_ratio(huge, ref) > UPDATE_CEILING
    assert check_train_reply(TrainReply(huge, 5, 0.1, 1.0, "x"), ref)[0].startswith(
        "update too large"
    )
