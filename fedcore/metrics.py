"""Binary classification metrics for fraud scores, exact or from pooled score histograms (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

METRIC_KEYS = ("pr_auc", "roc_auc", "f1", "precision", "recall", "fpr")
"""Keys of every metrics dict returned here."""


def _curve_metrics(tps: np.ndarray, fps: np.ndarray) -> tuple[float, float]:
    """Average precision and ROC-AUC from cumulative true/false positives at descending thresholds.

    ``tps[k]`` / ``fps[k]`` count positives / negatives scored at or above the ``k``-th
    distinct threshold, highest threshold first (as in scikit-learn's curves).
    """
    pos = float(tps[-1]) if len(tps) else 0.0
    neg = float(fps[-1]) if len(fps) else 0.0
    if pos > 0:
        predicted = tps + fps
        precision = np.divide(tps, predicted, out=np.zeros(len(tps)), where=predicted > 0)
        recall = tps / pos
        ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    else:
        ap = float("nan")
    if pos > 0 and neg > 0:
        tpr = np.concatenate([[0.0], tps / pos])
        fpr = np.concatenate([[0.0], fps / neg])
        roc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    else:
        roc = float("nan")
    return ap, roc


def _threshold_metrics(tp: float, fp: float, pos: float, neg: float) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / pos if pos > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    fpr = fp / neg if neg > 0 else float("nan")
    return {"f1": f1, "precision": precision, "recall": recall, "fpr": fpr}


def _check(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(
            f"y_true and scores must have the same length; found {len(y)} and {len(s)}"
        )
    if not np.all(np.isfinite(s)):
        bad = s[~np.isfinite(s)][0]
        raise ValueError(f"scores must be finite; found {bad!r} (did training diverge?)")
    labels = set(np.unique(y).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"y_true must hold only 0 and 1; found values {sorted(labels)}")
    return y.astype(np.int64), s


def _curve_counts(
    y: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores sorted high to low, the index of each distinct score's last row, and the
    cumulative true / false positives at each distinct score (non-empty, checked input)."""
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.concatenate([np.flatnonzero(np.diff(ss)), [len(ss) - 1]])
    tps = np.cumsum(ys)[last].astype(np.float64)
    return ss, last, tps, (last + 1) - tps


def binary_metrics(
    y_true: ArrayLike, scores: ArrayLike, threshold: float = 0.5
) -> dict[str, float]:
    """PR-AUC (average precision), ROC-AUC and threshold metrics of fraud scores.

    Args:
        y_true: Labels, 1 = fraud, 0 = legitimate, shape ``[n]``.
        scores: Scores (higher = more suspicious), same shape; finite.
        threshold: Scores ``>= threshold`` count as flagged for F1, precision, recall, FPR.

    Returns:
        ``pr_auc`` (average precision, as ``sklearn.metrics.average_precision_score``),
        ``roc_auc``, ``f1``, ``precision``, ``recall`` and ``fpr`` (false-positive rate).
        AUCs are ``nan`` when undefined (no positives; ROC also with no negatives);
        precision/recall/F1 are 0 when their denominator is 0; ``fpr`` is ``nan``
        without negatives. Never raises for a missing class.

    Raises:
        ValueError: for mismatched lengths, labels other than 0/1 or non-finite scores.
    """
    y, s = _check(y_true, scores)
    pos = float(y.sum())
    neg = float(len(y) - pos)
    if len(y):
        _, _, tps, fps = _curve_counts(y, s)
        ap, roc = _curve_metrics(tps, fps)
    else:
        ap, roc = float("nan"), float("nan")
    flagged = s >= threshold
    tp = float(np.sum(flagged & (y == 1)))
    fp = float(np.sum(flagged & (y == 0)))
    return {"pr_auc": ap, "roc_auc": roc, **_threshold_metrics(tp, fp, pos, neg)}


def balanced_threshold(y_true: ArrayLike, scores: ArrayLike, fallback: float = 0.5) -> float:
    """The score threshold where sensitivity and specificity are closest (the equal-error point).

    Meant for a site's own training split: the threshold is then used on its test split.
    Among the thresholds with the smallest ``|sensitivity - specificity|`` the one with the
    largest sum wins (then the highest). The threshold returned lies midway between the
    lowest flagged score and the next lower score, so the counts on ``scores`` are those of
    the chosen point.

    Args:
        y_true: Labels (1 = positive), shape ``[n]``.
        scores: Scores, same shape; finite.
        fallback: Returned when ``y_true`` lacks one of the two classes (no such point).

    Raises:
        ValueError: for mismatched lengths, labels other than 0/1 or non-finite scores.
    """
    y, s = _check(y_true, scores)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float(fallback)
    ss, last, tps, fps = _curve_counts(y, s)
    sens = tps / pos
    spec = 1.0 - fps / neg
    gap = np.round(np.abs(sens - spec), 12)
    total = np.round(sens + spec, 12)
    best = int(np.lexsort((np.arange(len(gap)), -total, gap))[0])
    low = ss[last[best]]
    below = ss[last[best] + 1] if last[best] + 1 < len(ss) else None
    return float(low if below is None else (low + below) / 2.0)


def flagged_counts(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> tuple[int, int]:
    """``(true positives, false positives)``: positives and negatives scored ``>= threshold``."""
    y, s = _check(y_true, scores)
    flagged = s >= threshold
    return int(np.sum(flagged & (y == 1))), int(np.sum(flagged & (y == 0)))


def metrics_from_counts(tp: float, fp: float, pos: float, neg: float) -> dict[str, float]:
    """F1, precision, recall and FPR from flagged counts (e.g. summed over sites)."""
    if min(tp, fp, pos, neg) < 0 or tp > pos or fp > neg:
        raise ValueError(
            f"flagged counts must satisfy 0 <= tp <= pos and 0 <= fp <= neg; "
            f"found tp={tp}, fp={fp}, pos={pos}, neg={neg}"
        )
    return _threshold_metrics(float(tp), float(fp), float(pos), float(neg))


def score_histograms(
    y_true: ArrayLike, scores: ArrayLike, bins: int
) -> tuple[list[int], list[int]]:
    """Counts of positive and of negative scores in ``bins`` equal bins over ``[0, 1]``.

    Bin ``i`` holds scores in ``[i / bins, (i + 1) / bins)``; the last bin also holds 1.0
    and scores outside ``[0, 1]`` are clipped into the end bins.

    Returns:
        ``(hist_pos, hist_neg)``, each a list of ``bins`` ints.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1; found {bins}")
    y, s = _check(y_true, scores)
    idx = np.clip(np.floor(s * bins), 0, bins - 1).astype(np.int64)
    hist_pos = np.bincount(idx[y == 1], minlength=bins)
    hist_neg = np.bincount(idx[y == 0], minlength=bins)
    return [int(v) for v in hist_pos], [int(v) for v in hist_neg]


def metrics_from_histograms(
    hist_pos: Sequence[int] | np.ndarray, hist_neg: Sequence[int] | np.ndarray, threshold: float
) -> dict[str, float]:
    """The metrics of :func:`binary_metrics` from (pooled) score histograms.

    Scores within one bin count as tied, so the AUCs equal the exact ones when scores
    are quantised to the bins and are close otherwise. A bin counts as flagged when its
    lower edge is ``>= threshold`` (exact when the threshold is a bin edge, such as 0.5).
    This is how the coordinator pools PR-AUC over sites without seeing any score.

    Args:
        hist_pos: Positives per bin (e.g. summed over sites), length ``bins``.
        hist_neg: Negatives per bin, same length.
        threshold: Score threshold for F1, precision, recall and FPR.

    Returns:
        The keys of :data:`METRIC_KEYS`.
    """
    p = np.asarray(hist_pos, dtype=np.float64).reshape(-1)
    n = np.asarray(hist_neg, dtype=np.float64).reshape(-1)
    if p.shape != n.shape or len(p) == 0:
        raise ValueError(
            f"hist_pos and hist_neg must be non-empty and equally long; found {len(p)} and {len(n)}"
        )
    if np.any(p < 0) or np.any(n < 0) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(n))):
        raise ValueError("histogram counts must be finite and >= 0")
    bins = len(p)
    keep = (p + n)[::-1] > 0  # thresholds at non-empty bins, highest first
    tps = np.cumsum(p[::-1])[keep]
    fps = np.cumsum(n[::-1])[keep]
    ap, roc = _curve_metrics(tps, fps)
    flagged = np.arange(bins) / bins >= threshold - 1e-12
    return {
        "pr_auc": ap,
        "roc_auc": roc,
        **_threshold_metrics(
            float(p[flagged].sum()), float(n[flagged].sum()), float(p.sum()), float(n.sum())
        ),
    }
