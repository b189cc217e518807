"""Throughput score: the device speed a site can give the round, relative_throughput x free share."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext, ScorePlugin


def available_throughput(relative_throughput: float, background_load_percent: float) -> float:
    """``relative_throughput * (1 - background_load_percent / 100)``, the load clipped to [0, 100].

    >>> available_throughput(2.0, 25.0)
    1.5
    """
    share = 1.0 - min(100.0, max(0.0, background_load_percent)) / 100.0
    return max(0.0, relative_throughput) * share


class ThroughputScore(ScorePlugin):
    """Score a site by the speed it has free: ``relative_throughput x (1 - background/100)``.

    ``relative_throughput`` is the device speed relative to an A100 (1.0). The raw score has
    no fixed upper bound, so the default min-max :meth:`normalize` maps the fastest site to
    100 and the slowest to 0.

    Args:
        unknown_throughput: ``relative_throughput`` assumed for a site that does not report
            it (default 0.0: ranked last). A missing ``background_load_percent`` counts as 0.
    """

    name = "throughput"

    def __init__(self, unknown_throughput: float = 0.0) -> None:
        if not (math.isfinite(unknown_throughput) and unknown_throughput >= 0.0):
            raise ValueError(
                f"throughput: unknown_throughput must be a finite number >= 0; "
                f"found {unknown_throughput!r}"
            )
        self.unknown_throughput = float(unknown_throughput)

    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        out: dict[str, float] = {}
        for cand in candidates:
            r = cand.readings
            speed = r.get("relative_throughput")
            background = r.get("background_load_percent")
            speed = self.unknown_throughput if speed is None or not math.isfinite(speed) else speed
            background = 0.0 if background is None or not math.isfinite(background) else background
            out[cand.site_id] = available_throughput(float(speed), float(background))
        return out

    def __repr__(self) -> str:
        return f"ThroughputScore(unknown_throughput={self.unknown_throughput})"
