"""Plaintext protection: site models travel and are averaged in clear (tests and benchmarks only)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from coordinator.aggregation import weighted_average
from coordinator.protection.base import (
    ClearModelProtection,
    Collected,
    Noise,
    TrainRound,
    send_train,
)
from coordinator.robust import update_norm
from coordinator.validation import check_train_reply
from fedcore import records as R
from secure.modes import warn_if_plaintext

log = logging.getLogger(__name__)

SITE_CLIP_SLACK = 1e-4
"""Relative slack on ``site_clip`` for a clear update."""


def rounding_slack(*arrays: Mapping[str, np.ndarray]) -> float:
    """How far float rounding may lengthen an update between these models: ``eps * sum ||m||``.

    A site clips its update in float and adds it back to the model in the model's dtype;
    each value then moves by at most half an ulp of the larger of its two ends, which over
    all values is at most ``eps`` times the sum of the two models' L2 norms.
    """
    eps = max(
        (float(np.finfo(a.dtype).eps) for m in arrays for a in m.values() if a.dtype.kind == "f"),
        default=0.0,
    )
    return eps * sum(update_norm(m) for m in arrays)


class Plaintext(ClearModelProtection):
    """FedAvg over clear models (McMahan et al., 2017), FedNova-weighted.

    Every reply is validated against the global model (names, shapes, dtypes, finite
    values, example count, loss) before it may enter the average; with ``site_clip`` set,
    an update (model minus global) longer than the bound is refused too.

    Args:
        initial: The global model before round 1 (copied).
        site_clip: The L2 bound every site clips its update to, if any.
    """

    name = "plaintext"

    def __init__(self, initial: Mapping[str, np.ndarray], site_clip: float | None = None) -> None:
        super().__init__(initial)
        self.site_clip = site_clip
        warn_if_plaintext(self.name, log)

    def check(self, reply: R.TrainReply) -> list[str]:
        """Every reason a clear reply must be left out (empty: accept)."""
        reasons = check_train_reply(reply, self._arrays)
        if reasons or self.site_clip is None:
            return reasons
        norm = update_norm(
            {k: np.asarray(v, np.float64) - self._arrays[k] for k, v in reply.arrays.items()}
        )
        limit = self.site_clip * (1 + SITE_CLIP_SLACK) + rounding_slack(self._arrays, reply.arrays)
        if norm > limit:
            reasons.append(
                f"update has L2 norm {norm:.6g}, over aggregation.site_clip {self.site_clip:g}: "
                "the site did not clip its update"
            )
        return reasons

    def collect(self, rnd: TrainRound) -> Collected:
        return send_train(self, rnd, self.check)

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        mean = weighted_average(
            [(r.arrays, collected.weights[s]) for s, r in collected.accepted],
            order=list(self._arrays),
        )
        self._arrays = mean if noise is None else noise.on_mean(mean, len(collected.accepted))
