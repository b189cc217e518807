"""Least-loaded score: 100 - load %, on an absolute scale."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins.least_loaded import LeastLoadedScore, free_percent, load_percent


@pytest.mark.parametrize(
    ("readings", "load"),
    [
        ({"device_utilization_percent": 30.0, "background_load_percent": 45.0}, 45.0),  # max
        ({"device_utilization_percent": 80.0, "background_load_percent": 10.0}, 80.0),
        ({"background_load_percent": 12.5}, 12.5),
        # CPU-only: the CPU's load; the device's wins when both are there
        ({"cpu_util_percent": 25.0}, 25.0),
        ({"cpu_util_percent": 25.0, "device_utilization_percent": 60.0}, 60.0),
        ({"device_utilization_percent": float("nan"), "cpu_util_percent": 7.0}, 7.0),
        ({}, None),
    ],
)
def test_load_percent(readings: dict[str, float], load: float | None) -> None:
    assert load_percent(readings) == load


@pytest.mark.parametrize(
    ("load", "free"),
    [(0.0, 100.0), (35.0, 65.0), (100.0, 0.0), (120.0, 0.0), (-5.0, 100.0)],
)
def test_free_percent(load: float, free: float) -> None:
    assert free_percent(load) == free


def test_scores_are_free_capacity_without_stretching() -> None:
    sites = [
        Candidate("a", 0, 1, {"device_utilization_percent": 30.0, "background_load_percent": 45.0}),
        Candidate("b", 0, 1, {"device_utilization_percent": 45.5}),
        Candidate("c", 0, 1, {"cpu_util_percent": 25.0}),
        Candidate("d", 0, 1, {}),
    ]
    plugin = LeastLoadedScore()
    raw = plugin.score(sites, SchedulingContext(round=1))
    # a: 100 - 45 = 55; b: 100 - 45.5 = 54.5; c: 100 - 25 = 75; d: unknown -> 100 - 100 = 0
    assert raw == {"a": 55.0, "b": 54.5, "c": 75.0, "d": 0.0}
    assert plugin.normalize(raw) == {"a": 55, "b": 55, "c": 75, "d": 0}  # 54.5 rounds half up
    # unknown counted as half loaded: d = 100 - 50 = 50
    assert LeastLoadedScore(unknown_load_percent=50.0).score(
        sites[3:], SchedulingContext(round=1)
    ) == {"d": 50.0}


def test_bad_argument_and_repr() -> None:
    with pytest.raises(
        ValueError, match="least-loaded: unknown_load_percent must be in \\[0, 100\\]; found 101"
    ):
        LeastLoadedScore(unknown_load_percent=101.0)
    assert repr(LeastLoadedScore()) == "LeastLoadedScore(unknown_load_percent=100.0)"
