"""SecAgg+ at the site: a legacy fit whose reply Flower's ``secaggplus_mod`` masks on its way out."""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

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


_SETUP_BOUNDS: dict[str, tuple[type, float, float]] = {
    # key: (type, lowest, highest); share_num and threshold are bounded by the sample below
    "sample_num": (int, 1, R.MAX_SITES),
    "share_num": (int, 1, R.MAX_SITES),
    "threshold": (int, 1, R.MAX_SITES),
    "clipping_range": (float, 1e-12, 1e12),
    "target_range": (int, 1, 2**62),
    "mod_range": (int, 2, 2**62),
    "max_weight": (float, 1e-12, R.MAX_WEIGHT * R.MAX_SITES),
}
"""What a SecAgg+ setup may ask of a site (Flower checks the types, not the sizes)."""


def check_stage_record(content: RecordDict, state: RecordDict) -> None:
    """Refuse a SecAgg+ stage record that Flower's ``secaggplus_mod`` would choke on.

    Flower's own checks run first on a copy (the stage that may follow the site's current
    one, the keys and types each stage needs); their ``KeyError``/``TypeError`` become the
    site's ``ValueError``. A setup must also ask for sizes a site can honour: at most
    :data:`~fedcore.records.MAX_SITES` sites, ``threshold <= share_num <= sample_num``,
    finite positive ranges and weight (a share count of a billion would keep the site busy
    for hours).

    Args:
        content: A train message's content carrying a SecAgg+ stage record.
        state: The site's Flower context state (where SecAgg+ keeps its stage).

    Raises:
        ValueError: naming the key, what was expected and what was found.
    """
    from flwr.client.mod.secure_aggregation.secaggplus_mod import check_configs, check_stage
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        RECORD_KEY_STATE,
        Key,
        Stage,
    )

    configs = ConfigRecord(dict(content.config_records[RECORD_KEY_CONFIGS]))
    held = state.config_records.get(RECORD_KEY_STATE)
    current = str(held.get("current_stage", Stage.UNMASK)) if held is not None else Stage.UNMASK
    try:
        check_stage(current, configs)
        stage = str(configs.pop(Key.STAGE))
        check_configs(stage, configs)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"malformed SecAgg+ stage record: {exc.args[0] if exc.args else exc}"
        ) from None
    if stage != Stage.SETUP:
        return
    for key, (kind, lo, hi) in _SETUP_BOUNDS.items():
        value = configs.get(key)
        if type(value) is not kind or not lo <= value <= hi:  # type: ignore[operator]
            raise ValueError(
                f"malformed SecAgg+ setup: {key!r}: expected {kind.__name__} in [{lo:g}, "
                f"{hi:g}], found {type(value).__name__} {value!r:.40}"
            )
    threshold, shares, sample = (
        cast(int, configs[k]) for k in ("threshold", "share_num", "sample_num")
    )
    if not threshold <= shares <= sample:
        raise ValueError(
            "malformed SecAgg+ setup: expected threshold <= share_num <= sample_num, found "
            f"{threshold}, {shares} and {sample}"
        )


def refuse_malformed_stages(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: a SecAgg+ stage message is checked (:func:`check_stage_record`) first."""
    from secure.secagg import carries_secagg_stage

    if carries_secagg_stage(msg):
        check_stage_record(msg.content, ctxt.state)
    return call_next(msg, ctxt)


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
