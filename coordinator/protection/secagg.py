"""SecAgg+ protection: the coordinator learns only the masked sum of the chosen sites' models."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from coordinator.errors import FederationError
from coordinator.protection.base import ClearModelProtection, Collected, Noise, TrainRound
from coordinator.protection.plaintext import rounding_slack
from coordinator.robust import update_norm
from coordinator.validation import check_train_reply
from fedcore import records as R
from fedcore.config import PrivacySpec

log = logging.getLogger(__name__)

NAMES_KEY = "fedcore.names"
"""Fit-config key of a SecAgg+ round: the model's array names, in the order they travel."""


class SecAggPlus(ClearModelProtection):
    """Flower's SecAgg+ (Bell et al., CCS 2020) over exactly the chosen sites.

    Each chosen site receives a legacy fit instruction whose config carries the same round
    config record as any other mode's instruction, plus the array names; its masked
    reply reaches the coordinator only inside the sum. The mean is checked like any clear
    model before it replaces the global one. A round cannot be skipped: the protocol
    either produces the mean of the sites that stayed, or fails.

    Each site reports its examples as its weight, at most the weight policy's
    ``max_site_weight`` (with capped weights: the capped largest count), which the round
    config carries. With ``site_clip`` set, every site clips its update (model minus
    global) to that L2 norm before masking; a mean of clipped updates is no longer than
    the bound, so the coordinator refuses a round whose mean update is longer than
    ``site_clip`` plus the quantization error bound: some site did not clip.

    Args:
        privacy: The scenario's privacy section (mode ``secagg+``).
        initial: The global model before round 1 (copied).
        site_clip: The L2 bound every site clips its update to, if any.
    """

    name = "secagg+"
    can_skip_round = False
    evaluation_rides_on_train = False  # the protocol's own stages carry the train instruction

    def __init__(
        self,
        privacy: PrivacySpec,
        initial: Mapping[str, np.ndarray],
        site_clip: float | None = None,
    ) -> None:
        super().__init__(initial)
        self.privacy = privacy
        self.site_clip = site_clip

    def collect(self, rnd: TrainRound) -> Collected:
        from secure.secagg import SecAggError, run_secagg_round, secagg_error_bound

        names = sorted(self._arrays)
        # each site's weight is quantized relative to max_weight: keep it tight
        max_weight = self.weights.max_site_weight(rnd.chosen)
        cfg = replace(self.site_bounds(rnd.config_for(None, 1.0)), max_weight=max_weight or 0.0)
        fit_config: dict[str, Any] = {**cfg.to_record(), NAMES_KEY: json.dumps(names)}
        site_of = {c.node_id: c.site_id for c in rnd.chosen}
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
        if self.site_clip is not None:
            bound = secagg_error_bound(spec, list(outcome.num_examples.values()))
            self.check_clipped(rnd.round, mean, bound)
        return Collected(
            chosen=len(rnd.chosen),
            sites=sorted(site_of[n] for n in outcome.contributors),
            rejected={site_of[n]: [reason] for n, reason in outcome.dropped.items()},
            loss=float(outcome.mean_loss),
            bytes_down=outcome.bytes_down,
            bytes_up=outcome.bytes_up,
            pending=mean,
        )

    def check_clipped(self, round_: int, mean: Mapping[str, np.ndarray], per_value: float) -> None:
        """Refuse the round when the mean update is longer than ``site_clip`` allows.

        ``per_value`` bounds the quantization error of one value of the mean; over ``d``
        values the error's L2 norm is at most ``sqrt(d) * per_value``. Float rounding of
        the sites' clipped models adds at most :func:`rounding_slack`.

        Raises:
            FederationError: the mean update is over the bound (some site did not clip).
        """
        if self.site_clip is None:
            return
        update = {k: np.asarray(v, np.float64) - self._arrays[k] for k, v in mean.items()}
        norm = update_norm(update)
        size = sum(int(np.asarray(v).size) for v in mean.values())
        limit = (
            self.site_clip * (1 + 1e-4)
            + math.sqrt(size) * per_value
            + rounding_slack(self._arrays, mean)
        )
        if not norm <= limit:
            raise FederationError(
                f"round {round_}: the SecAgg+ mean update has L2 norm {norm:.6g}, over "
                f"aggregation.site_clip {self.site_clip:g} (limit {limit:.6g} with the "
                "quantization error): a site did not clip its update, and SecAgg+ cannot "
                "show which. The round is refused"
            )
        log.debug("round %d: SecAgg+ mean update norm %.4g <= %.4g", round_, norm, limit)

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        if collected.pending is None:
            raise ValueError(f"round {round_}: no SecAgg+ sum to aggregate")
        mean = collected.pending
        self._arrays = mean if noise is None else noise.on_mean(mean, len(collected.sites))

    def summary(self) -> dict[str, Any]:
        return {"secagg": self.privacy.secagg.model_dump(mode="json")}
