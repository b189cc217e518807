"""SecAgg+ protection: the coordinator learns only the masked sum of the chosen sites' models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from coordinator.errors import FederationError
from coordinator.protection.base import ClearModelProtection, Collected, Noise, TrainRound
from coordinator.validation import check_train_reply
from fedcore import records as R
from fedcore.config import PrivacySpec

NAMES_KEY = "fedcore.names"
"""Fit-config key of a SecAgg+ round: the model's array names, in the order they travel."""


class SecAggPlus(ClearModelProtection):
    """Flower's SecAgg+ (Bell et al., CCS 2020) over exactly the chosen sites.

    Each chosen site receives a legacy fit instruction whose config carries the same round
    config record as any other mode's instruction, plus the array names; its masked
    reply reaches the coordinator only inside the sum. The mean is checked like any clear
    model before it replaces the global one. A round cannot be skipped: the protocol
    either produces the mean of the sites that stayed, or fails.

    Args:
        privacy: The scenario's privacy section (mode ``secagg+``).
        initial: The global model before round 1 (copied).
    """

    name = "secagg+"
    can_skip_round = False
    evaluation_rides_on_train = False  # the protocol's own stages carry the train instruction

    def __init__(self, privacy: PrivacySpec, initial: Mapping[str, np.ndarray]) -> None:
        super().__init__(initial)
        self.privacy = privacy

    def collect(self, rnd: TrainRound) -> Collected:
        from secure.secagg import SecAggError, run_secagg_round

        names = sorted(self._arrays)
        fit_config: dict[str, Any] = {
            **rnd.config_for(None, 1.0).to_record(),
            NAMES_KEY: json.dumps(names),
        }
        site_of = {c.node_id: c.site_id for c in rnd.chosen}
        # each site's weight is quantized relative to max_weight: keep it tight
        max_weight = self.weights.max_site_weight(rnd.chosen)
        spec = (
            self.privacy.secagg.model_copy(update={"max_weight": max_weight})
            if max_weight is not None
            else self.privacy.secagg
        )
        try:
            outcome = run_secagg_round(
                rnd.grid,
                [c.node_id for c in rnd.chosen],
                fit_config,
                [self._arrays[n] for n in names],
                spec,
                rnd.round,
                rnd.timeout,
            )
        except SecAggError as exc:
            raise FederationError(f"round {rnd.round}: SecAgg+ failed: {exc}") from exc
        mean = {
            n: np.asarray(a, dtype=self._arrays[n].dtype).reshape(self._arrays[n].shape)
            for n, a in zip(names, outcome.arrays, strict=True)
        }
        problems = check_train_reply(R.TrainReply(mean, 1, 0.0, 0.0, "aggregate"), self._arrays)
        if problems:
            raise FederationError(f"round {rnd.round}: SecAgg+ aggregate unusable: {problems}")
        return Collected(
            chosen=len(rnd.chosen),
            sites=sorted(site_of[n] for n in outcome.contributors),
            rejected={site_of[n]: [reason] for n, reason in outcome.dropped.items()},
            loss=float(outcome.mean_loss),
            bytes_down=outcome.bytes_down,
            bytes_up=outcome.bytes_up,
            pending=mean,
        )

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        if collected.pending is None:
            raise ValueError(f"round {round_}: no SecAgg+ sum to aggregate")
        mean = collected.pending
        self._arrays = mean if noise is None else noise.on_mean(mean, len(collected.sites))

    def summary(self) -> dict[str, Any]:
        return {"secagg": self.privacy.secagg.model_dump(mode="json")}
