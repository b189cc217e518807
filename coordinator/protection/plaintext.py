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
from coordinator.validation import check_train_reply
from secure.modes import warn_if_plaintext

log = logging.getLogger(__name__)


class Plaintext(ClearModelProtection):
    """FedAvg over clear models (McMahan et al., 2017), FedNova-weighted.

    Every reply is validated against the global model (names, shapes, dtypes, finite
    values, example count, loss) before it may enter the average.

    Args:
        initial: The global model before round 1 (copied).
    """

    name = "plaintext"

    def __init__(self, initial: Mapping[str, np.ndarray]) -> None:
        super().__init__(initial)
        warn_if_plaintext(self.name, log)

    def collect(self, rnd: TrainRound) -> Collected:
        return send_train(self, rnd, lambda reply: check_train_reply(reply, self._arrays))

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        mean = weighted_average([(r.arrays, collected.weights[s]) for s, r in collected.accepted])
        self._arrays = mean if noise is None else noise.on_mean(mean, len(collected.accepted))
