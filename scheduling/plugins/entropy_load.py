"""Composite load score with entropy weights: the metrics on which sites differ most weigh most.

Method: Shannon entropy weighting (Zou, Yun and Sun 2006), see :mod:`scheduling.entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from scheduling.base import Candidate
from scheduling.entropy import entropy_scores, entropy_weights
from scheduling.framework import SchedulingContext, ScorePlugin, clip_normalize
from scheduling.plugins.health import DEFAULT_MAX_TEMPERATURE_C

Extract = Callable[[Mapping[str, float], float], float | None]


def _get(r: Mapping[str, float], key: str) -> float | None:
    value = r.get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def _ratio(r: Mapping[str, float], num: str, den: str) -> float | None:
    a, b = _get(r, num), _get(r, den)
    return a / b if a is not None and b is not None and b > 0 else None


METRICS: dict[str, tuple[Extract, bool]] = {
    "utilization": (lambda r, t: _get(r, "device_utilization_percent"), False),
    "memory_used_fraction": (
        lambda r, t: _ratio(r, "device_memory_used_mib", "device_memory_total_mib"),
        False,
    ),
    "temperature_fraction": (
        lambda r, t: None if (c := _get(r, "device_temperature_c")) is None else c / t,
        False,
    ),
    "power_fraction": (lambda r, t: _ratio(r, "device_power_w", "device_power_limit_w"), False),
    "background_load": (lambda r, t: _get(r, "background_load_percent"), False),
    "relative_throughput": (lambda r, t: _get(r, "relative_throughput"), True),
}
"""Metric name -> (value from a site's readings and the temperature limit, higher is better).
All are cost metrics (lower load is better) but ``relative_throughput``."""


def metric_table(
    candidates: Sequence[Candidate], max_temperature_c: float, metrics: Sequence[str]
) -> tuple[list[str], np.ndarray, list[bool], dict[str, list[str]]]:
    """Sites x metrics table of the ``metrics`` that at least one site reports.

    A missing (or non-finite) value is imputed by the median of its column.

    Returns:
        ``(names, table float64 [n_sites, n_kept], benefit flags, imputed)`` where ``imputed``
        maps a site id to the metrics filled in for it.
    """
    names: list[str] = []
    columns: list[np.ndarray] = []
    benefit: list[bool] = []
    imputed: dict[str, list[str]] = {}
    for name in metrics:
        extract, higher_better = METRICS[name]
        values = [extract(c.readings, max_temperature_c) for c in candidates]
        known = [v for v in values if v is not None]
        if not known:
            continue
        median = float(np.median(known))
        for cand, v in zip(candidates, values, strict=True):
            if v is None:
                imputed.setdefault(cand.site_id, []).append(name)
        names.append(name)
        columns.append(np.array([median if v is None else v for v in values], dtype=np.float64))
        benefit.append(higher_better)
    table = np.stack(columns, axis=1) if columns else np.zeros((len(candidates), 0))
    return names, table, benefit, imputed


class EntropyLoadScore(ScorePlugin):
    """Entropy-weighted composite load score in [0, 100] (higher = less loaded, faster).

    The score is :func:`~scheduling.entropy.entropy_scores` of the metric table, already on an
    absolute [0, 100] scale, so :meth:`normalize` rounds it without stretching it.
    :attr:`last_weights` keeps the weights of the last call for the log.

    Args:
        max_temperature_c: Temperature limit the temperature metric is relative to (default:
            the scenario's ``max_temperature_c`` threshold, else 85.0 °C).
        metrics: Names of :data:`METRICS` to use (default: all).
    """

    name = "entropy-load"

    def __init__(
        self, max_temperature_c: float | None = None, metrics: Sequence[str] | None = None
    ) -> None:
        if max_temperature_c is not None and not (
            math.isfinite(max_temperature_c) and max_temperature_c > 0
        ):
            raise ValueError(
                f"entropy-load: max_temperature_c must be a finite number > 0; "
                f"found {max_temperature_c!r}"
            )
        chosen = list(METRICS) if metrics is None else list(metrics)
        unknown = [m for m in chosen if m not in METRICS]
        if unknown or not chosen:
            raise ValueError(
                f"entropy-load: unknown or no metrics {unknown!r}; choose from: {', '.join(METRICS)}"
            )
        self.max_temperature_c = max_temperature_c
        self.metrics = chosen
        self.last_weights: dict[str, float] = {}
        self.last_imputed: dict[str, list[str]] = {}

    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        limit = self.max_temperature_c or ctx.threshold(
            "max_temperature_c", DEFAULT_MAX_TEMPERATURE_C
        )
        names, table, benefit, imputed = metric_table(candidates, limit, self.metrics)
        self.last_imputed = imputed
        if not candidates or not names:  # nothing tells the sites apart
            self.last_weights = {}
            return {c.site_id: 100.0 for c in candidates}
        weights = entropy_weights(table, benefit)
        self.last_weights = {n: float(w) for n, w in zip(names, weights, strict=True)}
        scores = entropy_scores(table, benefit)
        return {c.site_id: float(s) for c, s in zip(candidates, scores, strict=True)}

    def normalize(self, raw: Mapping[str, float]) -> dict[str, int]:
        return clip_normalize(raw)

    def explain(self) -> dict[str, object]:
        return {
            "weights": {k: round(v, 6) for k, v in self.last_weights.items()},
            "imputed": {k: list(v) for k, v in self.last_imputed.items()},
        }

    def __repr__(self) -> str:
        return (
            f"EntropyLoadScore(max_temperature_c={self.max_temperature_c}, metrics={self.metrics})"
        )
