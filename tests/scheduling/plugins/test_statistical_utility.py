"""Statistical-utility score (Oort): examples x last training loss, unexplored sites first."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins import build_score
from scheduling.plugins.statistical_utility import (
    LAST_LOSS,
    StatisticalUtilityScore,
    statistical_utility,
)

CTX = SchedulingContext(3, "training", {})


@pytest.mark.parametrize(
    ("n", "loss", "unknown", "expected"),
    [
        (400, 0.5, 0.0, 200.0),  # 400 x 0.5
        (100, 2.0, 0.0, 200.0),  # 100 x 2.0: less data, worse fit, same utility
        (400, None, 123.0, 123.0),  # never trained: the stand-in
        (400, float("nan"), 7.0, 7.0),  # no usable loss: the stand-in
        (-3, 1.0, 0.0, 0.0),  # counts below 0 clip to 0
    ],
)
def test_formula(n: int, loss: float | None, unknown: float, expected: float) -> None:
    assert statistical_utility(n, loss, unknown) == expected


def test_scores_and_normalization() -> None:
    cands = [
        Candidate("a", 1, 1000, {LAST_LOSS: 0.1}),  # 100
        Candidate("b", 2, 200, {LAST_LOSS: 1.0}),  # 200
        Candidate("c", 3, 500, {LAST_LOSS: 0.2}),  # 100
        Candidate("d", 4, 50, {}),  # never trained: the best seen, 200
    ]
    plugin = build_score("statistical-utility")
    raw = plugin.score(cands, CTX)
    assert raw == {"a": pytest.approx(100.0), "b": 200.0, "c": pytest.approx(100.0), "d": 200.0}
    assert plugin.normalize(raw) == {"a": 0, "b": 100, "c": 0, "d": 100}


def test_exponent_dampens() -> None:
    cands = [Candidate("a", 1, 400, {LAST_LOSS: 1.0}), Candidate("b", 2, 100, {LAST_LOSS: 1.0})]
    raw = StatisticalUtilityScore(exponent=0.5).score(cands, CTX)
    assert raw == {"a": pytest.approx(20.0), "b": pytest.approx(10.0)}  # sqrt(400), sqrt(100)


def test_nobody_trained_yet_all_equal() -> None:
    cands = [Candidate("a", 1, 10, {}), Candidate("b", 2, 99, {})]
    plugin = StatisticalUtilityScore()
    assert plugin.normalize(plugin.score(cands, CTX)) == {"a": 100, "b": 100}


def test_bad_exponent() -> None:
    with pytest.raises(ValueError, match="exponent must be a finite number > 0"):
        StatisticalUtilityScore(exponent=0.0)
