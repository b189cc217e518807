"""Predictive allocator: headroom and deadline arithmetic, participant choice, reasons."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from scheduling.allocator import (
    AllocatorConfig,
    SiteForecast,
    allocate,
    deadline_from_predictions,
    predicted_finish,
    steps_within,
    usable_share,
)
from scheduling.base import Candidate


@pytest.mark.parametrize(
    ("background", "headroom", "expected"),
    [
        (0.0, 0.2, 0.8),  # 1 - 0.2 - 0
        (0.3, 0.2, 0.5),  # 1 - 0.2 - 0.3
        (0.8, 0.2, 0.0),  # 1 - 0.2 - 0.8 = 0: nothing left for fedcore
        (0.85, 0.2, 0.0),  # 1 - 0.2 - 0.85 = -0.05, clamped to 0
        (0.0, 0.0, 1.0),  # no headroom, idle device: all of it
        (0.5, 0.0, 0.5),
    ],
)
def test_usable_share(background: float, headroom: float, expected: float) -> None:
    assert usable_share(background, headroom) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("overhead", "steps", "sec_per_step", "usable", "expected"),
    [
        (10.0, 20, 2.0, 0.8, 60.0),  # 10 + 20 * 2 / 0.8 = 10 + 50
        (4.0, 56, 0.5, 0.5, 60.0),  # 4 + 56 * 0.5 / 0.5 = 4 + 56
        (0.0, 100, 0.1, 0.8, 12.5),  # 0 + 100 * 0.1 / 0.8
        (3.0, 0, 1.0, 0.5, 3.0),  # no steps: overhead only
        (3.0, 5, 1.0, 0.0, math.inf),  # no usable share: never finishes
    ],
)
def test_predicted_finish(
    overhead: float, steps: int, sec_per_step: float, usable: float, expected: float
) -> None:
    assert predicted_finish(overhead, steps, sec_per_step, usable) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("deadline", "overhead", "sec_per_step", "usable", "expected"),
    [
        (60.0, 10.0, 2.0, 0.8, 20),  # (60 - 10) * 0.8 / 2 = 20
        (61.0, 10.0, 2.0, 0.8, 20),  # (61 - 10) * 0.8 / 2 = 20.4, rounded down
        (100.0, 10.0, 0.5, 0.5, 90),  # (100 - 10) * 0.5 / 0.5 = 90
        (60.0, 30.0, 2.0, 0.4, 6),  # (60 - 30) * 0.4 / 2 = 6
        (1.0, 0.7, 0.1, 1.0, 3),  # 0.3 / 0.1 is 2.9999999999999996 in floats; still 3
        (60.0, 60.0, 1.0, 1.0, 0),  # overhead uses the whole deadline
        (60.0, 70.0, 1.0, 1.0, 0),  # overhead past the deadline
        (60.0, 0.0, 1.0, 0.0, 0),  # no usable share
    ],
)
def test_steps_within(
    deadline: float, overhead: float, sec_per_step: float, usable: float, expected: int
) -> None:
    got = steps_within(deadline, overhead, sec_per_step, usable)
    assert got == expected
    if got:  # the steps given fit, one more would not
        assert predicted_finish(overhead, got, sec_per_step, usable) <= deadline + 1e-9
        assert predicted_finish(overhead, got + 1, sec_per_step, usable) > deadline


@pytest.mark.parametrize(
    ("predicted", "quantile", "expected"),
    [
        ([10.0, 20.0, 30.0, 40.0], 0.5, 25.0),  # median of four: (20 + 30) / 2
        ([40.0, 10.0, 30.0], 0.5, 30.0),  # median of three, order does not matter
        ([10.0, 20.0, 30.0, 40.0], 1.0, 40.0),  # wait for the slowest
        ([10.0, 20.0, 30.0, 40.0], 0.0, 10.0),
        ([10.0, 20.0, 30.0, 40.0], 0.75, 32.5),  # position 0.75 * 3 = 2.25: 30 + 0.25 * 10
        ([10.0, math.inf, 30.0], 0.5, 20.0),  # the site without capacity is ignored
    ],
)
def test_deadline_from_predictions(
    predicted: list[float], quantile: float, expected: float
) -> None:
    assert deadline_from_predictions(predicted, quantile) == pytest.approx(expected)


def test_deadline_from_predictions_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\], got 1.5"):
        deadline_from_predictions([1.0], 1.5)
    with pytest.raises(ValueError, match="no finite predicted duration"):
        deadline_from_predictions([math.inf], 0.5)
    with pytest.raises(ValueError, match="no finite predicted duration"):
        deadline_from_predictions([], 0.5)


# Deadline 60 s, headroom 0.2, min_steps 5, max_steps 100:
#   a: u = 1 - 0.2 - 0.0 = 0.8, step 1.0 / 0.8 = 1.25 s, (60 - 10) / 1.25 = 40 steps, 10 + 40 * 1.25 = 60 s
#   b: u = 1 - 0.2 - 0.3 = 0.5, step 0.5 / 0.5 = 1 s,    (60 - 4) / 1 = 56 steps,     4 + 56 * 1 = 60 s
#   c: u = 0.8, step 0.1 / 0.8 = 0.125 s, 60 / 0.125 = 480, capped at 100 steps: 100 * 0.125 = 12.5 s
#   d: u = 1 - 0.2 - 0.4 = 0.4, step 2 / 0.4 = 5 s,    (60 - 30) / 5 = 6 steps,      30 + 6 * 5 = 60 s
#   e: u = 1 - 0.2 - 0.85 < 0: its own workloads need the device, no work
#   f: u = 0.6, step 4 / 0.6 = 6.67 s, (60 - 50) / 6.67 = 1.5 -> 1 step < min_steps 5;
#      5 steps would take 50 + 5 * 6.67 = 83.3 s
SITES = [
    SiteForecast("a", score=70, sec_per_step=1.0, overhead_s=10.0, background=0.0),
    SiteForecast("b", score=80, sec_per_step=0.5, overhead_s=4.0, background=0.3),
    SiteForecast("c", score=60, sec_per_step=0.1, overhead_s=0.0, background=0.0),
    SiteForecast("d", score=90, sec_per_step=2.0, overhead_s=30.0, background=0.4),
    SiteForecast("e", score=95, sec_per_step=0.1, overhead_s=0.0, background=0.85),
    SiteForecast("f", score=85, sec_per_step=4.0, overhead_s=50.0, background=0.2),
]


def _config(
    deadline_s: float = 60.0,
    base_steps: int = 20,
    headroom: float = 0.2,
    min_steps: int = 5,
    max_steps: int | None = 100,
    max_sites: int | None = None,
    min_sites: int = 1,
) -> AllocatorConfig:
    return AllocatorConfig(
        deadline_s, base_steps, headroom, min_steps, max_steps, max_sites, min_sites
    )


def test_finish_times_line_up_at_the_deadline() -> None:
    alloc = allocate(SITES, _config())
    assert alloc.steps == {"d": 6, "b": 56, "a": 40, "c": 100}  # ranked by score: 90, 80, 70, 60
    assert alloc.predicted_s == pytest.approx({"d": 60.0, "b": 60.0, "a": 60.0, "c": 12.5})
    assert {a.site_id: a.usable_share for a in alloc.chosen} == pytest.approx(
        {"d": 0.4, "b": 0.5, "a": 0.8, "c": 0.8}
    )
    assert alloc.predicted_round_s == pytest.approx(60.0)
    assert alloc.late == [] and alloc.warnings == []
    assert alloc.excluded == {
        "e": ["no usable share: 1 - headroom 0.2 - background 0.85 <= 0"],
        "f": ["cannot finish min_steps=5 by the deadline: 50 s + 5 x 4 s / 0.6 = 83.3 s > 60 s"],
    }


def test_headroom_is_configurable() -> None:
    # headroom 0: a gets u = 1.0, (60 - 10) / 1.0 = 50 steps; e gets u = 0.15, 60 * 0.15 / 0.1 = 90
    alloc = allocate(SITES, _config(headroom=0.0))
    assert alloc.steps["a"] == 50
    assert alloc.steps["e"] == 90
    # headroom 0.5: b gets u = 1 - 0.5 - 0.3 = 0.2, (60 - 4) * 0.2 / 0.5 = 22.4 -> 22
    #               d gets u = 0.1, 30 * 0.1 / 2 = 1.5 -> 1 < 5: out
    alloc = allocate(SITES, _config(headroom=0.5))
    assert alloc.steps["b"] == 22
    assert "d" in alloc.excluded and "d" not in alloc.steps


def test_max_steps_defaults_to_base_steps() -> None:
    # no max_steps: nobody does more than base_steps = 20; d still gets 6 (all that fits)
    alloc = allocate(SITES, _config(max_steps=None))
    assert alloc.steps == {"d": 6, "b": 20, "a": 20, "c": 20}
    # a: 10 + 20 * 1.25 = 35 s, finishes early
    assert alloc.predicted_s["a"] == pytest.approx(35.0)


def test_max_sites_keeps_the_best_ranked() -> None:
    alloc = allocate(SITES, _config(max_sites=2))
    assert [a.site_id for a in alloc.chosen] == ["d", "b"]
    assert alloc.excluded["a"] == ["ranked 3 of 4 by expected score 70; max_sites is 2"]
    assert alloc.excluded["c"] == ["ranked 4 of 4 by expected score 60; max_sites is 2"]


def test_fitting_sites_beat_late_ones_with_higher_scores() -> None:
    # f scores 85 > a's 70 but cannot fit min_steps: with max_sites 3 the fitting d, b, a win
    alloc = allocate(SITES, _config(max_sites=3))
    assert [a.site_id for a in alloc.chosen] == ["d", "b", "a"]
    assert "f" in alloc.excluded


def test_failure_probability_lowers_rank() -> None:
    sites = [
        SiteForecast("flaky", score=90, sec_per_step=1.0, failure_prob=0.5),  # 90 * 0.5 = 45
        SiteForecast("steady", score=60, sec_per_step=1.0, failure_prob=0.0),  # 60 * 1.0 = 60
        SiteForecast("unknown", score=50, sec_per_step=1.0),  # 50, unknown counts as 0
    ]
    alloc = allocate(sites, _config(max_sites=2))
    assert [a.site_id for a in alloc.chosen] == ["steady", "unknown"]
    assert alloc.excluded["flaky"] == ["ranked 3 of 3 by expected score 45; max_sites is 2"]


def test_too_few_fitting_sites_adds_late_ones_flagged() -> None:
    # min_sites 5, only 4 fit: f (83.3 s at min_steps) is added with 5 steps and flagged;
    # e has no usable share and is never added
    alloc = allocate(SITES, _config(min_sites=5))
    assert alloc.steps["f"] == 5
    assert alloc.predicted_s["f"] == pytest.approx(50 + 5 * 4 / 0.6)
    assert alloc.late == ["f"]
    assert alloc.predicted_round_s == pytest.approx(83.333, abs=1e-3)
    assert set(alloc.excluded) == {"e"}
    assert alloc.warnings == [
        "1 site(s) added to reach min_sites=5 are predicted to finish after the 60 s deadline"
    ]


def test_late_sites_added_least_late_first_and_shortfall_warned() -> None:
    # min_steps 5, deadline 10: slow finishes 5 * 4 / 0.8 = 25 s, slower 5 * 8 / 0.8 = 50 s
    sites = [
        SiteForecast("slower", score=99, sec_per_step=8.0),
        SiteForecast("slow", score=10, sec_per_step=4.0),
        SiteForecast("busy", score=50, sec_per_step=1.0, background=0.9),
    ]
    alloc = allocate(sites, _config(deadline_s=10.0, min_sites=1))
    assert alloc.steps == {"slow": 5}
    assert alloc.predicted_s["slow"] == pytest.approx(25.0)
    assert alloc.excluded["slower"][0].endswith("= 50.0 s > 10 s")
    alloc = allocate(sites, _config(deadline_s=10.0, min_sites=3))
    assert [a.site_id for a in alloc.chosen] == ["slow", "slower"]
    assert "only 2 site(s) can be given work; min_sites is 3" in alloc.warnings


def test_independent_of_input_order() -> None:
    a = allocate(SITES, _config(max_sites=3))
    b = allocate(list(reversed(SITES)), _config(max_sites=3))
    assert a.as_dict() == b.as_dict()


def test_as_dict_is_json_ready() -> None:
    d = json.loads(json.dumps(allocate(SITES, _config()).as_dict()))
    assert d["deadline_s"] == 60.0
    assert d["headroom"] == 0.2
    assert d["chosen"]["a"] == {
        "steps": 40,
        "predicted_s": 60.0,
        "usable_share": 0.8,
        "score": 70,
        "predicted_late": False,
    }
    assert list(d["chosen"]) == ["d", "b", "a", "c"]
    assert set(d["excluded"]) == {"e", "f"}


def test_selection_over_candidates() -> None:
    cands = [Candidate(s.site_id, 100 + i, 10) for i, s in enumerate(SITES)]
    sel = allocate(SITES, _config(max_sites=2)).selection(cands)
    assert [c.site_id for c in sel.chosen] == ["d", "b"]
    assert set(sel.rejected) == {"a", "c", "e", "f"}
    assert sel.scores == {"d": 90, "b": 80}


def test_auto_deadline_from_base_steps() -> None:
    # at base_steps 20 with headroom 0.2: a 10 + 20 * 1.25 = 35, b 4 + 20 = 24,
    # c 20 * 0.125 = 2.5, d 30 + 20 * 5 = 130; median of (2.5, 24, 35, 130) = (24 + 35) / 2 = 29.5
    usable = [usable_share(s.background, 0.2) for s in SITES[:4]]
    times = [
        predicted_finish(s.overhead_s, 20, s.sec_per_step, u)
        for s, u in zip(SITES[:4], usable, strict=True)
    ]
    deadline = deadline_from_predictions(times, 0.5)
    assert deadline == pytest.approx(29.5)
    alloc = allocate(SITES[:4], _config(deadline_s=deadline, max_steps=None))
    # b and c fit 20 steps; a gets (29.5 - 10) / 1.25 = 15.6 -> 15; d cannot fit 5 steps in time
    assert alloc.steps == {"b": 20, "a": 15, "c": 20}
    assert "d" in alloc.excluded


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deadline_s": 0.0}, "deadline_s must be finite and > 0, got 0.0"),
        ({"deadline_s": math.inf}, "deadline_s must be finite and > 0, got inf"),
        ({"base_steps": 0}, "base_steps must be >= 1, got 0"),
        ({"headroom": 1.0}, r"headroom must be in \[0, 1\), got 1.0"),
        ({"min_steps": 0}, "min_steps must be >= 1, got 0"),
        ({"min_steps": 30, "max_steps": 10}, r"max_steps \(10\) is below min_steps \(30\)"),
        ({"min_steps": 30, "max_steps": None}, r"max_steps \(20\) is below min_steps \(30\)"),
        ({"min_sites": 0}, "min_sites must be >= 1, got 0"),
        ({"min_sites": 3, "max_sites": 2}, r"max_sites \(2\) is below min_sites \(3\)"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score": 101.0}, r"site 'x': score must be in \[0, 100\], got 101.0"),
        ({"sec_per_step": 0.0}, "sec_per_step must be finite and > 0, got 0.0"),
        ({"sec_per_step": math.nan}, "sec_per_step must be finite and > 0, got nan"),
        ({"overhead_s": -1.0}, "overhead_s must be finite and >= 0, got -1.0"),
        ({"background": 1.5}, r"background must be in \[0, 1\], got 1.5"),
        ({"failure_prob": -0.1}, r"failure_prob must be in \[0, 1\] or None, got -0.1"),
    ],
)
def test_forecast_validation(kwargs: dict[str, float], message: str) -> None:
    args = {"score": 50.0, "sec_per_step": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SiteForecast("x", **args)


def test_duplicate_site_ids_rejected() -> None:
    with pytest.raises(ValueError, match="site id\\(s\\) given more than once: a"):
        allocate([SITES[0], SITES[0]], _config())
