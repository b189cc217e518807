"""SecAgg+ at the site: a legacy fit whose reply Flower's ``secaggplus_mod`` masks on its way out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import RecordDict

from clients.protection.base import clipped_for_round
from clients.protection.plaintext import PlaintextSite
from clients.runtime import LocalTraining, SiteRuntime
from fedcore import records as R

NAMES_KEY = "fedcore.names"
"""Fit-config key: the model's array names, in the order they travel."""


def is_secagg_fit(content: RecordDict) -> bool:
    """Whether a train instruction is a SecAgg+ legacy fit."""
    from secure.secagg import is_legacy_fit

    return is_legacy_fit(content)


def read_fit(content: RecordDict) -> tuple[R.RoundConfig, dict[str, np.ndarray]]:
    """The round config and global model of a SecAgg+ legacy fit instruction.

    The fit config carries the same round config record as any other instruction, plus
    the array names.
    """
    from secure.secagg import read_fit_instruction

    params, fit_config = read_fit_instruction(content)
    config: dict[str, Any] = dict(fit_config)
    names = json.loads(str(config.pop(NAMES_KEY, "[]")))
    if len(names) != len(params):
        raise ValueError(f"fit instruction holds {len(params)} arrays for {len(names)} names")
    return R.RoundConfig.from_record(config), dict(zip(names, params, strict=True))


class SecAggSite(PlaintextSite):
    """Training replies are masked by SecAgg+; evaluation and export get the model in clear."""

    name = "secagg+"

    def global_model(
        self, runtime: SiteRuntime, content: RecordDict, cfg: R.RoundConfig
    ) -> dict[str, np.ndarray]:
        if is_secagg_fit(content):
            return read_fit(content)[1]
        return super().global_model(runtime, content, cfg)

    def reply(
        self,
        runtime: SiteRuntime,
        cfg: R.RoundConfig,
        base: dict[str, np.ndarray],
        trained: LocalTraining,
    ) -> RecordDict:
        from secure.secagg import fit_reply_content

        trained = clipped_for_round(cfg, base, trained)
        weight = 1 if self.uniform_weights else trained.num_examples
        if cfg.max_weight >= 1:  # the coordinator's bound on what a site may count
            weight = min(weight, int(cfg.max_weight))
        metrics: dict[str, Any] = {
            "loss": trained.loss,
            "seconds": trained.seconds,
            "num_examples": trained.num_examples,
        }
        return fit_reply_content([trained.arrays[n] for n in base], weight, metrics)
