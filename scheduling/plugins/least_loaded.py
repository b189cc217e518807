"""Least-loaded score: the share of a site's device that is free, 100 - load %."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext, ScorePlugin, clip_normalize


def load_percent(readings: Mapping[str, float]) -> float | None:
    """How busy a site is, in %: the larger of device utilization and background load.

    A CPU-only site (no device reading) falls back to ``cpu_util_percent``; ``None`` when the
    site reports none of them. Non-finite readings count as absent.

    >>> load_percent({"device_utilization_percent": 30.0, "background_load_percent": 45.0})
    45.0
    """

    def get(key: str) -> float | None:
        value = readings.get(key)
        return float(value) if value is not None and math.isfinite(value) else None

    device = [
        v
        for v in (get("device_utilization_percent"), get("background_load_percent"))
        if v is not None
    ]
    if device:
        return max(device)
    return get("cpu_util_percent")


def free_percent(load: float) -> float:
    """``100 - load``, clipped to [0, 100].

    >>> free_percent(35.0), free_percent(120.0)
    (65.0, 0.0)
    """
    return min(100.0, max(0.0, 100.0 - load))


class LeastLoadedScore(ScorePlugin):
    """Score a site by its free capacity, ``100 - load %`` (Kubernetes' least-allocated).

    The raw score is already on an absolute [0, 100] scale, so :meth:`normalize` rounds it
    without stretching it: two nearly idle sites both score near 100.

    Args:
        unknown_load_percent: Load assumed for a site that reports no load at all (default
            100.0: a site whose load is unknown is ranked last).
    """

    name = "least-loaded"

    def __init__(self, unknown_load_percent: float = 100.0) -> None:
        if not (math.isfinite(unknown_load_percent) and 0.0 <= unknown_load_percent <= 100.0):
            raise ValueError(
                f"least-loaded: unknown_load_percent must be in [0, 100]; "
                f"found {unknown_load_percent!r}"
            )
        self.unknown_load_percent = float(unknown_load_percent)

    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        out: dict[str, float] = {}
        for cand in candidates:
            load = load_percent(cand.readings)
            out[cand.site_id] = free_percent(self.unknown_load_percent if load is None else load)
        return out

    def normalize(self, raw: Mapping[str, float]) -> dict[str, int]:
        return clip_normalize(raw)

    def __repr__(self) -> str:
        return f"LeastLoadedScore(unknown_load_percent={self.unknown_load_percent})"
