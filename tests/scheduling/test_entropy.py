"""Entropy weight method on hand-computed tables, its edge cases and its input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scheduling.entropy import entropy_scores, entropy_weights, normalize_columns

# Three sites x three metrics; A and C are benefit (higher better), B is cost (lower better).
TABLE = np.array(
    [
        [0.0, 10.0, 7.0],
        [5.0, 20.0, 7.0],
        [10.0, 20.0, 3.0],
    ]
)
BENEFIT = [True, False, True]

LN2, LN3 = math.log(2), math.log(3)
# Normalized (x' = (x - min) / (max - min) for benefit, (max - x) / (max - min) for cost):
#   A: [0, 5, 10]  -> [0, 0.5, 1]
#   B: [10, 20, 20] -> [1, 0, 0]
#   C: [7, 7, 3]   -> [1, 1, 0]
# p = x' / column sum:
#   A: [0, 1/3, 2/3]   e_A = (1/ln3) (1/3 ln3 + 2/3 ln(3/2)) = 1 - (2/3) ln2/ln3 = 0.57938016
#   B: [1, 0, 0]       e_B = 0 (0 ln 0 = 0, 1 ln 1 = 0)
#   C: [1/2, 1/2, 0]   e_C = (1/ln3) ln2 = 0.63092975
# d = 1 - e:  d_A = 0.42061984, d_B = 1, d_C = 0.36907025, sum = 1.78969008
# w = d / sum: w_A = 0.23502384, w_B = 0.55875596, w_C = 0.20622020
D_A, D_B, D_C = (2 / 3) * LN2 / LN3, 1.0, 1 - LN2 / LN3
W = np.array([D_A, D_B, D_C]) / (D_A + D_B + D_C)


def test_normalized_table() -> None:
    expected = [[0.0, 1.0, 1.0], [0.5, 0.0, 1.0], [1.0, 0.0, 0.0]]
    np.testing.assert_allclose(normalize_columns(TABLE, BENEFIT), expected, atol=1e-12)


def test_weights_on_hand_computed_table() -> None:
    w = entropy_weights(TABLE, BENEFIT)
    np.testing.assert_allclose(w, [0.23502384, 0.55875596, 0.20622020], atol=1e-6)
    np.testing.assert_allclose(w, W, atol=1e-12)  # the closed forms above
    assert w.sum() == pytest.approx(1.0)
    # B, the metric on which one site stands apart most sharply, weighs most
    assert w[1] > w[0] > w[2]


def test_scores_on_hand_computed_table() -> None:
    # site 0: x' = [0, 1, 1]   -> 100 (w_B + w_C)      = 100 (0.55875596 + 0.20622020) = 76.497616
    # site 1: x' = [0.5, 0, 1] -> 100 (w_A / 2 + w_C)  = 100 (0.11751192 + 0.20622020) = 32.373212
    # site 2: x' = [1, 0, 0]   -> 100 w_A              = 23.502384
    np.testing.assert_allclose(
        entropy_scores(TABLE, BENEFIT), [76.497616, 32.373212, 23.502384], atol=1e-6
    )


def test_two_sites_every_varying_metric_weighs_the_same() -> None:
    # n = 2: a varying column normalizes to [1, 0] (or [0, 1]) -> p = [1, 0] -> e = 0, d = 1;
    # the constant column has d = 0 -> w = [1/2, 1/2, 0]
    table = np.array([[1.0, 50.0, 3.0], [2.0, 10.0, 3.0]])
    np.testing.assert_allclose(entropy_weights(table, [True, False, True]), [0.5, 0.5, 0.0])
    # site 0: x' = [0, 0, 1] -> 100 (0.5*0 + 0.5*0 + 0*1) = 0; site 1: x' = [1, 1, 1] -> 100
    np.testing.assert_allclose(entropy_scores(table, [True, False, True]), [0.0, 100.0])


def test_constant_column_gets_weight_zero_and_leaves_the_others_unchanged() -> None:
    with_constant = np.column_stack([TABLE, np.full(3, 42.0)])
    w = entropy_weights(with_constant, [*BENEFIT, False])
    assert w[3] == 0.0
    np.testing.assert_allclose(w[:3], W, atol=1e-12)
    # a constant column normalizes to ones: 100 * sum w_j x'_ij gains w_3 * 1 = 0
    np.testing.assert_allclose(
        entropy_scores(with_constant, [*BENEFIT, False]), entropy_scores(TABLE, BENEFIT)
    )


@pytest.mark.parametrize(
    ("table", "expected_weights", "expected_scores"),
    [
        # every column constant: no metric tells the sites apart -> 1/m each, everyone 100
        (np.array([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]]), [0.5, 0.5], [100.0, 100.0, 100.0]),
        # one site: ln 1 = 0, k undefined -> equal weights, x' = 1 -> 100
        (np.array([[3.0, 9.0, 27.0]]), [1 / 3, 1 / 3, 1 / 3], [100.0]),
    ],
)
def test_equal_weights_edge_cases(
    table: np.ndarray, expected_weights: list[float], expected_scores: list[float]
) -> None:
    benefit = [True] * table.shape[1]
    np.testing.assert_allclose(entropy_weights(table, benefit), expected_weights)
    np.testing.assert_allclose(entropy_scores(table, benefit), expected_scores)


def test_direction_flips_scores_not_weights() -> None:
    # Cost instead of benefit on A: x'_A = [1, 0.5, 0], p = [2/3, 1/3, 0], same entropy as before.
    flipped = [False, False, True]
    np.testing.assert_allclose(entropy_weights(TABLE, flipped), W, atol=1e-12)
    # site 0: 100 (w_A + w_B + w_C) = 100; site 2: 100 * 0 = 0
    scores = entropy_scores(TABLE, flipped)
    assert scores[0] == pytest.approx(100.0)
    assert scores[2] == pytest.approx(0.0)


def test_units_do_not_matter() -> None:
    # min-max normalization removes scale and offset: MiB vs GiB, °C vs K give the same weights
    rescaled = TABLE * np.array([1024.0, 1.0, 1.0]) + np.array([0.0, 273.15, -7.0])
    np.testing.assert_allclose(entropy_weights(rescaled, BENEFIT), W, atol=1e-12)


def test_random_tables_give_weights_on_the_simplex_and_scores_in_range() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        n, m = rng.integers(2, 9), rng.integers(1, 6)
        table = rng.gamma(2.0, 10.0, size=(n, m))
        benefit = list(rng.random(m) < 0.5)
        w = entropy_weights(table, benefit)
        assert w.shape == (m,)
        assert np.all(w >= 0.0)
        assert w.sum() == pytest.approx(1.0)
        s = entropy_scores(table, benefit)
        assert np.all((s >= 0.0) & (s <= 100.0))


@pytest.mark.parametrize(
    ("table", "benefit", "match"),
    [
        (np.array([1.0, 2.0]), [True], "expected a 2-D table"),
        (np.zeros((0, 2)), [True, True], "at least one site and one metric"),
        (np.zeros((2, 0)), [], "at least one site and one metric"),
        (np.ones((2, 2)), [True], "one benefit flag per metric column \\(2\\); found 1"),
        (
            np.array([[1.0, np.nan], [2.0, 3.0]]),
            [True, True],
            "found nan at site row 0, metric column 1",
        ),
    ],
)
def test_bad_tables_are_refused(table: np.ndarray, benefit: list[bool], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        entropy_weights(table, benefit)
