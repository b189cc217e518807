"""Training a DQN scale/migrate policy in an environment, and evaluating any policy there."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scheduling.policy.base import ScalePolicy, ScalingEnvProtocol, action_name
from scheduling.policy.dqn import DqnAgent, DqnConfig, DqnPolicy
from scheduling.policy.observation import ACTIONS

log = logging.getLogger(__name__)

EnvFactory = Callable[[], ScalingEnvProtocol]
"""Builds a fresh environment (called once per training or evaluation run)."""


@dataclass
class TrainingLog:
    """What happened in each training episode.

    Attributes:
        episode_returns: Undiscounted sum of rewards per episode.
        episode_lengths: Steps per episode.
        mean_losses: Mean Huber loss of the episode's gradient steps (``None`` before learning starts).
        epsilons: Exploration rate at the end of each episode.
        steps: Environment steps in all.
        updates: Gradient steps in all.
        seconds: Wall-clock training time.
    """

    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    mean_losses: list[float | None] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    steps: int = 0
    updates: int = 0
    seconds: float = 0.0

    def recent_return(self, window: int = 10) -> float:
        """Mean return of the last ``window`` episodes (NaN before the first)."""
        tail = self.episode_returns[-window:]
        return float(np.mean(tail)) if tail else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _check_env(env: ScalingEnvProtocol, observation: np.ndarray, actions: Sequence[str]) -> None:
    if env.num_actions != len(actions):
        raise ValueError(
            f"{type(env).__name__} has {env.num_actions} actions but {len(actions)} action names were given "
            f"({list(actions)}); pass names that match the environment"
        )
    shape = np.shape(observation)
    if shape != (env.observation_size,):
        raise ValueError(
            f"{type(env).__name__}.reset returned an observation of shape {shape}; "
            f"its observation_size says ({env.observation_size},)"
        )


def train_dqn(
    env_factory: EnvFactory,
    episodes: int,
    seed: int = 0,
    config: DqnConfig | None = None,
    actions: Sequence[str] = ACTIONS,
    max_steps: int = 1_000,
    log_every: int = 10,
) -> tuple[DqnPolicy, TrainingLog]:
    """Train a DQN agent for ``episodes`` episodes and return its greedy policy.

    Episode ``i`` starts from ``env.reset(seed + i)``; the agent is seeded with ``seed``,
    so equal arguments give equal policies. An episode ends when the environment says
    so or after ``max_steps`` steps; a time-limit end (``info["truncated"]``, or
    ``max_steps``) still bootstraps from the last observation.

    Args:
        env_factory: Builds the environment (called once).
        episodes: Episodes to train, >= 1.
        seed: Seed of the agent and of the episodes.
        config: Hyper-parameters (default :class:`DqnConfig`).
        actions: Action names, one per environment action (default :data:`ACTIONS`).
        max_steps: Most steps per episode.
        log_every: Log progress every this many episodes (0: never).

    Returns:
        The greedy policy (its metadata records the training) and the per-episode log.
    """
    if episodes < 1 or max_steps < 1:
        raise ValueError(f"episodes and max_steps must be >= 1; found {episodes} and {max_steps}")
    env = env_factory()
    agent = DqnAgent(env.observation_size, env.num_actions, config, seed)
    history = TrainingLog()
    log.info(
        "training a DQN scale policy in %s: %d episodes of at most %d steps, seed %d",
        type(env).__name__,
        episodes,
        max_steps,
        seed,
    )
    start = time.perf_counter()
    for episode in range(episodes):
        obs = np.asarray(env.reset(seed + episode), dtype=np.float32)
        if episode == 0:
            _check_env(env, obs, actions)
        total, length = 0.0, 0
        losses: list[float] = []
        while length < max_steps:
            length += 1
            action = agent.act(obs)
            next_obs, reward, done, info = env.step(action)
            next_obs = np.asarray(next_obs, dtype=np.float32)
            terminal = bool(done) and not info.get("truncated", False)
            loss = agent.observe(obs, action, float(reward), next_obs, terminal)
            if loss is not None:
                losses.append(loss)
            total += float(reward)
            obs = next_obs
            if done:
                break
        history.episode_returns.append(total)
        history.episode_lengths.append(length)
        history.mean_losses.append(float(np.mean(losses)) if losses else None)
        history.epsilons.append(agent.epsilon)
        if log_every and (episode + 1) % log_every == 0:
            log.info(
                "episode %d/%d: return %.3f (mean of last %d: %.3f), epsilon %.3f, loss %s, steps %d",
                episode + 1,
                episodes,
                total,
                min(log_every, episode + 1),
                history.recent_return(log_every),
                agent.epsilon,
                "n/a" if not losses else f"{np.mean(losses):.4f}",
                agent.steps,
            )
    history.steps, history.updates = agent.steps, agent.updates
    history.seconds = time.perf_counter() - start
    log.info(
        "trained in %.1f s: %d steps, %d updates, mean return of the last 10 episodes %.3f",
        history.seconds,
        history.steps,
        history.updates,
        history.recent_return(),
    )
    training = {
        "environment": type(env).__name__,
        "episodes": episodes,
        "seed": seed,
        "max_steps": max_steps,
        "final_mean_return": history.recent_return(),
    }
    return agent.to_policy(actions, training), history


def evaluate_policy(
    policy: ScalePolicy,
    env_factory: EnvFactory,
    seeds: Iterable[int],
    max_steps: int = 1_000,
    actions: Sequence[str] = ACTIONS,
) -> dict[str, Any]:
    """Run ``policy`` for one episode per seed and summarise what it earned and did.

    Args:
        policy: Any scale policy.
        env_factory: Builds the environment (called once).
        seeds: One episode per seed, from ``env.reset(seed)``.
        max_steps: Most steps per episode.
        actions: Names for the action counts (default :data:`ACTIONS`).

    Returns:
        ``episodes``, ``returns`` (per seed), ``mean_return``, ``std_return``,
        ``mean_length``, and ``action_counts`` (action name -> times chosen, every
        action listed).

    Raises:
        ValueError: No seeds, or the policy chose an action the environment lacks.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("evaluate_policy needs at least one seed; found none")
    env = env_factory()
    counts: Counter[int] = Counter()
    returns: list[float] = []
    lengths: list[int] = []
    for seed in seeds:
        obs = np.asarray(env.reset(seed), dtype=np.float32)
        total, length = 0.0, 0
        while length < max_steps:
            length += 1
            action = policy.act(obs)
            if not 0 <= action < env.num_actions:
                raise ValueError(
                    f"{policy!r} chose action {action}; {type(env).__name__} has actions 0..{env.num_actions - 1}"
                )
            counts[action] += 1
            next_obs, reward, done, _ = env.step(action)
            obs = np.asarray(next_obs, dtype=np.float32)
            total += float(reward)
            if done:
                break
        returns.append(total)
        lengths.append(length)
    return {
        "episodes": len(seeds),
        "returns": returns,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "action_counts": {action_name(a, actions): counts[a] for a in range(env.num_actions)},
    }
