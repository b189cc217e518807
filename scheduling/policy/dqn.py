"""Deep Q-network scale/migrate policy (Mnih et al., Nature 2015; Double DQN, van Hasselt et al., AAAI 2016)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from fedcore.storage import atomic_write_bytes
from scheduling.policy.base import (
    ScalePolicy,
    action_name,
    check_observation,
    describe_observation,
)
from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE, ClusterObservation

log = logging.getLogger(__name__)

FORMAT = "fedcore.scale-policy.dqn/1"
"""Format tag written into every saved policy; :meth:`DqnPolicy.load` accepts only this one."""

METADATA_KEY = "fedcore.policy"
"""Key of the JSON metadata in the safetensors header of a saved policy."""

CLUSTER_FIELDS = tuple(ClusterObservation.__dataclass_fields__)
"""Names of the cluster observation's values, in vector order."""


class QNetwork(nn.Module):
    """Multi-layer perceptron Q(s, .): one Q-value per action.

    Args:
        observation_size: Length of an observation.
        num_actions: Number of actions (outputs).
        hidden_sizes: Widths of the hidden layers, each followed by ReLU (default (64, 64)).

    Shapes:
        input ``[batch, observation_size]`` float32, output ``[batch, num_actions]``.
    """

    def __init__(
        self, observation_size: int, num_actions: int, hidden_sizes: Sequence[int] = (64, 64)
    ) -> None:
        super().__init__()
        if observation_size < 1 or num_actions < 1:
            raise ValueError(
                f"QNetwork needs observation_size >= 1 and num_actions >= 1; found {observation_size} and {num_actions}"
            )
        if any(int(h) < 1 for h in hidden_sizes):
            raise ValueError(f"hidden sizes must be >= 1; found {list(hidden_sizes)}")
        self.observation_size = int(observation_size)
        self.num_actions = int(num_actions)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        layers: list[nn.Module] = []
        width = self.observation_size
        for h in self.hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, self.num_actions))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out

    def extra_repr(self) -> str:
        return f"observation_size={self.observation_size}, num_actions={self.num_actions}, hidden_sizes={self.hidden_sizes}"


