"""Precision-recall curves from score histograms: exact at the bin edges, pure numpy-free maths.

A curve is recorded as ``{"hist_pos": [...], "hist_neg": [...]}``: counts of positive and
negative test scores in equal bins over ``[0, 1]`` (as :func:`fedcore.metrics.score_histograms`
writes them and as sites send them in evaluation replies). Flagging every score at or above
bin ``k``'s lower edge gives one exact point of the PR curve per non-empty bin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CURVES_FILE = "curves.json"
"""Optional file in a run directory: ``{model name: curve}``, read beside ``summary.json``."""

CURVE_KEY = "curve"
"""The key under which a metrics dict of ``summary.json`` may carry its model's curve."""

CURVE_PLACES = (
    ("federated", ("final",)),
    ("local-only (pooled)", ("baselines", "local_only", "pooled")),
    ("centralized", ("baselines", "centralized")),
    ("non-graph", ("baselines", "non_graph")),
)
"""Where ``summary.json`` may hold each model's curve (``<place>.curve``), in legend order."""

PrPoint = tuple[float, float]
"""``(recall, precision)``."""


def pr_points(hist_pos: Sequence[float], hist_neg: Sequence[float]) -> list[PrPoint]:
    """The PR curve's points at each non-empty bin's lower edge, highest threshold first.

    At threshold ``k / bins`` the flagged scores are those of bins ``k`` and above:
    ``tp = sum(hist_pos[k:])``, ``fp = sum(hist_neg[k:])``, precision ``tp / (tp + fp)``,
    recall ``tp / sum(hist_pos)``.

    Args:
        hist_pos: Positives per bin (lowest scores first).
        hist_neg: Negatives per bin, same length.

    Returns:
        ``(recall, precision)`` per non-empty bin, recall rising; empty when there are no
        positives (recall is undefined).

    Raises:
        ValueError: lengths differ, or a count is negative or not finite.
    """
    if len(hist_pos) != len(hist_neg):
        raise ValueError(
            f"hist_pos and hist_neg must be equally long; found {len(hist_pos)} and {len(hist_neg)}"
        )
    for v in (*hist_pos, *hist_neg):
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"histogram counts must be finite numbers >= 0; found {v!r}")
    total_pos = float(sum(hist_pos))
    if total_pos <= 0:
        return []
    points: list[PrPoint] = []
    tp = fp = 0.0
    for p, n in zip(reversed(hist_pos), reversed(hist_neg), strict=True):
        if p + n == 0:
            continue
        tp, fp = tp + p, fp + n
        points.append((tp / total_pos, tp / (tp + fp)))
    return points


def step_area(points: Sequence[PrPoint]) -> float:
    """Area under the step PR curve: ``sum((recall[k] - recall[k-1]) * precision[k])``.

    With ``recall[-1] = 0`` this is average precision over the points, the value
    :func:`fedcore.metrics.metrics_from_histograms` gives as ``pr_auc`` for the same bins.
    """
    area, prev = 0.0, 0.0
    for recall, precision in points:
        area += (recall - prev) * precision
        prev = recall
    return area


def curve_points(doc: object) -> list[PrPoint] | None:
    """The PR points of a recorded curve, or ``None`` when ``doc`` is not a usable curve."""
    if not isinstance(doc, Mapping):
        return None
    pos, neg = doc.get("hist_pos"), doc.get("hist_neg")
    if not isinstance(pos, list) or not isinstance(neg, list) or not pos:
        return None
    try:
        points = pr_points(pos, neg)
    except ValueError:
        return None
    return points or None


def _dig(doc: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def recorded_curves(
    summary: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every model's curve document: from ``summary.json`` places, then ``extra`` (``curves.json``).

    A model named in both keeps the summary's curve.
    """
    found: dict[str, Any] = {}
    for name, keys in CURVE_PLACES:
        curve = _dig(summary, (*keys, CURVE_KEY))
        if curve_points(curve) is not None:
            found[name] = curve
    for name, curve in (extra or {}).items():
        if str(name) not in found and curve_points(curve) is not None:
            found[str(name)] = curve
    return found


def read_curves_file(out_dir: Path) -> dict[str, Any]:
    """``OUT/curves.json`` as ``{model: curve}``; empty when absent or unreadable (never raises)."""
    try:
        doc = json.loads((out_dir / CURVES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(doc) if isinstance(doc, dict) else {}
