"""PR curves from score histograms, checked against points counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.metrics import binary_metrics, metrics_from_histograms, score_histograms
from fedcore.report.curves import curve_points, pr_points, recorded_curves, step_area


def _flat(points: list[tuple[float, float]]) -> list[float]:
    return [v for p in points for v in p]


def test_pr_points_from_four_bins_by_hand() -> None:
    # bins [0,.25) [.25,.5) [.5,.75) [.75,1]: positives 0 1 1 2, negatives 3 1 0 1
    hist_pos, hist_neg = [0, 1, 1, 2], [3, 1, 0, 1]
    # threshold .75: tp 2 fp 1 -> recall 2/4, precision 2/3
    # threshold .50: tp 3 fp 1 -> recall 3/4, precision 3/4
    # threshold .25: tp 4 fp 2 -> recall 4/4, precision 4/6
    # threshold 0  : tp 4 fp 5 -> recall 4/4, precision 4/9
    expected = [(0.5, 2 / 3), (0.75, 0.75), (1.0, 4 / 6), (1.0, 4 / 9)]
    assert _flat(pr_points(hist_pos, hist_neg)) == pytest.approx(_flat(expected))
    # average precision: .5 * 2/3 + .25 * 3/4 + .25 * 4/6 + 0 * 4/9 = 0.6875
    assert step_area(pr_points(hist_pos, hist_neg)) == pytest.approx(0.6875)


def test_empty_bins_add_no_point_and_no_positives_no_curve() -> None:
    # bin 1: tp 2 fp 0 -> (1, 1); bin 0: tp 2 fp 1 -> (1, 2/3); bins 2 and 3 are empty
    assert _flat(pr_points([0, 2, 0, 0], [1, 0, 0, 0])) == pytest.approx([1.0, 1.0, 1.0, 2 / 3])
    assert pr_points([0, 0], [3, 1]) == []
    assert curve_points({"hist_pos": [0, 0], "hist_neg": [3, 1]}) is None


def test_step_area_is_the_pooled_pr_auc_fedcore_computes_from_histograms() -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(500) < 0.1).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.3 * labels, 0.15), 0, 1)
    hp, hn = score_histograms(labels, scores, 200)
    area = step_area(pr_points(hp, hn))
    assert area == pytest.approx(metrics_from_histograms(hp, hn, 0.5)["pr_auc"], abs=1e-12)
    # scores quantised to the bins: the histogram curve is the exact curve
    quantised = (np.floor(scores * 200) + 0.5) / 200
    hq = score_histograms(labels, quantised, 200)
    assert step_area(pr_points(*hq)) == pytest.approx(
        binary_metrics(labels, quantised)["pr_auc"], abs=1e-12
    )


def test_bad_histograms_are_refused_or_ignored() -> None:
    with pytest.raises(ValueError, match="equally long"):
        pr_points([1, 2], [1])
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        pr_points([1, -2], [1, 1])
    assert curve_points({"hist_pos": [1, "x"], "hist_neg": [1, 1]}) is None
    assert curve_points("not a curve") is None


def test_recorded_curves_prefers_the_summary_and_keeps_legend_order() -> None:
    curve = {"hist_pos": [0, 1], "hist_neg": [1, 0]}
    other = {"hist_pos": [1, 1], "hist_neg": [1, 0]}
    summary = {
        "final": {"pr_auc": 1.0, "curve": curve},
        "baselines": {"centralized": {"curve": curve}, "non_graph": {"curve": [1, 2]}},
    }
    found = recorded_curves(summary, {"federated": other, "rescored extra": other})
    assert list(found) == ["federated", "centralized", "rescored extra"]
    assert found["federated"] is curve  # the summary's wins over curves.json
