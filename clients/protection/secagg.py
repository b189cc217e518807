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
    the array names (a JSON list of distinct names, one per array). The arrays are decoded
    as :func:`fedcore.records.record_to_arrays` does: each ``.npy`` header is checked
    before anything is allocated.

    Raises:
        ValueError: the instruction is not a legacy fit or is malformed (the message names
            the field, what was expected and what was found).
    """
    from secure.secagg_client import FITINS_CONFIG, FITINS_PARAMETERS

    if not is_secagg_fit(content):
        raise ValueError(
            f"expected a legacy fit instruction with records {FITINS_PARAMETERS!r} and "
            f"{FITINS_CONFIG!r}, found {sorted(content.keys())[:10]}"
        )
    config: dict[str, Any] = dict(content.config_records[FITINS_CONFIG])
    raw = config.pop(NAMES_KEY, "[]")
    try:
        names = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        names = None
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(
            f"fit config {NAMES_KEY!r}: expected a JSON list of distinct array names, found "
            f"{type(raw).__name__} {str(raw)[:60]!r}"
        )
    cfg = R.RoundConfig.from_record(config)
    params = list(R.record_to_arrays(content.array_records[FITINS_PARAMETERS]).values())
    if len(names) != len(params):
        raise ValueError(
            f"fit instruction: expected one array per name ({len(names)}), found {len(params)}"
        )
    return cfg, dict(zip(names, params, strict=True))


class SecAggSite(PlaintextSite):
    """Training replies are masked by SecAgg+; evaluation and export get the model in clear."""

    name = "secagg+"

    def global_model(
        self, runtime: SiteRuntime, content: RecordDict, cfg: R.RoundConfig
    ) -> dict[str, np.ndarray]:
        if is_secagg_fit(content):
            arrays = read_fit(content)[1]
            runtime.check_model(arrays, cfg.task)  # before anything reads or writes with it
            return arrays
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
