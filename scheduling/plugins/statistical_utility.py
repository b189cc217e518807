"""Statistical-utility score: sites whose data the model still fits badly rank higher (Oort, Lai et al., OSDI 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext, ScorePlugin

LAST_LOSS = "last_train_loss"
"""Readings key the fedcore scheduler adds: the site's mean training loss in the last round it trained."""


def statistical_utility(num_examples: int, loss: float | None, unknown: float) -> float:
    """Oort's ``|B| * sqrt(mean(loss^2))``, with the site's mean loss standing in for the RMS loss.

    A site whose loss is unknown (it never trained) gets ``unknown`` (the largest utility
    seen, so it is explored first).

    >>> statistical_utility(400, 0.5, 0.0)
    200.0
    >>> statistical_utility(400, None, 123.0)
    123.0
    """
    if loss is None or not math.isfinite(loss):
        return unknown
    return max(0, num_examples) * max(0.0, loss)


class StatisticalUtilityScore(ScorePlugin):
    """Score a site by how much its data would still teach the model: ``examples x last loss``.

    Oort's statistical utility (|B_i| sqrt(1/|B_i| sum_k loss_k^2)), from what a fedcore site
    reports: its number of examples and its mean training loss the last time it trained. A
    site with much data the model fits badly ranks high; a site whose loss fell low has
    less left to give. Sites that never trained get the best score seen, so every site is
    tried. The default min-max normalization maps the best to 100 and the worst to 0.

    Args:
        exponent: Raise the utility to this power before normalizing (default 1.0; 0.5
            dampens the pull of the largest sites).
    """

    name = "statistical-utility"

    def __init__(self, exponent: float = 1.0) -> None:
        if not (math.isfinite(exponent) and exponent > 0):
            raise ValueError(
                f"statistical-utility: exponent must be a finite number > 0; found {exponent!r}"
            )
        self.exponent = float(exponent)

    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        known = {
            c.site_id: statistical_utility(c.num_train_examples, c.readings.get(LAST_LOSS), 0.0)
            for c in candidates
            if c.readings.get(LAST_LOSS) is not None
        }
        best = max(known.values(), default=1.0)
        return {
            c.site_id: statistical_utility(c.num_train_examples, c.readings.get(LAST_LOSS), best)
            ** self.exponent
            for c in candidates
        }

    def __repr__(self) -> str:
        return f"StatisticalUtilityScore(exponent={self.exponent})"
