"""Builds a scenario's protection by mode name; the one place that knows every mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.protection.base import (
    CappedWeights,
    FedNovaWeights,
    Protection,
    UniformWeights,
    WeightPolicy,
)
from coordinator.protection.ckks import Ckks
from coordinator.protection.dp import DifferentialPrivacy
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.robust import RobustAggregation
from coordinator.protection.secagg import SecAggPlus
from fedcore.config import AggregationSpec, Scenario


@dataclass(frozen=True)
class ProtectionInputs:
    """What any mode may need to build itself.

    Args:
        scenario: The validated scenario.
        initial: The global model before round 1.
        state_dir: The coordinator's state directory (a mode keeps its files under it).
        ckks_context: The coordinator kit's public CKKS context, if any.
    """

    scenario: Scenario
    initial: Mapping[str, np.ndarray]
    state_dir: Path
    ckks_context: Any = None


def _plaintext(inputs: ProtectionInputs) -> Protection:
    return Plaintext(inputs.initial, inputs.scenario.aggregation.site_clip)


def _ckks(inputs: ProtectionInputs) -> Protection:
    return Ckks(
        inputs.scenario.privacy,
        inputs.ckks_context,
        len(inputs.scenario.sites),
        inputs.initial,
        inputs.state_dir / "ckks",
    )


def _secagg(inputs: ProtectionInputs) -> Protection:
    return SecAggPlus(
        inputs.scenario.privacy, inputs.initial, inputs.scenario.aggregation.site_clip
    )


WEIGHT_POLICIES: dict[str, Callable[[AggregationSpec], WeightPolicy]] = {
    "examples": lambda spec: FedNovaWeights(),
    "capped": lambda spec: CappedWeights(spec.weight_cap),
    "equal": lambda spec: UniformWeights(),
}
"""``aggregation.weights`` -> the weight policy (differential privacy replaces it by equal)."""


PROTECTIONS: dict[str, Callable[[ProtectionInputs], Protection]] = {
    "plaintext": _plaintext,
    "ckks": _ckks,
    "secagg+": _secagg,
}
"""Privacy mode name -> builder."""


def build_protection(inputs: ProtectionInputs) -> Protection:
    """The scenario's protection: its mode with the ``aggregation`` section's weights and
    site clip, wrapped in robust aggregation when the rule or a norm bound asks for it, and
    in differential privacy when ``dp`` is set.

    Raises:
        ValueError: an unknown mode (the message lists the valid ones), a mode that
            cannot run with what it was given (e.g. ``ckks`` without a public context), or
            an ``aggregation`` section the mode cannot honour (e.g. ``median`` under
            ``ckks``).
    """
    privacy = inputs.scenario.privacy
    aggregation = inputs.scenario.aggregation
    builder = PROTECTIONS.get(privacy.mode)
    if builder is None:
        raise ValueError(
            f"unknown privacy mode {privacy.mode!r}; valid: {', '.join(sorted(PROTECTIONS))}"
        )
    problems = aggregation.problems(
        privacy.mode, len(inputs.scenario.sites), privacy.dp is not None
    )
    if problems:
        raise ValueError("; ".join(problems))
    protection = builder(inputs)
    protection.weights = WEIGHT_POLICIES[aggregation.weights](aggregation)
    protection.site_clip = aggregation.site_clip
    if aggregation.rule != "fedavg" or aggregation.norm_bound is not None:
        protection = RobustAggregation(protection, aggregation)
    if privacy.dp is not None:
        protection = DifferentialPrivacy(
            protection, privacy.dp, population_size=len(inputs.scenario.sites)
        )
    return protection
