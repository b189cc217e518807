"""Device-free filter: a device busy right now is left out, with the utilization it reported."""

from __future__ import annotations

import math

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins import build_filter
from scheduling.plugins.device_free import DeviceFreeFilter


def cand(**readings: float) -> Candidate:
    return Candidate("bank-a", 1, 100, dict(readings))


CTX = SchedulingContext(1, "training", {})


@pytest.mark.parametrize(
    ("util", "limit", "passes"),
    [
        (94.9, None, True),  # below the default 95 %
        (95.0, None, False),  # at the limit: rejected
        (100.0, None, False),  # running the job's previous work or the site's own
        (60.0, 50.0, False),  # the plugin's own limit
        (49.0, 50.0, True),
    ],
)
def test_utilization_against_the_limit(util: float, limit: float | None, passes: bool) -> None:
    status = DeviceFreeFilter(limit).filter(cand(device_utilization_percent=util), CTX)
    assert status.passed is passes
    if not passes:
        (reason,) = status.reasons
        assert f"utilization {util:.0f}%" in reason and "queue" in reason


def test_scenario_threshold_and_missing_reading() -> None:
    ctx = SchedulingContext(1, "training", {"max_utilization_percent": 80.0})
    plugin = build_filter("device-free")
    assert not plugin.filter(cand(device_utilization_percent=85.0), ctx).passed
    assert plugin.filter(cand(device_utilization_percent=85.0), CTX).passed  # default 95
    assert plugin.filter(cand(), ctx).passed  # a site without the reading is not rejected


def test_non_finite_reading_is_a_reason() -> None:
    status = DeviceFreeFilter().filter(cand(device_utilization_percent=math.nan), CTX)
    assert not status.passed and "expected a finite number" in status.reasons[0]


@pytest.mark.parametrize("bad", [0.0, -5.0, 101.0, math.inf])
def test_bad_limit(bad: float) -> None:
    with pytest.raises(ValueError, match="max_utilization_percent must be a number in"):
        DeviceFreeFilter(bad)
