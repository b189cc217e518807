"""Throughput score: relative_throughput x free share, min-max normalized."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins.throughput import ThroughputScore, available_throughput

CTX = SchedulingContext(round=1)


@pytest.mark.parametrize(
    ("speed", "background", "expected"),
    [
        (2.0, 25.0, 1.5),  # 2.0 * (1 - 0.25)
        (1.0, 0.0, 1.0),
        (0.5, 100.0, 0.0),  # all taken by the site's own work
        (1.0, 150.0, 0.0),  # load clipped to 100
        (1.0, -10.0, 1.0),  # load clipped to 0
        (0.8, 50.0, 0.4),
    ],
)
def test_available_throughput(speed: float, background: float, expected: float) -> None:
    assert available_throughput(speed, background) == pytest.approx(expected)


def test_scores_and_min_max_normalization() -> None:
    sites = [
        Candidate("a", 0, 1, {"relative_throughput": 2.0, "background_load_percent": 25.0}),
        Candidate("b", 0, 1, {"relative_throughput": 1.0}),  # no background -> 0
        Candidate("c", 0, 1, {"relative_throughput": 0.5, "background_load_percent": 0.0}),
        Candidate("d", 0, 1, {"background_load_percent": 10.0}),  # speed unknown -> 0
    ]
    plugin = ThroughputScore()
    raw = plugin.score(sites, CTX)
    assert raw == pytest.approx({"a": 1.5, "b": 1.0, "c": 0.5, "d": 0.0})
    # min-max over [0, 1.5]: a = 100, b = 1.0/1.5 = 66.67 -> 67, c = 0.5/1.5 = 33.33 -> 33, d = 0
    assert plugin.normalize(raw) == {"a": 100, "b": 67, "c": 33, "d": 0}
    # unknown speed assumed 0.5: d = 0.5 * (1 - 0.1) = 0.45
    assert ThroughputScore(unknown_throughput=0.5).score(sites[3:], CTX) == pytest.approx(
        {"d": 0.45}
    )


def test_bad_argument_and_repr() -> None:
    with pytest.raises(
        ValueError, match="throughput: unknown_throughput must be a finite number >= 0; found -1.0"
    ):
        ThroughputScore(unknown_throughput=-1.0)
    assert repr(ThroughputScore()) == "ThroughputScore(unknown_throughput=0.0)"
