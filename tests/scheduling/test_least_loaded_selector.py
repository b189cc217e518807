"""Least-loaded selection: ranking by free share, unknown loads last, ties by site id."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.least_loaded_selector import LeastLoadedSelector

SITES = [
    # load = max(device utilization, background load); CPU-only: cpu_util_percent
    Candidate("a", 5, 10, {"device_utilization_percent": 30.0, "background_load_percent": 45.0}),
    Candidate("b", 4, 10, {"device_utilization_percent": 10.0}),
    Candidate("c", 3, 10, {"cpu_util_percent": 25.0}),
    Candidate("d", 2, 10, {}),  # no load reported: counted as 100 %
    Candidate("e", 1, 10, {"device_utilization_percent": 10.0, "background_load_percent": 2.0}),
]


def test_picks_the_least_loaded_with_scores_and_reasons() -> None:
    result = LeastLoadedSelector(fraction=0.6).select(1, SITES)  # k = ceil(0.6 * 5) = 3
    # free share 100 - load: a 100-45 = 55, b 100-10 = 90, c 100-25 = 75, d 100-100 = 0,
    # e 100-max(10, 2) = 90; ranked b (90, smaller id than e), e (90), c (75), a (55), d (0)
    assert result.scores == {"a": 55.0, "b": 90.0, "c": 75.0, "d": 0.0, "e": 90.0}
    assert [c.site_id for c in result.chosen] == ["b", "c", "e"]  # in site-id order
    assert result.rejected == {
        "a": ["load 45.0%: ranked 4 by free share; only 3 site(s) taken"],
        "d": ["load unknown, counted as 100%: ranked 5 by free share; only 3 site(s) taken"],
    }


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.2, ["b"]),  # k = 1: the tie b = e = 90 goes to the smaller id
        (0.4, ["b", "e"]),  # k = 2
        (0.8, ["a", "b", "c", "e"]),  # k = 4: the unknown-load site is still left out
        (1.0, ["a", "b", "c", "d", "e"]),  # k = 5: taken when there is no one else
    ],
)
def test_sample_sizes_and_unknown_load_last(fraction: float, expected: list[str]) -> None:
    result = LeastLoadedSelector(fraction).select(1, SITES)
    assert [c.site_id for c in result.chosen] == expected
    assert set(result.rejected) == {c.site_id for c in SITES} - set(expected)


def test_unknown_load_ties_with_a_fully_loaded_site_by_id() -> None:
    sites = [
        Candidate("y", 0, 1, {}),  # unknown: 100 % -> free 0
        Candidate("x", 0, 1, {"device_utilization_percent": 100.0}),  # free 0
        Candidate("w", 0, 1, {"device_utilization_percent": 99.0}),  # free 1
    ]
    result = LeastLoadedSelector(fraction=0.5, min_sites=2).select(1, sites)
    assert [c.site_id for c in result.chosen] == ["w", "x"]
    assert result.rejected == {
        "y": ["load unknown, counted as 100%: ranked 3 by free share; only 2 site(s) taken"]
    }


def test_independent_of_order_node_ids_and_round() -> None:
    renumbered = [Candidate(c.site_id, 77 * i, 10, c.readings) for i, c in enumerate(SITES[::-1])]
    a = LeastLoadedSelector(0.6).select(1, SITES)
    b = LeastLoadedSelector(0.6).select(9, renumbered)
    assert a.as_dict() == b.as_dict()


def test_does_not_touch_the_callers_readings() -> None:
    readings = {"device_utilization_percent": 12.0}
    LeastLoadedSelector().select(1, [Candidate("a", 0, 1, readings)])
    assert readings == {"device_utilization_percent": 12.0}


def test_bad_arguments_duplicates_and_repr() -> None:
    with pytest.raises(ValueError, match=r"least-loaded: fraction must be in \(0, 1\]; found 1.5"):
        LeastLoadedSelector(1.5)
    with pytest.raises(ValueError, match="least-loaded: min_sites must be >= 1; found 0"):
        LeastLoadedSelector(0.5, 0)
    with pytest.raises(ValueError, match="site ids must be unique; found a more than once"):
        LeastLoadedSelector().select(1, [Candidate("a", 1, 1), Candidate("a", 2, 1)])
    assert repr(LeastLoadedSelector(0.5, 2)) == "LeastLoadedSelector(fraction=0.5, min_sites=2)"
