"""Staleness score: sites that have not trained for a while rank higher, so every bank's data keeps shaping the model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext, ScorePlugin, clip_normalize

ROUNDS_SINCE = "rounds_since_selected"
"""Readings key the fedcore scheduler adds: rounds since the site last trained (absent: never)."""


def staleness_score(rounds_since: float | None, horizon: float) -> float:
    """``100 * min(1, rounds_since / horizon)``; a site that never trained scores 100.

    >>> staleness_score(2, 4), staleness_score(9, 4), staleness_score(None, 4)
    (50.0, 100.0, 100.0)
    """
    if rounds_since is None:
        return 100.0
    return 100.0 * min(1.0, max(0.0, rounds_since) / horizon)


class StalenessScore(ScorePlugin):
    """Score a site by how long ago it last trained (the fairness a fixed ranking lacks).

    Scoring only speed and load picks the same fast sites every round, and the model
    then learns their data only; this score pulls the others back in, as Oort's staleness
    bonus does (Lai et al., OSDI 2021).

    Args:
        horizon: Rounds after which a site counts as fully stale (default 4).
    """

    name = "staleness"

    def __init__(self, horizon: float = 4.0) -> None:
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(
                f"staleness: horizon must be a number of rounds > 0; found {horizon!r}"
            )
        self.horizon = float(horizon)

    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        return {
            c.site_id: staleness_score(c.readings.get(ROUNDS_SINCE), self.horizon)
            for c in candidates
        }

    def normalize(self, raw: Mapping[str, float]) -> dict[str, int]:
        return clip_normalize(raw)

    def __repr__(self) -> str:
        return f"StalenessScore(horizon={self.horizon})"
