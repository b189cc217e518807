"""Robust aggregation arithmetic: median, trimmed mean, Multi-Krum (with a memory), clipping, norm bound, capped examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.robust import (
    NormBound,
    capped_examples,
    clip_to_norm,
    coordinate_median,
    multi_krum,
    remembered_scores,
    trimmed_mean,
    update_norm,
    weighted_mean_of,
)


def one(values: list[float]) -> list[dict[str, np.ndarray]]:
    """One single-value update per number."""
    return [{"w": np.array([v])} for v in values]


@pytest.mark.parametrize(
    ("update", "norm"),
    [
        ({"a": np.array([3.0, 4.0])}, 5.0),  # sqrt(9 + 16)
        ({"a": np.array([1.0, 2.0]), "b": np.array([[2.0]])}, 3.0),  # sqrt(1 + 4 + 4), over arrays
        ({"a": np.array([3, 4], np.float32)}, 5.0),  # float32 in, float64 sum
        ({}, 0.0),
    ],
)
def test_update_norm(update: dict[str, np.ndarray], norm: float) -> None:
    assert update_norm(update) == pytest.approx(norm)


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        (10.0, [3.0, 4.0]),  # norm 5 <= 10: unchanged
        (5.0, [3.0, 4.0]),  # exactly at the bound: unchanged
        (2.5, [1.5, 2.0]),  # scale 2.5 / 5 = 0.5
        (1.0, [0.6, 0.8]),  # scale 1 / 5: the direction (0.6, 0.8) is kept
    ],
)
def test_clip_to_norm(bound: float, expected: list[float]) -> None:
    src = {"a": np.array([3.0, 4.0], np.float32)}
    out, norm = clip_to_norm(src, bound)
    assert norm == pytest.approx(5.0)
    assert out["a"].dtype == np.float64 and out["a"] == pytest.approx(expected)
    assert src["a"].tolist() == [3.0, 4.0]  # the input is not modified


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_clip_to_norm_refuses_a_bound_that_is_not_one(bound: float) -> None:
    with pytest.raises(ValueError, match="expected a positive, finite number"):
        clip_to_norm({"a": np.ones(2)}, bound)


@pytest.mark.parametrize(
    ("values", "median"),
    [
        ([1.0, 2.0, 100.0], 2.0),  # the middle one; 100 cannot pull it
        ([1.0, 2.0, 3.0, 100.0], 2.5),  # even count: (2 + 3) / 2
        ([5.0], 5.0),
        ([-1e6, 0.0, 1.0, 2.0, 1e6], 1.0),  # one huge each way: still the middle
    ],
)
def test_coordinate_median(values: list[float], median: float) -> None:
    assert coordinate_median(one(values))["w"].tolist() == [median]


def test_median_is_per_coordinate() -> None:
    updates = [
        {"w": np.array([1.0, 9.0]), "b": np.array([[0.0]])},
        {"w": np.array([2.0, 7.0]), "b": np.array([[5.0]])},
        {"w": np.array([3.0, 8.0]), "b": np.array([[1.0]])},
    ]
    out = coordinate_median(updates)
    # w: median(1, 2, 3) = 2, median(9, 7, 8) = 8; b: median(0, 5, 1) = 1
    assert out["w"].tolist() == [2.0, 8.0] and out["b"].tolist() == [[1.0]]


@pytest.mark.parametrize(
    ("values", "fraction", "mean"),
    [
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.2, 3.0),  # cut int(0.2 * 5) = 1 each end: (2 + 3 + 4) / 3
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.0, 22.0),  # nothing cut: 110 / 5
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.1, 22.0),  # int(0.1 * 5) = 0: nothing cut
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.4, 3.0),  # cut 2 each end: only 3 stays
        ([-50.0, 1.0, 2.0, 3.0, 50.0, 9.0], 0.2, 3.75),  # cut 1 each end: (1 + 2 + 3 + 9) / 4
    ],
)
def test_trimmed_mean(values: list[float], fraction: float, mean: float) -> None:
    assert trimmed_mean(one(values), fraction)["w"].tolist() == pytest.approx([mean])


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7])
def test_trimmed_mean_refuses_a_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"expected 0 <= fraction < 0.5"):
        trimmed_mean(one([1.0, 2.0]), fraction)


def test_multi_krum_scores_and_keeps() -> None:
    # n = 5, f = 1: each score sums the n - f - 2 = 2 smallest squared distances to others
    #   0:   to 1 -> 1, to 2 -> 4, to 3 -> 9        -> 1 + 4 = 5
    #   1:   to 0 -> 1, to 2 -> 1                   -> 2
    #   2:   to 1 -> 1, to 3 -> 1                   -> 2
    #   3:   to 2 -> 1, to 1 -> 4                   -> 5
    #   100: to 3 -> 97^2 = 9409, to 2 -> 98^2 = 9604 -> 19013
    # keep n - f = 4, lowest first, ties in input order: 1, 2, 0, 3
    sel = multi_krum(one([0.0, 1.0, 2.0, 3.0, 100.0]), byzantine=1)
    assert sel.scores == pytest.approx([5.0, 2.0, 2.0, 5.0, 19013.0])
    assert sel.kept == [1, 2, 0, 3]
    assert multi_krum(one([0.0, 1.0, 2.0, 3.0, 100.0]), byzantine=1, keep=1).kept == [1]  # Krum


@pytest.mark.parametrize(("n", "f"), [(4, 1), (2, 0), (6, 2), (1, 0)])
def test_multi_krum_needs_more_than_2f_plus_2(n: int, f: int) -> None:
    with pytest.raises(
        ValueError, match=rf"needs more than 2f \+ 2 = {2 * f + 2} updates; got {n}"
    ):
        multi_krum(one([float(i) for i in range(n)]), byzantine=f)


def test_multi_krum_distances_stay_exact_beside_a_huge_update() -> None:
    """||x||^2 + ||y||^2 - 2 x.y cancels to noise next to a 1e8 update; direct differences do not."""
    honest = [1.0, 1.0 + 1e-6, 1.0 + 2e-6, 1.0 + 3e-6]
    sel = multi_krum(one([*honest, 1e8]), byzantine=1)
    # closest 2 distances: 0 -> (1e-12 + 4e-12), 1 -> (1e-12 + 1e-12), 2 -> same, 3 -> 1e-12 + 4e-12
    assert sel.scores[:4] == pytest.approx([5e-12, 2e-12, 2e-12, 5e-12], rel=1e-3)
    assert 4 not in sel.kept


@pytest.mark.parametrize(
    ("history", "current", "expected"),
    [
        # no history: this round's scores over their median 2 -> 0.5, 1, 2
        ([], {"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 0.5, "b": 1.0, "c": 2.0}),
        # c was the outlier (x3, median 2) in round 1, looks central now (median 4):
        # a (0.5 + 1.5) / 2 = 1, b (1 + 0.5) / 2 = 0.75, c (3 + 1) / 2 = 2
        (
            [{"a": 1.0, "b": 2.0, "c": 6.0}],
            {"a": 6.0, "b": 2.0, "c": 4.0},
            {"a": 1.0, "b": 0.75, "c": 2.0},
        ),
        # rounds count alike whatever their scale: round 1 x 1000 gives the same relative scores
        (
            [{"a": 1000.0, "b": 2000.0, "c": 6000.0}],
            {"a": 6.0, "b": 2.0, "c": 4.0},
            {"a": 1.0, "b": 0.75, "c": 2.0},
        ),
        # d missed round 1 (its mean is over this round only: 8 / 5 = 1.6); e, gone, is not named.
        # Round 1 median(2, 4, 8) = 4: a 0.5, b 1, e 2; this round median(2, 5, 8) = 5
        (
            [{"a": 2.0, "b": 4.0, "e": 8.0}],
            {"a": 2.0, "b": 5.0, "d": 8.0},
            {"a": (0.5 + 0.4) / 2, "b": (1.0 + 1.0) / 2, "d": 1.6},
        ),
        # a round whose scores are all 0 (identical updates) counts everyone as 1
        (
            [{"a": 0.0, "b": 0.0, "c": 0.0}],
            {"a": 1.0, "b": 1.0, "c": 4.0},
            {"a": 1, "b": 1, "c": 2.5},
        ),
    ],
)
def test_remembered_scores(
    history: list[dict[str, float]], current: dict[str, float], expected: dict[str, float]
) -> None:
    assert remembered_scores(history, current) == pytest.approx(expected)


def test_weighted_mean_of() -> None:
    # (1 * 0 + 3 * 10) / (1 + 3) = 7.5
    assert weighted_mean_of(one([0.0, 10.0]), [1.0, 3.0])["w"].tolist() == [7.5]
    with pytest.raises(ValueError, match=r"weights must be positive and finite; found \[0.0\]"):
        weighted_mean_of(one([0.0, 10.0]), [1.0, 0.0])


@pytest.mark.parametrize(
    ("examples", "cap", "expected"),
    [
        # median(1000, 1100, 1200, 1500, 1e12) = 1200 -> at most 4 x 1200 = 4800
        ([1000, 1200, 1500, 1100, 10**12], 4.0, [1000, 1200, 1500, 1100, 4800]),
        # bank-fraud's sizes: median 5000 -> 20000; 14000 stays
        ([14000, 6000, 5000, 4000, 5000], 4.0, [14000, 6000, 5000, 4000, 5000]),
        # cap 2: 2 x 5000 = 10000 cuts the large bank
        ([14000, 6000, 5000, 4000, 5000], 2.0, [10000, 6000, 5000, 4000, 5000]),
        # no data keeps 0; the median is over sites with data: median(100, 50) = 75 -> 300
        ([100, 0, 50], 4.0, [100, 0, 50]),
        ([0, 0], 4.0, [0, 0]),
    ],
)
def test_capped_examples(examples: list[int], cap: float, expected: list[float]) -> None:
    assert capped_examples(examples, cap) == pytest.approx(expected)


def test_capped_examples_refuses_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="expected a finite number >= 1"):
        capped_examples([1, 2], 0.5)


def test_norm_bound_learns_from_accepted_norms_over_a_window() -> None:
    nb = NormBound(factor=3.0, window=2)
    # no history: the round's own norms, median(1, 2, 3, 100) = 2.5 -> 7.5
    assert nb.bound([1.0, 2.0, 3.0, 100.0]) == pytest.approx(7.5)
    nb.observe(1, [1.0, 2.0, 3.0, 7.5])  # accepted norms after clipping
    # history: median(1, 2, 3, 7.5) = 2.5 -> 7.5, whatever this round sends
    assert nb.bound([1e6, 1e6]) == pytest.approx(7.5)
    nb.observe(2, [2.0, 2.0])
    nb.observe(3, [4.0, 4.0])
    # window 2: rounds 2 and 3 only, median(2, 2, 4, 4) = 3 -> 9
    assert nb.bound([]) == pytest.approx(9.0)
    nb.observe(3, [10.0, 10.0])  # a redone round replaces its norms: median(2, 2, 10, 10) = 6
    assert nb.bound([]) == pytest.approx(18.0)
    resumed = NormBound(3.0, 2)
    resumed.load_state_dict(nb.state_dict())
    assert resumed.bound([]) == pytest.approx(18.0) and resumed.state_dict() == nb.state_dict()
    assert NormBound(3.0, 2).bound([0.0]) == math.inf  # nothing to learn from


@pytest.mark.parametrize(("factor", "window"), [(1.0, 5), (0.5, 5), (3.0, 0)])
def test_norm_bound_refuses_bad_settings(factor: float, window: int) -> None:
    with pytest.raises(ValueError, match="norm bound"):
        NormBound(factor, window)


def test_one_byzantine_update_of_norm_1e6_among_four_honest_ones() -> None:
    """Median, trimmed mean, Multi-Krum and clipping all stay near the honest mean; FedAvg does not."""
    rng = np.random.default_rng(11)
    direction = rng.normal(size=200)
    honest = [{"w": direction * 0.01 + rng.normal(scale=0.002, size=200)} for _ in range(4)]
    evil = {"w": -direction / np.linalg.norm(direction) * 1e6}
    updates = [honest[0], honest[1], evil, honest[2], honest[3]]
    target = np.mean([u["w"] for u in honest], axis=0)
    spread = max(np.linalg.norm(u["w"] - target) for u in honest)

    def off(result: dict[str, np.ndarray]) -> float:
        return float(np.linalg.norm(result["w"] - target))

    assert off(weighted_mean_of(updates, [1.0] * 5)) > 1e5  # FedAvg: dragged 2e5 away
    assert off(coordinate_median(updates)) < spread
    assert off(trimmed_mean(updates, 0.2)) < spread
    sel = multi_krum(updates, byzantine=1)
    assert 2 not in sel.kept
    assert off(weighted_mean_of([updates[i] for i in sel.kept], [1.0] * 4)) < 1e-12
    nb = NormBound(3.0, 5)
    bound = nb.bound([update_norm(u) for u in updates])
    clipped = [clip_to_norm(u, bound)[0] for u in updates]
    # the evil update is cut to 3 x the median norm: it moves the mean by at most 3/5 of it
    assert off(weighted_mean_of(clipped, [1.0] * 5)) < bound
    assert bound < 3.5 * float(np.linalg.norm(target))


# --------------------------------------------------------------------------- properties

_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda d: st.lists(st.lists(_values, min_size=d, max_size=d), min_size=1, max_size=7)
    ),
    st.floats(min_value=0.0, max_value=0.49),
)
def test_median_and_trimmed_mean_stay_within_each_coordinates_range(
    rows: list[list[float]], fraction: float
) -> None:
    updates = [{"w": np.array(r)} for r in rows]
    lo, hi = np.min(rows, axis=0), np.max(rows, axis=0)
    for out in (coordinate_median(updates)["w"], trimmed_mean(updates, fraction)["w"]):
        assert np.all(out >= lo - 1e-9 * (1 + np.abs(lo))) and np.all(
            out <= hi + 1e-9 * (1 + np.abs(hi))
        )


@settings(max_examples=60, deadline=None)
@given(st.lists(_values, min_size=1, max_size=8), st.floats(min_value=1e-3, max_value=1e6))
def test_clipping_never_exceeds_the_bound_and_keeps_short_updates(
    values: list[float], bound: float
) -> None:
    update = {"w": np.array(values)}
    out, norm = clip_to_norm(update, bound)
    assert update_norm(out) <= bound * (1 + 1e-12)
    if norm <= bound:
        assert np.array_equal(out["w"], update["w"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=10),
    st.floats(min_value=1.0, max_value=10.0),
)
def test_capped_examples_never_exceed_the_cap_nor_the_report(
    examples: list[int], cap: float
) -> None:
    out = capped_examples(examples, cap)
    positive = [x for x in examples if x > 0]
    for got, reported in zip(out, examples, strict=True):
        assert got <= reported
        if positive:
            assert got <= cap * float(np.median(positive)) * (1 + 1e-12)
