"""Builds a scenario's protection by mode name; the one place that knows every mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.protection.base import Protection
from coordinator.protection.ckks import Ckks
from coordinator.protection.dp import DifferentialPrivacy
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.secagg import SecAggPlus
from fedcore.config import Scenario


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
    return Plaintext(inputs.initial)


def _ckks(inputs: ProtectionInputs) -> Protection:
    return Ckks(
        inputs.scenario.privacy,
        inputs.ckks_context,
        len(inputs.scenario.sites),
        inputs.initial,
        inputs.state_dir / "ckks",
    )


def _secagg(inputs: ProtectionInputs) -> Protection:
    return SecAggPlus(inputs.scenario.privacy, inputs.initial)


PROTECTIONS: dict[str, Callable[[ProtectionInputs], Protection]] = {
    "plaintext": _plaintext,
    "ckks": _ckks,
    "secagg+": _secagg,
}
"""Privacy mode name -> builder."""


def build_protection(inputs: ProtectionInputs) -> Protection:
    """The scenario's protection: its mode, wrapped in differential privacy when ``dp`` is set.

    Raises:
        ValueError: an unknown mode (the message lists the valid ones), or a mode that
            cannot run with what it was given (e.g. ``ckks`` without a public context).
    """
    privacy = inputs.scenario.privacy
    builder = PROTECTIONS.get(privacy.mode)
    if builder is None:
        raise ValueError(
            f"unknown privacy mode {privacy.mode!r}; valid: {', '.join(sorted(PROTECTIONS))}"
        )
    protection = builder(inputs)
    if privacy.dp is not None:
        protection = DifferentialPrivacy(
            protection, privacy.dp, population_size=len(inputs.scenario.sites)
        )
    return protection
