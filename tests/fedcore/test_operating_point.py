"""Operating points: the balanced threshold, flag counts, and how sites and the coordinator use them."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.aggregation import pool_evaluations
from fedcore import records as R
from fedcore import tasks
from fedcore.baselines import evaluate_across_sites, evaluate_per_site
from fedcore.config import ConfigError, Scenario, TaskSpec
from fedcore.data.imaging_sites import SitePatches
from fedcore.metrics import (
    balanced_threshold,
    binary_metrics,
    flagged_counts,
    metrics_from_counts,
    metrics_from_histograms,
    score_histograms,
)
from fedcore.models.nodule_net import PatchSet


def _sens_spec(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    flagged = s >= t
    return (
        float(np.sum(flagged & (y == 1)) / np.sum(y == 1)),
        float(np.sum(~flagged & (y == 0)) / np.sum(y == 0)),
    )


def test_balanced_threshold_by_hand() -> None:
    # flagging >= 0.6 catches 3 of 4 positives and 1 of 4 negatives: 0.75 / 0.75, the only
    # point where the two are equal
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.15, 0.1])
    t = balanced_threshold(y, s)
    assert t == pytest.approx((0.6 + 0.3) / 2)  # midway to the next lower score
    assert _sens_spec(y, s, t) == (0.75, 0.75)


@pytest.mark.parametrize("seed", range(6))
def test_balanced_threshold_minimises_the_gap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.25).astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(2)  # with ties
    t = balanced_threshold(y, s)
    sens, spec = _sens_spec(y, s, t)
    # no threshold at any score brings sensitivity and specificity closer
    best = min(abs(np.subtract(*_sens_spec(y, s, float(u)))) for u in np.unique(s))
    assert abs(sens - spec) == pytest.approx(best)


def test_balanced_threshold_is_not_fooled_by_the_scale() -> None:
    # a model whose scores all sit below 0.5 still gets a working operating point
    y = np.array([0] * 8 + [1] * 4)
    s = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.2, 0.15, 0.25, 0.3, 0.35])
    t = balanced_threshold(y, s)
    assert t < 0.5
    assert binary_metrics(y, s, 0.5)["recall"] == 0.0
    # flagging from 0.15 catches every positive and one negative (0.2): 1.0 / 0.875
    assert binary_metrics(y, s, t)["recall"] == 1.0
    assert binary_metrics(y, s, t)["fpr"] == 0.125


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], []])
def test_balanced_threshold_without_both_classes_falls_back(labels: list[int]) -> None:
    scores = np.linspace(0.1, 0.9, len(labels))
    assert balanced_threshold(labels, scores, fallback=0.42) == 0.42


def test_flag_counts_and_metrics_from_counts() -> None:
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    assert flagged_counts(y, s, 0.35) == (2, 1)
    assert metrics_from_counts(2, 1, 2, 3) == pytest.approx(
        {k: v for k, v in binary_metrics(y, s, 0.35).items() if k not in ("pr_auc", "roc_auc")}
    )
    with pytest.raises(ValueError, match="0 <= tp <= pos"):
        metrics_from_counts(3, 0, 2, 3)
    with pytest.raises(ValueError, match="0 <= tp <= pos"):
        metrics_from_counts(0, -1, 2, 3)


def _reply(site: str, y: np.ndarray, s: np.ndarray, t: float | None) -> R.EvalReply:
    hp, hn = score_histograms(y, s, R.HIST_BINS)
    tp, fp = flagged_counts(y, s, t) if t is not None else (None, None)
    return R.EvalReply(site, len(y), int(y.sum()), 0.5, {"threshold": t or 0.5}, hp, hn, "", tp, fp)


def test_eval_reply_carries_flag_counts_and_refuses_impossible_ones() -> None:
    y = np.array([1, 0, 0, 1, 0])
    s = np.array([0.9, 0.2, 0.6, 0.4, 0.1])
    rep = _reply("hospital-a", y, s, 0.3)
    back = R.EvalReply.from_content(rep.to_content())
    assert (back.flagged_pos, back.flagged_neg) == (2, 1)
    assert back.metrics["threshold"] == pytest.approx(0.3)
    older = R.EvalReply.from_content(_reply("hospital-a", y, s, None).to_content())
    assert (older.flagged_pos, older.flagged_neg) == (None, None)

    content = rep.to_content()
    content.metric_records[R.METRICS]["flagged_pos"] = 3  # more than the 2 positives
    with pytest.raises(ValueError, match="impossible counts"):
        R.EvalReply.from_content(content)
    content = rep.to_content()
    del content.metric_records[R.METRICS]["flagged_neg"]
    with pytest.raises(ValueError, match="only one of"):
        R.EvalReply.from_content(content)


def test_coordinator_pools_each_sites_flags_without_scores() -> None:
    rng = np.random.default_rng(3)
    replies, ys, ss, tps, fps = [], [], [], 0, 0
    for i, t in enumerate([0.2, 0.45, 0.7]):
        y = (rng.random(60) < 0.3).astype(int)
        s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
        replies.append(_reply(f"site-{i}", y, s, t))
        tp, fp = flagged_counts(y, s, t)
        tps, fps = tps + tp, fps + fp
        ys.append(y)
        ss.append(s)
    y_all, s_all = np.concatenate(ys), np.concatenate(ss)
    pooled = pool_evaluations(replies, threshold=0.5)
    pos, neg = int(y_all.sum()), int(len(y_all) - y_all.sum())
    assert pooled["recall"] == pytest.approx(tps / pos)
    assert pooled["fpr"] == pytest.approx(fps / neg)
    # the curves still come from the summed histograms
    hp, hn = score_histograms(y_all, s_all, R.HIST_BINS)
    assert pooled["roc_auc"] == pytest.approx(metrics_from_histograms(hp, hn, 0.5)["roc_auc"])
    # sites that do not send counts: the histograms at the scenario's threshold
    legacy = pool_evaluations(
        [_reply(f"site-{i}", y, s, None) for i, (y, s) in enumerate(zip(ys, ss, strict=True))],
        threshold=0.5,
    )
    assert legacy["recall"] == pytest.approx(metrics_from_histograms(hp, hn, 0.5)["recall"])


class MeanScore(nn.Module):
    """Scores a patch by its mean intensity: a model whose scores are known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=(1, 2, 3, 4)) - 0.5) * 10.0


