"""Aggregation arithmetic: weighted FedAvg (McMahan et al., 2017) and pooled evaluation. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fedcore.metrics import metrics_from_counts, metrics_from_histograms
from fedcore.records import EvalReply


def weighted_average(
    updates: Sequence[tuple[Mapping[str, np.ndarray], float]],
    order: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """FedAvg: the weighted mean of each named array (weights: examples, or FedNova's examples / epochs).

    ``result[k] = sum_i n_i * w_i[k] / sum_i n_i``, computed in float64 and
    cast back to each array's dtype. Arrays are matched by name, not by order. Inputs are
    never modified. Whatever
    :func:`coordinator.validation.check_train_reply` accepted averages without an error:
    finite values stay finite (a weighted mean lies between its inputs).

    Args:
        updates: ``(arrays, weight)`` per site; every site must send the same names
            and shapes and a positive, finite weight.
        order: The names in the order the result lists them (the global model's; default:
            the first update's). Must be the updates' names.

    Returns:
        The averaged arrays (new objects).

    Raises:
        ValueError: on an empty list, a non-positive weight, or mismatched names/shapes.
    """
    if not updates:
        raise ValueError("weighted_average needs at least one update, got none")
    names = list(updates[0][0]) if order is None else list(order)
    if order is not None and sorted(names) != sorted(updates[0][0]):
        raise ValueError(f"order lists {sorted(names)}; the updates hold {sorted(updates[0][0])}")
    total = 0.0
    for i, (arrays, n) in enumerate(updates):
        if isinstance(n, bool) or not isinstance(n, (int, float, np.number)):
            raise ValueError(f"update {i} has weight {n!r:.60}; expected a positive, finite number")
        if not (n > 0 and np.isfinite(n)):
            raise ValueError(f"update {i} has weight {n}; expected a positive, finite number")
        if set(arrays) != set(names):
            raise ValueError(f"update {i} has arrays {sorted(arrays)}; expected {sorted(names)}")
        total += float(n)
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
            acc += a.astype(np.float64) * (float(n) / total)
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


EvalCheck = Callable[[EvalReply, RecordDict], str | None]
"""The reason to refuse a parsed evaluation and its content (its signature), or ``None``."""


def pool_replies(
    replies: Sequence[tuple[int, RecordDict]],
    errors: Mapping[int, str],
    site_of: Mapping[int, str],
    threshold: float,
    verify: EvalCheck | None = None,
) -> tuple[dict[str, Any], list[EvalReply], dict[str, list[str]]]:
    """Parse evaluate-reply contents by node and pool them (:func:`pool_evaluations`).

    ``errors`` say why a node gave none; ``site_of`` names each node's site. An evaluation
    is left out, with its reason, when it does not parse, names a site other than its
    node's (or comes from a node that answers for no site) or ``verify`` refuses it (its
    signature). Returns the pooled metrics (NaN when nothing parsed; ``per_site``: each
    site's own metrics), the accepted replies and the problems by site.
    """
    problems = {site_of[n]: [e] for n, e in errors.items() if n in site_of}
    parsed: list[EvalReply] = []
    for nid, content in replies:
        who = site_of.get(nid, f"node {nid}")
        try:
            reply = EvalReply.from_content(content)
        except ValueError as exc:
            problems[who] = [f"malformed evaluation: {exc}"]
            continue
        if nid not in site_of:
            problems[who] = [f"evaluation from node {nid}, which answers for no site this round"]
            continue
        if reply.site_id != site_of[nid]:
            problems[who] = [
                f"evaluation names site {reply.site_id!r:.80}, but came from the node of {who!r}"
            ]
            continue
        refusal = verify(reply, content) if verify is not None else None
        if refusal is not None:
            problems[who] = [f"evaluation refused: {refusal}"]
            continue
        parsed.append(reply)
    if not parsed:
        nan = float("nan")
        return {"loss": nan, "pr_auc": nan, "roc_auc": nan}, parsed, problems
    pooled: dict[str, Any] = dict(pool_evaluations(parsed, threshold))
    pooled["per_site"] = {p.site_id: p.metrics for p in parsed}
    return pooled, parsed, problems
