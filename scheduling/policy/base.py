"""The scale/migrate policy interface, and the environment protocol a policy is trained against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE, ClusterObservation


@runtime_checkable
class ScalingEnvProtocol(Protocol):
    """An episodic environment a scale/migrate policy is trained and evaluated in.

    The cluster simulator's ``ScalingEnv`` has this shape; so can any toy environment.
    Observations are ``float32 [observation_size]``; actions are indices in
    ``[0, num_actions)`` (for the cluster, into :data:`ACTIONS`).
    """

    @property
    def observation_size(self) -> int:
        """Length of every observation."""
        ...

    @property
    def num_actions(self) -> int:
        """Number of discrete actions."""
        ...

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode drawn from ``seed``; return its first observation."""
        ...

    def step(self, action: int) -> tuple[np.ndarray, float, bool, Mapping[str, Any]]:
        """Apply ``action``; return (next observation, reward, episode over, info).

        ``info["truncated"]`` true means the episode was cut by a time limit, not ended
        by the state: learners then still bootstrap from the next observation.
        """
        ...


class ScalePolicy(ABC):
    """Decides, once per decision period, whether to hold, scale up, scale down or migrate."""

    name: ClassVar[str] = "abstract"

    @abstractmethod
    def act(self, observation: np.ndarray) -> int:
        """The action to take, as an index into :data:`ACTIONS`.

        Args:
            observation: ``float32 [OBSERVATION_SIZE]``, e.g.
                :meth:`ClusterObservation.to_vector`.
        """

    @abstractmethod
    def explain(self, observation: np.ndarray) -> str:
        """One line for the coordinator's log: the action and why, quoting the values used."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_observation(observation: np.ndarray, size: int = OBSERVATION_SIZE) -> np.ndarray:
    """``observation`` as a flat ``float32`` array, checked for length and finiteness.

    Raises:
        ValueError: It does not hold ``size`` values, or holds NaN or infinity; the
            message quotes what was found.
    """
    values = np.asarray(observation, dtype=np.float32).reshape(-1)
    if values.shape[0] != size:
        raise ValueError(
            f"observation must hold {size} values (see ClusterObservation); found {values.shape[0]}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"observation must be finite; found {values.tolist()} (fill missing telemetry before acting)"
        )
    return values


def action_name(action: int, actions: Sequence[str] = ACTIONS) -> str:
    """The name of action index ``action`` (``"action-<i>"`` beyond ``actions``)."""
    return actions[action] if 0 <= action < len(actions) else f"action-{action}"


def describe_observation(observation: np.ndarray) -> str:
    """``name=value`` pairs for a log line: field names for a cluster observation, ``x[i]`` otherwise.

    >>> describe_observation(np.array([0.5, 0.25]))
    'x[0]=0.50 x[1]=0.25'
    """
    values = np.asarray(observation, dtype=np.float64).reshape(-1)
    if values.shape[0] == OBSERVATION_SIZE:
        obs = ClusterObservation.from_vector(values)
        pairs = [(k, float(v)) for k, v in vars(obs).items()]
    else:
        pairs = [(f"x[{i}]", float(v)) for i, v in enumerate(values)]
    return " ".join(f"{k}={v:.2f}" for k, v in pairs)
