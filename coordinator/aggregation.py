"""Aggregation arithmetic: weighted FedAvg (McMahan et al., 2017) and pooled evaluation. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fedcore.metrics import metrics_from_counts, metrics_from_histograms
from fedcore.records import EvalReply


def weighted_average(
    updates: Sequence[tuple[Mapping[str, np.ndarray], float]],
) -> dict[str, np.ndarray]:
    """FedAvg: the weighted mean of each named array (weights: examples, or FedNova's examples / epochs).

    ``result[k] = sum_i n_i * w_i[k] / sum_i n_i``, computed in float64 and
    cast back to each array's dtype. Inputs are never modified.

    Args:
        updates: ``(arrays, weight)`` per site; every site must send the same names
            and shapes and a positive, finite weight.

    Returns:
        The averaged arrays (new objects).

    Raises:
        ValueError: on an empty list, a non-positive weight, or mismatched names/shapes.
    """
    if not updates:
        raise ValueError("weighted_average needs at least one update, got none")
    names = list(updates[0][0])
    total = 0.0
    for i, (arrays, n) in enumerate(updates):
        if not (n > 0 and np.isfinite(n)):
            raise ValueError(f"update {i} has weight {n}; expected a positive, finite number")
        if list(arrays) != names:
            raise ValueError(f"update {i} has arrays {sorted(arrays)}; expected {sorted(names)}")
        total += n
    out: dict[str, np.ndarray] = {}
    for name in names:
        ref = np.asarray(updates[0][0][name])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for i, (arrays, n) in enumerate(updates):
            a = np.asarray(arrays[name])
            if a.shape != ref.shape:
                raise ValueError(
                    f"update {i}: array {name!r} has shape {a.shape}; expected {ref.shape}"
                )
            acc += a.astype(np.float64) * (n / total)
        out[name] = (
            acc.astype(ref.dtype)
            if np.issubdtype(ref.dtype, np.floating)
            else np.rint(acc).astype(ref.dtype)
        )
    return out


def weighted_mean(values: Sequence[tuple[float, int]]) -> float:
    """Example-weighted mean of scalars (e.g. losses); ``nan`` when there are none."""
    total = sum(n for _, n in values)
    if total <= 0:
        return float("nan")
    return float(sum(v * n for v, n in values) / total)


def pool_evaluations(parsed: Sequence[EvalReply], threshold: float) -> dict[str, float]:
    """Pooled metrics of the sites' evaluations, without any site's scores.

    AUCs come from the summed score histograms. F1, precision, recall and FPR come from the
    summed flag counts when every site sent them (each site flags at its own operating
    threshold, ``task.operating_point``), else from the histograms at ``threshold``.
    """
    hp = np.sum([p.hist_pos for p in parsed], axis=0)
    hn = np.sum([p.hist_neg for p in parsed], axis=0)
    pooled = metrics_from_histograms(hp.tolist(), hn.tolist(), threshold)
    if all(p.flagged_pos is not None and p.flagged_neg is not None for p in parsed):
        pooled.update(
            metrics_from_counts(
                sum(int(p.flagged_pos or 0) for p in parsed),
                sum(int(p.flagged_neg or 0) for p in parsed),
                sum(p.num_positive for p in parsed),
                sum(p.num_examples - p.num_positive for p in parsed),
            )
        )
    pooled["loss"] = weighted_mean([(p.loss, p.num_examples) for p in parsed])
    return pooled


def pool_replies(
    replies: Sequence[tuple[int, RecordDict]],
    errors: Mapping[int, str],
    site_of: Mapping[int, str],
    threshold: float,
) -> tuple[dict[str, Any], list[EvalReply], dict[str, list[str]]]:
    """Parse evaluate-reply contents by node and pool them (:func:`pool_evaluations`).

    ``errors`` say why a node gave none; ``site_of`` names each node's site. Returns the
    pooled metrics (NaN when nothing parsed; ``per_site``: each site's own metrics), the
    parsed replies and the problems by site.
    """
    problems = {site_of[n]: [e] for n, e in errors.items() if n in site_of}
    parsed: list[EvalReply] = []
    for nid, content in replies:
        try:
            parsed.append(EvalReply.from_content(content))
        except (ValueError, KeyError, TypeError) as exc:
            problems[site_of.get(nid, f"node {nid}")] = [f"malformed evaluation: {exc}"]
    if not parsed:
        nan = float("nan")
        return {"loss": nan, "pr_auc": nan, "roc_auc": nan}, parsed, problems
    pooled: dict[str, Any] = dict(pool_evaluations(parsed, threshold))
    pooled["per_site"] = {p.site_id: p.metrics for p in parsed}
    return pooled, parsed, problems
