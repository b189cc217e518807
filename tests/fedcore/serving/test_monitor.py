"""Tests of the served model's drift monitor: PSI, the metric-drop alarm, minimum counts, memory, status file, and drift on generated streams."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedcore.config import GeneratedData
from fedcore.data.generator import generate_stream, generate_transactions
from fedcore.data.transactions import Transactions
from fedcore.export.manifest import ScoreReference
from fedcore.metrics import binary_metrics
from fedcore.serving.monitor import (
    PSI_EPSILON,
    RETRAIN,
    Monitor,
    MonitorSpec,
    MonitorStatus,
    Reference,
    bin_shares,
    psi,
    quantile_edges,
    read_status,
    write_status,
)

HALVES = (0.0, 0.5, 1.0)


def _reference(**kw: object) -> Reference:
    base: dict[str, object] = {"edges": HALVES, "shares": (0.5, 0.5), "scores": 1000}
    base.update(kw)
    return Reference(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- PSI


def test_psi_known_values() -> None:
    # a = (1/4, 3/4) against e = (1/2, 1/2):
    # (1/4 - 1/2) ln(1/2) + (3/4 - 1/2) ln(3/2) = 1/4 (ln 2 + ln 3/2) = 1/4 ln 3
    assert psi((0.5, 0.5), HALVES, [0.1, 0.6, 0.7, 0.8]) == pytest.approx(0.25 * math.log(3))
    # the same shares: 0
    assert psi((0.5, 0.5), HALVES, [0.2, 0.9]) == 0.0
    # three bins: a = (0.2, 0.3, 0.5), e = (0.3, 0.3, 0.4)
    # -0.1 ln(2/3) + 0 + 0.1 ln(5/4) = 0.1 (ln 1.5 + ln 1.25) = 0.1 ln 1.875
    edges = (0.0, 0.2, 0.6, 1.0)
    scores = [0.1] * 2 + [0.3] * 3 + [0.9] * 5
    assert psi((0.3, 0.3, 0.4), edges, scores) == pytest.approx(0.1 * math.log(1.875))


def test_psi_empty_bin_counts_as_epsilon() -> None:
    # every score in the upper bin: a = (0 -> 1e-4, 1)
    # (1e-4 - 0.5) ln(1e-4 / 0.5) + (1 - 0.5) ln(1 / 0.5)
    expected = (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5) + 0.5 * math.log(2.0)
    assert psi((0.5, 0.5), HALVES, [0.9, 0.95]) == pytest.approx(expected)
    assert math.isfinite(psi((1.0, 0.0), HALVES, [0.9]))


def test_bins_edges_and_out_of_range_scores() -> None:
    # a score on an edge belongs to the bin above; below 0 and above 1 go to the end bins
    assert bin_shares(HALVES, [-0.5, 0.0, 0.5, 1.0, 2.0]).tolist() == [0.4, 0.6]
    assert bin_shares(HALVES, []).tolist() == [0.0, 0.0]
    # deciles of 0.000 .. 0.999: ten bins of a tenth each
    uniform = np.arange(1000) / 1000
    edges = quantile_edges(uniform)
    assert len(edges) == 11 and edges[0] == 0.0 and edges[-1] == 1.0
    assert bin_shares(edges, uniform) == pytest.approx([0.1] * 10)
    # ties collapse bins: one value only -> an empty bin below it and one holding it
    assert quantile_edges([0.3] * 50) == (0.0, 0.3, 1.0)
    assert bin_shares((0.0, 0.3, 1.0), [0.3] * 50).tolist() == [0.0, 1.0]
    # scores of 1 only: no inner edge, one bin, and the PSI of anything is 0
    assert quantile_edges([1.0] * 10) == (0.0, 1.0)
    assert psi((1.0,), (0.0, 1.0), [0.0, 0.99]) == 0.0


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda: psi((0.5, 0.5), (0.0, 1.0), [0.1]), "shares"),
        (lambda: psi((0.5, 0.5), HALVES, []), "finite scores"),
        (lambda: psi((0.5, 0.5), HALVES, [float("nan")]), "finite scores"),
        (lambda: quantile_edges([0.1], bins=0), "bins"),
        (lambda: quantile_edges([float("inf")]), "finite scores"),
    ],
)
def test_bad_inputs_say_what_was_expected(call: object, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        call()  # type: ignore[operator]


# --------------------------------------------------------------------------- alarms


def test_psi_alarm_only_past_min_scores() -> None:
    spec = MonitorSpec(score_window=1000, min_scores=200)
    mon = Monitor(spec, _reference())
    mon.observe_scores(np.full(199, 0.9))  # everything in the upper bin: PSI 4.6
    status = mon.status()
    assert status.psi is not None and status.psi > 4.0
    assert status.alarms == () and not status.retrain
    mon.observe_scores([0.9])
    (alarm,) = mon.status().alarms
    assert alarm.kind == alarm.name == "psi"
    assert alarm.bound == 0.2 and alarm.value == pytest.approx(status.psi)
    assert "PSI 4.6" in alarm.message and "200 scores" in alarm.message
    assert alarm.suggestion == RETRAIN and "federated run" in alarm.suggestion


def test_no_alarm_for_the_reference_distribution() -> None:
    mon = Monitor(MonitorSpec(score_window=1000, min_scores=100), _reference())
    mon.observe_scores(np.linspace(0.0, 0.999, 1000))  # half below 0.5, half above
    status = mon.status()
    assert status.psi == pytest.approx(0.0, abs=1e-9) and status.alarms == ()
    assert status.flagged_rate == pytest.approx(0.5)  # threshold 0.5


def _labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank fraud above most legitimate rows, but not all: PR-AUC about 0.5."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.int64)
    scores = np.clip(0.3 + 0.25 * labels + rng.normal(0, 0.15, n), 0.0, 1.0)
    return scores, labels


@pytest.mark.parametrize(("drop", "alarm"), [(0.06, True), (0.04, False)])
def test_metric_alarm_on_a_relative_drop(drop: float, alarm: bool) -> None:
    scores, labels = _labelled(2000, 1)
    measured = binary_metrics(labels, scores, 0.5)["pr_auc"]
    # the reference such that the measured PR-AUC is `drop` (relative) below it
    reference = measured / (1.0 - drop)
    spec = MonitorSpec(label_window=2000, min_labels=500, min_positives=20, max_drop=0.05)
    mon = Monitor(spec, _reference(metric_value=reference))
    mon.observe_labels(scores, labels)
    status = mon.status()
    assert status.metric == "pr_auc" and status.metric_value == pytest.approx(measured)
    assert status.reference_metric == pytest.approx(reference)
    assert status.n_labelled == 2000 and status.n_positive == int(labels.sum())
    if alarm:
        (a,) = status.alarms
        assert a.kind == "metric" and a.value == pytest.approx(measured)
        assert a.bound == pytest.approx(reference * 0.95)  # relative: 5 % below the reference
        assert "pr_auc fell to" in a.message and "6.0%" in a.message
    else:
        assert status.alarms == ()


def test_no_metric_alarm_before_enough_labels_and_positives() -> None:
    scores, labels = _labelled(400, 2)
    ref = _reference(metric_value=0.99)  # far above what these scores reach
    few_labels = Monitor(MonitorSpec(min_labels=500, min_positives=10), ref)
    few_labels.observe_labels(scores, labels)
    status = few_labels.status()
    assert status.metric_value is not None and status.metric_value < 0.9
    assert status.alarms == ()
    few_fraud = Monitor(MonitorSpec(min_labels=300, min_positives=200), ref)
    few_fraud.observe_labels(scores, labels)
    assert few_fraud.status().alarms == ()
    enough = Monitor(MonitorSpec(min_labels=100, min_positives=10), ref)
    enough.observe_labels(scores, labels)
    assert [a.kind for a in enough.status().alarms] == ["metric"]
    # no reference metric (undefined at export): never a metric alarm
    unknown = Monitor(MonitorSpec(min_labels=100, min_positives=10), _reference())
    unknown.observe_labels(scores, labels)
    assert unknown.status().alarms == () and unknown.status().reference_metric is None


def test_memory_is_bounded_and_the_window_is_the_latest() -> None:
    spec = MonitorSpec(score_window=1000, min_scores=100, label_window=500, min_labels=100)
    mon = Monitor(spec, _reference())
    rng = np.random.default_rng(3)
    held = [mon._scores._data.nbytes, mon._labels._data.nbytes]  # noqa: SLF001
    last = np.zeros(0)
    for batch in range(300):  # 300 batches of 333 scores: 99 900 scores
        s = rng.random(333)
        mon.observe_scores(s)
        mon.observe_labels(s[:50], (s[:50] > 0.9).astype(int))
        last = np.concatenate([last, s])[-1000:]
        assert batch < 3 or mon._scores.values().tolist() == last.tolist()  # noqa: SLF001
    assert [mon._scores._data.nbytes, mon._labels._data.nbytes] == held  # noqa: SLF001
    status = mon.status()
    assert status.n_scored == 99_900 and status.window_scores == 1000
    assert status.n_labelled == 15_000 and status.window_labels == 500


def test_observe_refuses_bad_input() -> None:
    mon = Monitor(MonitorSpec(), _reference())
    with pytest.raises(ValueError, match="finite"):
        mon.observe_scores([0.1, float("nan")])
    with pytest.raises(ValueError, match="one label per score"):
        mon.observe_labels([0.1, 0.2], [1])
    with pytest.raises(ValueError, match=r"labels 0 \(legitimate\) and 1 \(fraud\), found \[2\]"):
        mon.observe_labels([0.1, 0.2], [1, 2])
    assert mon.status().n_scored == 0 and mon.status().n_labelled == 0  # nothing was taken


def test_spec_minimums_must_fit_their_windows() -> None:
    with pytest.raises(ValidationError, match="min_scores .* must be at most score_window"):
        MonitorSpec(score_window=100, min_scores=200)
    with pytest.raises(ValidationError, match="min_positives"):
        MonitorSpec(min_labels=20, min_positives=50)
    spec = MonitorSpec()
    assert (spec.psi_bound, spec.max_drop) == (0.2, 0.05)


# --------------------------------------------------------------------------- status


def _busy_status() -> MonitorStatus:
    scores, labels = _labelled(1000, 4)
    mon = Monitor(
        MonitorSpec(score_window=1000, min_scores=100, min_labels=100, min_positives=10),
        _reference(metric_value=0.99, flagged_rate=0.02),
    )
    mon.observe_scores(np.full(500, 0.95))
    mon.observe_labels(scores, labels)
    return mon.status()


def test_summary_is_aggregate_numbers_only() -> None:
    status = _busy_status()
    summary = status.summary()
    assert all(type(k) is str and type(v) is float for k, v in summary.items())
    assert all(math.isfinite(v) for v in summary.values())
    assert summary["alarm_psi"] == summary["alarm_metric"] == summary["retrain"] == 1.0
    assert summary["n_scored"] == 500 and summary["window_labels"] == 1000
    assert summary["pr_auc"] == pytest.approx(status.metric_value)
    assert summary["reference_pr_auc"] == 0.99 and summary["reference_flagged_rate"] == 0.02
    assert len(summary) <= 20  # a fixed set of figures, however much was scored
    # nothing measured yet: left out, not NaN
    empty = Monitor(MonitorSpec(), _reference()).status().summary()
    assert "psi" not in empty and "pr_auc" not in empty and empty["retrain"] == 0.0


def test_status_file_round_trip(tmp_path: Path) -> None:
    status = _busy_status()
    path = tmp_path / "serving" / "monitor.json"
    write_status(path, status)
    assert read_status(path) == status
    data = json.loads(path.read_text())
    assert data["retrain"] is True and [a["name"] for a in data["alarms"]] == ["psi", "metric"]
    assert data["pr_auc"] == pytest.approx(status.metric_value)
    quiet = Monitor(MonitorSpec(), _reference()).status()
    write_status(path, quiet)  # None for what is not measured: still valid JSON
    assert read_status(path) == quiet
    path.write_text('{"metric": "pr_auc"}')
    with pytest.raises(ValueError, match="monitor.json: not a monitor status .*lacks"):
        read_status(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not a monitor status"):
        read_status(path)


# --------------------------------------------------------------------------- drift on streams

SPEC = GeneratedData(transactions=6000, fraud_rate=0.01, days=30)
DRIFT = MonitorSpec(score_window=2000, min_scores=500, label_window=2000, min_labels=500)


def _stand_in_scores(tx: Transactions) -> np.ndarray:
    """A fixed scorer standing in for the served model (the service's own tests use real ones).

    Logistic in what a model reads of one transaction: ``1.2 (ln amount - 5)``, ``+1.5``
    online, ``-1`` card present, ``+0.8`` for an account younger than 180 days, ``-1.5``.
    Generated fraud is online, larger and often from young accounts, so it scores higher.
    """
    f = tx.features
    z = (
        1.2 * (np.log(tx.amount) - 5.0)
        + 1.5 * f["channel_online"]
        - 1.0 * f["card_present"]
        + 0.8 * (f["account_age_days"] < 180)
        - 1.5
    )
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _site(seed: int) -> Monitor:
    """The monitor of a site whose export took the last 30 % of its history as test split."""
    history = generate_transactions(SPEC, seed)
    cut = int(0.7 * len(history))
    ref = ScoreReference.from_scores(
        _stand_in_scores(history)[cut:], history.label[cut:], threshold=0.5
    )
    reference = Reference(
        ref.edges, ref.shares, ref.metric, ref.value, 0.5, ref.flagged_rate, ref.scores
    )
    return Monitor(DRIFT, reference)


def _first_psi_alarm(mon: Monitor, tx: Transactions, batch: int = 100) -> int | None:
    """Feed ``tx``'s scores in batches; the count of scores fed when the PSI alarm first rose."""
    scores = _stand_in_scores(tx)
    for start in range(0, len(scores), batch):
        mon.observe_scores(scores[start : start + batch])
        mon.observe_labels(scores[start : start + batch], tx.label[start : start + batch])
        if any(a.kind == "psi" for a in mon.status().alarms):
            return start + len(scores[start : start + batch])
    return None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_shifted_site_raises_the_alarm_within_the_window(seed: int) -> None:
    mon = _site(seed)
    # two weeks of the bank's usual traffic: quiet
    usual = generate_stream(SPEC, seed, transactions=3000, days=14)
    assert _first_psi_alarm(mon, usual) is None
    # then its population shifts (amounts x2, half the devices new, only lone fraud)
    shifted = generate_stream(SPEC, seed, transactions=4000, days=14, start_day=44, shift=1.0)
    fed = _first_psi_alarm(mon, shifted)
    assert fed is not None and fed <= DRIFT.score_window
    status = mon.status()
    assert status.retrain and status.summary()["alarm_psi"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_site_without_shift_raises_no_alarm(seed: int) -> None:
    mon = _site(seed)
    stream = generate_stream(SPEC, seed, transactions=8000, days=40)  # four windows' worth
    assert _first_psi_alarm(mon, stream) is None
    status = mon.status()
    assert status.n_scored == 8000 and status.psi is not None and status.psi < DRIFT.psi_bound
    assert not any(a.kind == "psi" for a in status.alarms)