def _patches(means: list[float], labels: list[int]) -> PatchSet:
    x = torch.tensor(means, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(-1, 1, 4, 4, 4)
    return PatchSet(x.contiguous(), torch.tensor(labels), [f"s{i}:{i}" for i in range(len(means))])


def _site(train_means: list[float], test_means: list[float]) -> SitePatches:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    return SitePatches(train=_patches(train_means, labels), test=_patches(test_means, labels))


TRAIN = [0.30, 0.32, 0.34, 0.41, 0.36, 0.43, 0.45, 0.47]
TEST = [0.31, 0.33, 0.35, 0.37, 0.38, 0.40, 0.42, 0.60]


def test_balanced_operating_point_is_chosen_on_the_sites_training_split() -> None:
    task = TaskSpec.model_validate({"model": "nodule-net", "operating_point": "balanced"})
    site = _site(TRAIN, TEST)
    model = MeanScore()
    t = tasks.operating_threshold(model, site, task)
    train_scores = torch.sigmoid(MeanScore()(site.train.x)).numpy()
    assert t == pytest.approx(balanced_threshold(site.train.y.numpy(), train_scores))
    ev = tasks.evaluate(model, site, task)
    assert ev.threshold == pytest.approx(t)
    # the test split's labels played no part: flipping them leaves the threshold alone
    flipped = SitePatches(train=site.train, test=_patches(TEST, [1, 1, 1, 1, 0, 0, 0, 0]))
    assert tasks.operating_threshold(model, flipped, task) == pytest.approx(t)
    test_scores = torch.sigmoid(MeanScore()(site.test.x)).numpy()
    assert ev.metrics["recall"] == binary_metrics(site.test.y.numpy(), test_scores, t)["recall"]
    # a fixed operating point uses task.threshold
    fixed = task.model_copy(update={"operating_point": "fixed", "threshold": 0.3})
    assert tasks.operating_threshold(model, site, fixed) == 0.3
    assert tasks.evaluate(model, site, fixed).threshold == 0.3


def test_each_site_and_model_get_their_own_threshold_and_pooled_flags_add_up() -> None:
    task = TaskSpec.model_validate({"model": "nodule-net", "operating_point": "balanced"})
    sites = {"a": _site(TRAIN, TEST), "b": _site([m + 0.1 for m in TRAIN], TEST)}
    res = evaluate_per_site(MeanScore(), sites, task)
    ta, tb = (res["per_site"][s]["threshold"] for s in ("a", "b"))
    assert tb > ta  # site b's training scores are higher, so it flags higher
    tp = fp = 0
    for name, site in sites.items():
        ev = tasks.evaluate(MeanScore(), site, task)
        assert res["per_site"][name]["threshold"] == pytest.approx(ev.threshold)
        site_tp, site_fp = ev.flagged()
        tp, fp = tp + site_tp, fp + site_fp
    assert res["pooled"]["recall"] == pytest.approx(tp / 8)
    assert res["pooled"]["sensitivity"] == pytest.approx(tp / 8)
    assert res["pooled"]["specificity"] == pytest.approx(1 - fp / 8)
    assert not math.isnan(res["pooled"]["roc_auc"])


def _two_banks(extra: str) -> str:
    """A two-bank scenario's YAML with ``extra`` (one YAML line) added."""
    return (
        f"name: x\n{extra}\nsites:\n"
        "  - {id: a, data: {kind: generated, transactions: 300}}\n"
        "  - {id: b, data: {kind: generated, transactions: 300}}\n"
    )


def test_operating_point_must_be_known(write_scenario: Callable[..., Scenario]) -> None:
    with pytest.raises(ConfigError, match=r"task\.operating_point.*'fixed' or 'balanced'"):
        write_scenario(_two_banks("task: {operating_point: youden}"))


class ShiftedScore(MeanScore):
    """:class:`MeanScore` with every logit moved by ``shift``: another site's own model."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.shift


def test_each_sites_model_is_judged_at_every_site_at_that_sites_own_threshold() -> None:
    task = TaskSpec.model_validate({"model": "nodule-net", "operating_point": "balanced"})
    sites = {"a": _site(TRAIN, TEST), "b": _site([m + 0.1 for m in TRAIN], TEST)}
    models: dict[str, nn.Module] = {"a": MeanScore(), "b": ShiftedScore(-1.5)}
    res = evaluate_across_sites(models, sites, task)
    assert set(res["per_model"]) == {"a", "b"}
    for name, model in models.items():
        tp = tn = 0
        for site in sites.values():  # by hand: the site's own training split sets its threshold
            with torch.no_grad():
                train = torch.sigmoid(model(site.train.x)).numpy()
                test = torch.sigmoid(model(site.test.x)).numpy()
            t = balanced_threshold(site.train.y.numpy(), train)
            y = site.test.y.numpy()
            tp += int(np.sum((test >= t) & (y == 1)))
            tn += int(np.sum((test < t) & (y == 0)))
        got = res["per_model"][name]
        assert got["sensitivity"] == pytest.approx(tp / 8)  # 4 nodules at each of 2 sites
        assert got["specificity"] == pytest.approx(tn / 8)
        assert got["num_test"] == 16
    # a model trained elsewhere gets the same rule as the federated one: evaluate_per_site
    assert res["per_model"]["b"] == evaluate_per_site(models["b"], sites, task)["pooled"]
    mean = res["mean"]
    for key in ("sensitivity", "specificity", "roc_auc"):
        assert mean[key] == pytest.approx(np.mean([m[key] for m in res["per_model"].values()]))
    assert mean["num_test"] == 16 and mean["num_test_pos"] == 8  # the shared test data, once


def test_cross_site_needs_the_local_models(write_scenario: Callable[..., Scenario]) -> None:
    with pytest.raises(ConfigError, match=r"cross_site.*needs local_only: true"):
        write_scenario(_two_banks("baselines: {local_only: false, cross_site: true}"))
    assert write_scenario(_two_banks("baselines: {cross_site: true}")).baselines.cross_site
