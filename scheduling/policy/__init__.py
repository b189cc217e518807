"""Scale/migrate policies (hold, rules, DQN) by name, and how to train and evaluate them.

The DQN's names (and :func:`train_dqn`, :func:`evaluate_policy`) load on first use: they
need torch, and the rules, the observation and the registry should not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduling.policy.base import ScalePolicy, ScalingEnvProtocol
from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE, ClusterObservation
from scheduling.policy.rules import HoldPolicy, RulePolicy

if TYPE_CHECKING:
    from scheduling.policy.dqn import DqnAgent, DqnConfig, DqnPolicy, QNetwork, ReplayBuffer
    from scheduling.policy.train import TrainingLog, evaluate_policy, train_dqn

_LAZY = {
    "DqnAgent": "dqn",
    "DqnConfig": "dqn",
    "DqnPolicy": "dqn",
    "QNetwork": "dqn",
    "ReplayBuffer": "dqn",
    "TrainingLog": "train",
    "evaluate_policy": "train",
    "train_dqn": "train",
}

__all__ = [
    "ACTIONS",
    "OBSERVATION_SIZE",
    "POLICIES",
    "ClusterObservation",
    "DqnAgent",
    "DqnConfig",
    "DqnPolicy",
    "HoldPolicy",
    "QNetwork",
    "ReplayBuffer",
    "RulePolicy",
    "ScalePolicy",
    "ScalingEnvProtocol",
    "TrainingLog",
    "build_policy",
    "evaluate_policy",
    "train_dqn",
]


def _load_dqn(
    path: str | Path,
    observation_size: int = OBSERVATION_SIZE,
    actions: Sequence[str] = ACTIONS,
) -> ScalePolicy:
    """:meth:`DqnPolicy.load <scheduling.policy.dqn.DqnPolicy.load>`, importing torch only now."""
    from scheduling.policy.dqn import DqnPolicy

    return DqnPolicy.load(path, observation_size, actions)


POLICIES: dict[str, Callable[..., ScalePolicy]] = {
    "hold": HoldPolicy,
    "rules": RulePolicy,
    "dqn": _load_dqn,
}
"""Policy builders by name: ``hold`` (no parameters), ``rules`` (its thresholds),
``dqn`` (``path`` of a saved policy; optionally ``observation_size``, ``actions``)."""


def build_policy(name: str, **params: Any) -> ScalePolicy:
    """Build the scale policy registered as ``name`` from ``params``.

    >>> build_policy("rules", queue_low=0.2).queue_low
    0.2

    Raises:
        ValueError: Unknown name (the message lists the valid ones), an unknown or
            missing parameter (the message lists what the policy takes), or a bad value.
        FileNotFoundError: ``dqn`` with a ``path`` where there is no file.
    """
    try:
        builder = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown scale policy {name!r}; valid: {', '.join(sorted(POLICIES))}"
        ) from None
    signature = inspect.signature(builder)
    accepted = [p for p in signature.parameters if p not in ("self", "cls")]
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty and p.name in accepted
    ]
    unknown = sorted(set(params) - set(accepted))
    missing = [p for p in required if p not in params]
    if unknown or missing:
        raise ValueError(
            f"scale policy {name!r}: unknown parameter(s) {unknown or 'none'}, missing {missing or 'none'}; "
            f"it takes: {', '.join(accepted) or 'no parameters'}"
        )
    return builder(**params)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"scheduling.policy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'scheduling.policy' has no attribute {name!r}")
