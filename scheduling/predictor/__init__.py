"""Round-duration forecasters over each site's telemetry history: last value, EWMA and an LSTM.

The LSTM is Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997.
Every forecaster predicts *time per unit of work* (seconds per example) and multiplies by the
next round's work, so one model serves sites that are given different amounts of work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduling.history import Observation
from scheduling.predictor.base import DurationPrior, EwmaForecaster, Forecaster, LastValueForecaster
from scheduling.predictor.features import (
    CONTEXT_FEATURES,
    STEP_FEATURES,
    context_features,
    ewma,
    example_seconds,
    mape,
    work_size,
)
from scheduling.predictor.lstm import LstmForecaster

__all__ = [
    "CONTEXT_FEATURES",
    "STEP_FEATURES",
    "DurationPrior",
    "EwmaForecaster",
    "Forecaster",
    "LastValueForecaster",
    "LstmForecaster",
    "context_features",
    "evaluate",
    "ewma",
    "example_seconds",
    "mape",
    "work_size",
]


def evaluate(
    forecaster: Forecaster, histories: Mapping[str, Sequence[Observation]], warmup: int = 1
) -> dict[str, Any]:
    """MAPE of one-step-ahead predictions over held-out histories.

    Every measured round after a site's first ``warmup`` measured rounds is predicted from
    the observations before it, with that round's work and readings as the next round's.

    Args:
        forecaster: A fitted forecaster (it is not refitted here).
        histories: Site id -> observations in round order.
        warmup: Measured rounds a site must have before its rounds are scored (default 1).

    Returns:
        ``{"forecaster", "mape", "count", "per_site": {site: mape}, "sources": {source: n}}``.

    Raises:
        ValueError: When no round could be scored.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    actual: list[float] = []
    predicted: list[float] = []
    per_site: dict[str, float] = {}
    sources: dict[str, int] = {}
    for site_id in sorted(histories):
        history = list(histories[site_id])
        site_actual: list[float] = []
        site_predicted: list[float] = []
        seen = 0
        for i, obs in enumerate(history):
            if obs.duration_s is None:
                continue
            if seen >= warmup:
                seconds, source = forecaster.predict_with_source(
                    history[:i], obs.work, obs.readings
                )
                site_actual.append(obs.duration_s)
                site_predicted.append(seconds)
                sources[source] = sources.get(source, 0) + 1
            seen += 1
        if site_actual:
            per_site[site_id] = mape(site_actual, site_predicted)
            actual += site_actual
            predicted += site_predicted
    if not actual:
        raise ValueError(
            f"nothing to evaluate: no site has more than {warmup} measured rounds "
            f"(sites: {len(histories)})"
        )
    return {
        "forecaster": forecaster.name,
        "mape": mape(actual, predicted),
        "count": len(actual),
        "per_site": per_site,
        "sources": dict(sorted(sources.items())),
    }
