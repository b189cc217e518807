"""Tests of fedcore.metrics against scikit-learn (a test-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from fedcore.metrics import METRIC_KEYS, binary_metrics, metrics_from_histograms, score_histograms


def _data(
    seed: int, n: int = 2000, rate: float = 0.05, ties: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int64)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * y - 2)))
    if ties:
        s = np.round(s, 2)
    return y, s


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_match_sklearn(seed: int, ties: bool) -> None:
    y, s = _data(seed, ties=ties)
    m = binary_metrics(y, s, threshold=0.3)
    assert set(m) == set(METRIC_KEYS)
    pred = (s >= 0.3).astype(int)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, pred, zero_division=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
    fp = np.sum((pred == 1) & (y == 0))
    assert m["fpr"] == pytest.approx(fp / np.sum(y == 0))


def test_absent_class_gives_nan_not_crash() -> None:
    only_neg = binary_metrics(np.zeros(5), np.linspace(0, 1, 5))
    assert math.isnan(only_neg["pr_auc"]) and math.isnan(only_neg["roc_auc"])
    assert only_neg["recall"] == 0.0 and only_neg["fpr"] == pytest.approx(
        0.6
    )  # 0.5, 0.75, 1.0 flagged
    only_pos = binary_metrics(np.ones(4), [0.1, 0.6, 0.7, 0.9])
    assert (
        only_pos["pr_auc"] == 1.0
        and math.isnan(only_pos["roc_auc"])
        and math.isnan(only_pos["fpr"])
    )
    empty = binary_metrics([], [])
    assert math.isnan(empty["pr_auc"]) and empty["f1"] == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="finite"):
        binary_metrics([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics([0, 2], [0.5, 0.4])


def test_histograms_count_every_score() -> None:
    y, s = _data(1)
    hp, hn = score_histograms(y, s, bins=200)
    assert len(hp) == len(hn) == 200
    assert sum(hp) == y.sum() and sum(hn) == len(y) - y.sum()
    # edges: 0 in the first bin, 1 in the last, 0.5 starts bin 100
    assert score_histograms([1, 1, 1], [0.0, 0.5, 1.0], bins=200)[0] == [1] + [0] * 99 + [1] + [
        0
    ] * 98 + [1]


@pytest.mark.parametrize("seed", range(3))
def test_histogram_metrics_close_to_exact(seed: int) -> None:
    y, s = _data(seed, n=5000)
    exact = binary_metrics(y, s, 0.5)
    approx = metrics_from_histograms(*score_histograms(y, s, 200), threshold=0.5)
    assert approx["pr_auc"] == pytest.approx(exact["pr_auc"], abs=0.01)
    assert approx["roc_auc"] == pytest.approx(exact["roc_auc"], abs=0.005)
    for key in ("f1", "precision", "recall", "fpr"):  # 0.5 is a bin edge: exact
        assert approx[key] == pytest.approx(exact[key], abs=1e-12)


def test_histogram_metrics_exact_on_binned_scores() -> None:
    y, s = _data(7, n=3000)
    binned = (np.floor(s * 200) + 0.5) / 200
    exact = binary_metrics(y, binned, 0.5)
    approx = metrics_from_histograms(*score_histograms(y, binned, 200), threshold=0.5)
    for key in METRIC_KEYS:
        assert approx[key] == pytest.approx(exact[key], abs=1e-12)


def test_pooled_histograms_equal_pooled_scores() -> None:
    (y1, s1), (y2, s2) = _data(1, n=1000), _data(2, n=3000, rate=0.01)
    h1, h2 = score_histograms(y1, s1, 200), score_histograms(y2, s2, 200)
    pooled = metrics_from_histograms(np.add(h1[0], h2[0]), np.add(h1[1], h2[1]), threshold=0.5)
    direct = metrics_from_histograms(
        *score_histograms(np.concatenate([y1, y2]), np.concatenate([s1, s2]), 200), threshold=0.5
    )
    assert pooled == direct


def test_histogram_metrics_absent_class() -> None:
    m = metrics_from_histograms([0, 0], [3, 4], threshold=0.5)
    assert math.isnan(m["pr_auc"]) and math.isnan(m["roc_auc"])
    with pytest.raises(ValueError, match="equally long"):
        metrics_from_histograms([1, 2], [1], threshold=0.5)