class Batch(NamedTuple):
    """Transitions sampled from a :class:`ReplayBuffer` (arrays share the first dimension)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray


class ReplayBuffer:
    """Fixed-size ring buffer of transitions (numpy arrays); the oldest is overwritten when full.

    Args:
        capacity: Most transitions kept.
        observation_size: Length of an observation.
    """

    def __init__(self, capacity: int, observation_size: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1; found {capacity}")
        self.capacity = capacity
        self.observations = np.zeros((capacity, observation_size), dtype=np.float32)
        self.next_observations = np.zeros((capacity, observation_size), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        observation: np.ndarray,
        action: int,
        reward: float,
        next_observation: np.ndarray,
        done: bool,
    ) -> None:
        """Store one transition (copied) in the next slot, overwriting the oldest when full."""
        i = self._next
        self.observations[i] = observation
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_observations[i] = next_observation
        self.dones[i] = float(done)
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement (copies)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first")
        idx = rng.integers(0, self._size, size=batch_size)
        return Batch(
            self.observations[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_observations[idx],
            self.dones[idx],
        )

    def __repr__(self) -> str:
        return f"ReplayBuffer(capacity={self.capacity}, size={self._size})"


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """Exploration rate after ``step`` steps: linear from ``start`` to ``end`` over ``decay_steps``, then ``end``.

    >>> linear_epsilon(50, 1.0, 0.1, 100)
    0.55
    """
    if decay_steps <= 0 or step >= decay_steps:
        return end
    return start + (end - start) * max(step, 0) / decay_steps


def td_targets(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
    next_q_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bootstrapped targets ``y = r + gamma * (1 - done) * Q_target(s', a')``.

    DQN takes ``a' = argmax_a Q_target(s', a)``; Double DQN (when ``next_q_online`` is
    given) takes ``a' = argmax_a Q_online(s', a)``, evaluated by the target network.

    Args:
        rewards: ``[batch]``.
        dones: ``[batch]``, 1.0 where the episode ended at ``s'``.
        next_q_target: ``[batch, actions]``, the target network's Q-values at ``s'``.
        gamma: Discount factor in [0, 1].
        next_q_online: ``[batch, actions]``, the online network's Q-values at ``s'``.

    Returns:
        ``[batch]`` targets.
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        best = next_q_online.argmax(dim=1, keepdim=True)
        next_value = next_q_target.gather(1, best).squeeze(1)
    return rewards + gamma * (1.0 - dones) * next_value


@dataclass(frozen=True)
class DqnConfig:
    """Hyper-parameters of :class:`DqnAgent` (defaults follow Mnih et al., scaled down).

    Attributes:
        hidden_sizes: Q-network hidden layer widths.
        gamma: Discount factor.
        learning_rate: Adam step size.
        batch_size: Transitions per gradient step.
        buffer_capacity: Replay buffer size.
        learning_starts: Transitions stored before the first gradient step.
        train_every: Environment steps between gradient steps.
        target_sync_every: Gradient steps between copies of the online network to the target.
        epsilon_start: Exploration rate at step 0.
        epsilon_end: Exploration rate after the decay.
        epsilon_decay_steps: Environment steps over which epsilon falls linearly.
        grad_clip_norm: Largest global gradient norm (gradients are rescaled above it).
        huber_delta: Huber loss threshold between quadratic and linear.
        double_dqn: Choose the bootstrap action with the online network (van Hasselt et al.).
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    gamma: float = 0.99
    learning_rate: float = 1e-3
    batch_size: int = 64
    buffer_capacity: int = 50_000
    learning_starts: int = 1_000
    train_every: int = 1
    target_sync_every: int = 500
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 10_000
    grad_clip_norm: float = 10.0
    huber_delta: float = 1.0
    double_dqn: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"DqnConfig.{name} must be {expected}; found {getattr(self, name)!r}")

        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise bad("hidden_sizes", "a non-empty tuple of widths >= 1")
        if not 0.0 <= self.gamma <= 1.0:
            raise bad("gamma", "in [0, 1]")
        for name in ("learning_rate", "grad_clip_norm", "huber_delta"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        for name in ("batch_size", "buffer_capacity", "train_every", "target_sync_every"):
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        for name in ("learning_starts", "epsilon_decay_steps"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        for name in ("epsilon_start", "epsilon_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "in [0, 1]")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for a saved policy's metadata)."""
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the hyper-parameters."""
        return tuple(f.name for f in fields(cls))


class DqnAgent:
    """A learning DQN agent: online and target Q-networks, replay buffer, epsilon-greedy.

    Everything random (network initialisation, exploration, replay sampling) is drawn
    from ``seed``; torch's global random state is left as it was.

    Args:
        observation_size: Length of an observation.
        num_actions: Number of actions.
        config: Hyper-parameters (default :class:`DqnConfig`).
        seed: Seed of all randomness.
    """

    def __init__(
        self,
        observation_size: int,
        num_actions: int,
        config: DqnConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or DqnConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.online = QNetwork(observation_size, num_actions, self.config.hidden_sizes)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=self.config.learning_rate)
        self.buffer = ReplayBuffer(self.config.buffer_capacity, observation_size)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.updates = 0

    @property
    def epsilon(self) -> float:
        """Exploration rate at the current step."""
        c = self.config
        return linear_epsilon(self.steps, c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps)

    def act(self, observation: np.ndarray, explore: bool = True) -> int:
        """Epsilon-greedy action when ``explore``, else greedy."""
        if explore and self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.online.num_actions))
        with torch.no_grad():
            q = self.online(torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1))
        return int(q.argmax(dim=1).item())

    def observe(
        self,
        observation: np.ndarray,
        action: int,
        reward: float,
        next_observation: np.ndarray,
        done: bool,
    ) -> float | None:
        """Store a transition, count a step, and learn when due.

        Args:
            done: True only when the episode *ended* at ``next_observation`` (not when it
                was cut by a time limit), so that the target does not bootstrap from it.

        Returns:
            The loss of the gradient step taken, or ``None`` when none was due.
        """
        self.buffer.add(observation, action, reward, next_observation, done)
        self.steps += 1
        c = self.config
        if len(self.buffer) < max(c.learning_starts, 1) or self.steps % c.train_every:
            return None
        return self.learn()

    def learn(self) -> float:
        """One gradient step (Huber loss, Adam, gradient clipping) on a replay batch; returns the loss."""
        c = self.config
        b = self.buffer.sample(c.batch_size, self.rng)
        obs = torch.from_numpy(b.observations)
        next_obs = torch.from_numpy(b.next_observations)
        actions = torch.from_numpy(b.actions).unsqueeze(1)
        with torch.no_grad():
            next_online = self.online(next_obs) if c.double_dqn else None
            y = td_targets(
                torch.from_numpy(b.rewards),
                torch.from_numpy(b.dones),
                self.target(next_obs),
                c.gamma,
                next_online,
            )
        q = self.online(obs).gather(1, actions).squeeze(1)
        loss = F.huber_loss(q, y, delta=c.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(self.online.parameters(), c.grad_clip_norm)
        self.optimizer.step()
        self.updates += 1
        if self.updates % c.target_sync_every == 0:
            self.sync_target()
        return float(loss.item())

    def sync_target(self) -> None:
        """Copy the online network's weights into the target network."""
        self.target.load_state_dict(self.online.state_dict())

    def to_policy(
        self, actions: Sequence[str] = ACTIONS, training: Mapping[str, Any] | None = None
    ) -> DqnPolicy:
        """A greedy :class:`DqnPolicy` over a copy of the online network."""
        info = {"config": self.config.as_dict(), "steps": self.steps, "updates": self.updates}
        return DqnPolicy(copy.deepcopy(self.online), actions, {**info, **(training or {})})

    def __repr__(self) -> str:
        return f"DqnAgent(observation_size={self.online.observation_size}, num_actions={self.online.num_actions}, steps={self.steps}, updates={self.updates})"


class DqnPolicy(ScalePolicy):
    """A trained Q-network acting greedily: the action of the largest Q-value.

    Args:
        network: The Q-network (kept, in eval mode; pass a copy to keep training yours).
        actions: Name of each output, in order (default :data:`ACTIONS`).
        training: JSON-ready facts about how it was trained (saved with it).
    """

    name = "dqn"

    def __init__(
        self,
        network: QNetwork,
        actions: Sequence[str] = ACTIONS,
        training: Mapping[str, Any] | None = None,
    ) -> None:
        if len(actions) != network.num_actions:
            raise ValueError(
                f"the network has {network.num_actions} outputs but {len(actions)} action names were given: {list(actions)}"
            )
        self.network = network.eval().requires_grad_(False)
        self.actions = tuple(actions)
        self.training = dict(training or {})

    @property
    def observation_size(self) -> int:
        """Length of the observations this policy reads."""
        return self.network.observation_size

    def q_values(self, observation: np.ndarray) -> np.ndarray:
        """``float32 [num_actions]`` Q-values at ``observation`` (checked for length and finiteness)."""
        x = check_observation(observation, self.observation_size)
        with torch.no_grad():
            q = self.network(torch.from_numpy(x).reshape(1, -1))
        out: np.ndarray = q.reshape(-1).numpy().copy()
        return out

    def act(self, observation: np.ndarray) -> int:
        return int(np.argmax(self.q_values(observation)))

    def explain(self, observation: np.ndarray) -> str:
        q = self.q_values(observation)
        best = int(np.argmax(q))
        margin = float(q[best] - np.max(np.delete(q, best))) if q.shape[0] > 1 else 0.0
        qs = " ".join(f"{action_name(i, self.actions)}={v:+.2f}" for i, v in enumerate(q))
        return f"{self.name}: {action_name(best, self.actions)} (Q {qs}; margin {margin:.2f}) at {describe_observation(observation)}"

    def metadata(self) -> dict[str, Any]:
        """What :meth:`save` writes next to the weights."""
        meta: dict[str, Any] = {
            "format": FORMAT,
            "observation_size": self.observation_size,
            "actions": list(self.actions),
            "hidden_sizes": list(self.network.hidden_sizes),
            "training": self.training,
        }
        if self.observation_size == OBSERVATION_SIZE:
            meta["observation_fields"] = list(CLUSTER_FIELDS)
        return meta

    def save(self, path: str | Path) -> Path:
        """Write the weights and :meth:`metadata` to one safetensors file (atomically); returns its path."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        meta = json.dumps(self.metadata(), sort_keys=True)
        atomic_write_bytes(path, safetensors_save(state, metadata={METADATA_KEY: meta}), 0o644)
        log.info("saved %s policy to %s", self.name, path)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        observation_size: int = OBSERVATION_SIZE,
        actions: Sequence[str] = ACTIONS,
    ) -> DqnPolicy:
        """Load a policy written by :meth:`save`, refusing one that does not fit.

        Args:
            path: The saved file.
            observation_size: Observation length the caller will pass (default
                :data:`OBSERVATION_SIZE`, with the cluster observation's field order).
            actions: Action names the caller expects, in order (default :data:`ACTIONS`).

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not a saved policy, or one trained for other observations or actions,
                or weights that do not match the recorded layer sizes; the message says
                what was expected, what was found, and how to fix it.
        """
        path = Path(path)
        meta, state = read_policy_file(path)
        fix = "retrain it (train_dqn) in the current simulator, or point the coordinator at a matching file"
        found_size = meta.get("observation_size")
        if found_size != observation_size:
            raise ValueError(
                f"policy file {path} reads observations of {found_size} values; expected {observation_size}: {fix}"
            )
        found_fields = meta.get("observation_fields")
        if observation_size == OBSERVATION_SIZE and found_fields not in (
            None,
            list(CLUSTER_FIELDS),
        ):
            raise ValueError(
                f"policy file {path} was trained on observation fields {found_fields}; expected {list(CLUSTER_FIELDS)}: {fix}"
            )
        if meta.get("actions") != list(actions):
            raise ValueError(
                f"policy file {path} chooses among actions {meta.get('actions')}; expected {list(actions)}: {fix}"
            )
        hidden = meta.get("hidden_sizes")
        if not isinstance(hidden, list) or not all(isinstance(h, int) for h in hidden):
            raise ValueError(
                f"policy file {path}: metadata 'hidden_sizes' must be a list of integers; found {hidden!r}"
            )
        network = QNetwork(observation_size, len(actions), hidden)
        expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ValueError(
                f"policy file {path}: weights {found} do not match hidden sizes {hidden} (expected {expected}); the file is damaged: {fix}"
            )
        if not all(bool(torch.isfinite(v).all()) for v in state.values()):
            raise ValueError(f"policy file {path} holds non-finite weights: {fix}")
        network.load_state_dict(state)
        training = meta.get("training")
        return cls(network, actions, training if isinstance(training, dict) else {})

    def __repr__(self) -> str:
        return f"DqnPolicy(observation_size={self.observation_size}, actions={list(self.actions)}, hidden_sizes={list(self.network.hidden_sizes)})"


def read_policy_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and weights of a saved policy, checked only for being one.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a safetensors file, or one without this format's metadata.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no policy file at {path} (write one with DqnPolicy.save)")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise ValueError(
            f"{path} is not a saved scale policy (expected a safetensors file written by DqnPolicy.save): {exc}"
        ) from exc
    try:
        meta = json.loads(header[METADATA_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path} has no {METADATA_KEY!r} metadata (expected a file written by DqnPolicy.save)"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(
            f"{path}: policy format {found!r} is not supported; expected {FORMAT!r} (re-save it with this version)"
        )
    return meta, state
