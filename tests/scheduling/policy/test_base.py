"""Policy helpers: observation checks, action names, log descriptions, the environment protocol."""

from __future__ import annotations

import numpy as np
import pytest

from scheduling.policy.base import (
    ScalePolicy,
    ScalingEnvProtocol,
    action_name,
    check_observation,
    describe_observation,
)
from scheduling.policy.observation import ClusterObservation


def test_check_observation() -> None:
    out = check_observation(np.arange(8, dtype=np.float64).reshape(2, 4))
    assert out.dtype == np.float32 and out.tolist() == list(range(8))
    assert check_observation(np.zeros(3), size=3).shape == (3,)
    with pytest.raises(
        ValueError, match="must hold 8 values \\(see ClusterObservation\\); found 9"
    ):
        check_observation(np.zeros(9))
    with pytest.raises(ValueError, match="must be finite; found \\[nan, 0.0\\]"):
        check_observation(np.array([np.nan, 0.0]), size=2)


@pytest.mark.parametrize(
    ("index", "name"),
    [
        (0, "hold"),
        (1, "scale-up"),
        (2, "scale-down"),
        (3, "migrate"),
        (4, "action-4"),
        (-1, "action--1"),
    ],
)
def test_action_name(index: int, name: str) -> None:
    assert action_name(index) == name


def test_describe_observation() -> None:
    obs = ClusterObservation(0.5, 0.25, 0.9, 0.125, 0.0, 0.05, 0.0, 1.0)
    assert describe_observation(obs.to_vector()) == (
        "active_fraction=0.50 mean_utilization=0.25 max_temperature=0.90 straggler_ratio=0.12 "
        "dropout_rate=0.00 queue=0.05 deadline_miss=0.00 spare_devices=1.00"
    )
    assert describe_observation(np.array([1.0, 0.333])) == "x[0]=1.00 x[1]=0.33"


def test_protocol_is_structural() -> None:
    class Env:
        observation_size = 2
        num_actions = 3

        def reset(self, seed: int) -> np.ndarray:
            return np.zeros(2)

        def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, float]]:
            return np.zeros(2), 0.0, True, {}

    class NoStep:
        observation_size = 2
        num_actions = 3

        def reset(self, seed: int) -> np.ndarray:
            return np.zeros(2)

    assert isinstance(Env(), ScalingEnvProtocol)
    assert not isinstance(NoStep(), ScalingEnvProtocol)


def test_scale_policy_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        ScalePolicy()  # type: ignore[abstract]
