"""Training and evaluation: DQN learns a toy cluster MDP, evaluation counts, time limits, determinism."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from scheduling.policy.base import ScalePolicy, ScalingEnvProtocol
from scheduling.policy.dqn import DqnConfig, DqnPolicy
from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE
from scheduling.policy.rules import HoldPolicy
from scheduling.policy.train import evaluate_policy, train_dqn


def first_weight(net: torch.nn.Module) -> torch.Tensor:
    """The first layer's weight (shares storage with the network)."""
    weight: torch.Tensor = net.state_dict()["layers.0.weight"]
    return weight


HOLD, SCALE_UP, SCALE_DOWN, MIGRATE = range(4)
STRAGGLER = 3  # index of straggler_ratio in the cluster observation


class StragglerEnv:
    """A tiny cluster MDP in which only the straggler feature matters.

    A straggler is present or not. With one present, migrate earns +1 and removes it;
    anything else earns -1 and keeps it. Without one, hold earns +1, migrate -1 (a wasted
    move) and scaling -0.5; a straggler then appears with probability 0.3. The straggler
    feature is in [0.6, 1] when one is present and in [0, 0.4] otherwise; the other seven
    features are noise. Episodes last ``horizon`` steps (a time limit: ``truncated``).
    Best return: ``horizon``.
    """

    observation_size = OBSERVATION_SIZE
    num_actions = len(ACTIONS)

    def __init__(self, horizon: int = 20) -> None:
        self.horizon = horizon
        self.rng = np.random.default_rng(0)
        self.t = 0
        self.straggler = False

    def _obs(self) -> np.ndarray:
        x = self.rng.random(OBSERVATION_SIZE).astype(np.float32)
        x[STRAGGLER] = 0.6 + 0.4 * x[STRAGGLER] if self.straggler else 0.4 * x[STRAGGLER]
        return x

    def reset(self, seed: int) -> np.ndarray:
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.straggler = bool(self.rng.random() < 0.5)
        return self._obs()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, Mapping[str, Any]]:
        if self.straggler:
            reward = 1.0 if action == MIGRATE else -1.0
            self.straggler = action != MIGRATE
        else:
            reward = {HOLD: 1.0, MIGRATE: -1.0}.get(action, -0.5)
            self.straggler = bool(self.rng.random() < 0.3)
        self.t += 1
        done = self.t >= self.horizon
        return self._obs(), reward, done, {"truncated": done}


class RandomPolicy(ScalePolicy):
    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, observation: np.ndarray) -> int:
        return int(self.rng.integers(len(ACTIONS)))

    def explain(self, observation: np.ndarray) -> str:
        return "random"


TOY_CONFIG = DqnConfig(
    hidden_sizes=(32, 32),
    gamma=0.9,
    learning_rate=3e-3,
    batch_size=32,
    buffer_capacity=5_000,
    learning_starts=100,
    train_every=2,
    target_sync_every=100,
    epsilon_decay_steps=600,
)


class OneStepEnv:
    """One state, one action, reward 1, every episode one step long (ended or cut short)."""

    observation_size = 2
    num_actions = 1

    def __init__(self, truncated: bool) -> None:
        self.truncated = truncated

    def reset(self, seed: int) -> np.ndarray:
        return np.array([0.5, 0.5], dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, Mapping[str, Any]]:
        return self.reset(0), 1.0, True, {"truncated": self.truncated}


class RewardIsActionEnv:
    """Reward = the action's index; five steps per episode; a fixed observation."""

    observation_size = OBSERVATION_SIZE
    num_actions = len(ACTIONS)

    def __init__(self) -> None:
        self.t = 0

    def reset(self, seed: int) -> np.ndarray:
        self.t = 0
        return np.full(OBSERVATION_SIZE, 0.5, dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, Mapping[str, Any]]:
        self.t += 1
        return np.full(OBSERVATION_SIZE, 0.5, dtype=np.float32), float(action), self.t >= 5, {}


class ConstantPolicy(ScalePolicy):
    name = "constant"

    def __init__(self, action: int) -> None:
        self.action = action

    def act(self, observation: np.ndarray) -> int:
        return self.action

    def explain(self, observation: np.ndarray) -> str:
        return f"always {self.action}"


def test_toy_envs_meet_the_protocol() -> None:
    for env in (StragglerEnv(), OneStepEnv(True), RewardIsActionEnv()):
        assert isinstance(env, ScalingEnvProtocol)
        assert env.reset(3).shape == (env.observation_size,)


def test_dqn_learns_the_toy_mdp_and_beats_random() -> None:
    torch.set_num_threads(1)
    policy, history = train_dqn(StragglerEnv, episodes=50, seed=0, config=TOY_CONFIG)
    # 50 episodes x 20 steps = 1000 steps; updates on even steps once 100 are stored:
    # steps 100, 102, ..., 1000 -> (1000 - 100) / 2 + 1 = 451
    assert (history.steps, history.updates) == (1000, 451)
    assert history.episode_lengths == [20] * 50
    assert history.mean_losses[:4] == [None] * 4  # steps 1-80: nothing learned yet
    assert history.mean_losses[5] is not None
    # epsilon falls from 1.0 by 0.95 / 600 per step: after episode 1 (20 steps)
    # 1 - 0.95 * 20 / 600 = 0.968333; from step 600 on it stays at 0.05
    assert history.epsilons[0] == pytest.approx(1 - 0.95 * 20 / 600)
    assert history.epsilons[-1] == pytest.approx(0.05)
    seeds = range(1000, 1020)
    learned = evaluate_policy(policy, StragglerEnv, seeds)
    random = evaluate_policy(RandomPolicy(0), StragglerEnv, seeds)
    # the best return is 20 per episode; random earns about -0.5 per step
    assert learned["mean_return"] >= 18.0, learned
    assert random["mean_return"] < 0.0, random
    assert learned["action_counts"]["scale-up"] + learned["action_counts"]["scale-down"] <= 8
    # the greedy action follows the straggler feature on fresh states
    rng = np.random.default_rng(7)
    states = rng.random((400, OBSERVATION_SIZE)).astype(np.float32)
    with_straggler = np.arange(400) % 2 == 0
    states[:, STRAGGLER] = np.where(
        with_straggler, 0.6 + 0.4 * states[:, STRAGGLER], 0.4 * states[:, STRAGGLER]
    )
    optimal = np.where(with_straggler, MIGRATE, HOLD)
    chosen = np.array([policy.act(s) for s in states])
    assert (chosen == optimal).mean() >= 0.95
    assert policy.training["episodes"] == 50
    assert policy.training["environment"] == "StragglerEnv"
    assert policy.training["config"]["gamma"] == 0.9


@pytest.mark.parametrize(
    ("truncated", "expected_q"),
    [
        (False, 1.0),  # the episode ends: Q = r = 1
        (True, 2.0),  # cut by a time limit: Q = r + 0.5 Q  ->  Q = 1 / (1 - 0.5) = 2
    ],
)
def test_time_limit_ends_still_bootstrap(truncated: bool, expected_q: float) -> None:
    torch.set_num_threads(1)
    config = DqnConfig(
        hidden_sizes=(8,),
        gamma=0.5,
        learning_rate=1e-2,
        batch_size=16,
        learning_starts=16,
        target_sync_every=10,
        epsilon_decay_steps=0,
    )
    policy, _ = train_dqn(lambda: OneStepEnv(truncated), 200, 0, config, actions=("stay",))
    assert policy.q_values(np.array([0.5, 0.5]))[0] == pytest.approx(expected_q, abs=0.05)


def test_training_is_deterministic_by_seed() -> None:
    torch.set_num_threads(1)
    config = DqnConfig(hidden_sizes=(8,), batch_size=8, learning_starts=8, epsilon_decay_steps=50)
    a, log_a = train_dqn(StragglerEnv, 4, seed=3, config=config)
    b, log_b = train_dqn(StragglerEnv, 4, seed=3, config=config)
    c, _ = train_dqn(StragglerEnv, 4, seed=4, config=config)
    assert log_a.episode_returns == log_b.episode_returns
    for key, value in a.network.state_dict().items():
        assert torch.equal(value, b.network.state_dict()[key])
    assert not torch.equal(first_weight(a.network), first_weight(c.network))


def test_evaluate_counts_actions_and_sums_rewards() -> None:
    result = evaluate_policy(ConstantPolicy(2), RewardIsActionEnv, seeds=[1, 2, 3])
    assert result["returns"] == [10.0, 10.0, 10.0]  # reward 2 x 5 steps
    assert result["mean_return"] == 10.0
    assert result["std_return"] == 0.0
    assert result["mean_length"] == 5.0
    assert result["action_counts"] == {"hold": 0, "scale-up": 0, "scale-down": 15, "migrate": 0}
    capped = evaluate_policy(ConstantPolicy(3), RewardIsActionEnv, seeds=[1], max_steps=2)
    assert capped["returns"] == [6.0]  # 3 x 2 steps


def test_evaluate_hold_matches_a_hand_rollout() -> None:
    result = evaluate_policy(HoldPolicy(), StragglerEnv, seeds=[5, 6])
    for seed, got in zip([5, 6], result["returns"], strict=True):
        env = StragglerEnv()
        env.reset(seed)
        expected = sum(env.step(HOLD)[1] for _ in range(20))
        assert got == expected
    assert result["action_counts"]["hold"] == 40


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one seed"):
        evaluate_policy(HoldPolicy(), StragglerEnv, seeds=[])
    with pytest.raises(ValueError, match="chose action 7"):
        evaluate_policy(ConstantPolicy(7), RewardIsActionEnv, seeds=[0])
    with pytest.raises(ValueError, match="episodes and max_steps must be >= 1"):
        train_dqn(StragglerEnv, 0)
    with pytest.raises(ValueError, match="has 4 actions but 1 action names"):
        train_dqn(StragglerEnv, 1, actions=("hold",))
    with pytest.raises(
        ValueError, match=r"observation of shape \(2,\); its observation_size says \(3,\)"
    ):

        class Liar(OneStepEnv):
            observation_size = 3

        train_dqn(lambda: Liar(False), 1, actions=("stay",))


def test_policy_from_training_is_a_dqn_policy() -> None:
    config = DqnConfig(hidden_sizes=(4,), learning_starts=1_000)
    policy, history = train_dqn(RewardIsActionEnv, 2, config=config, log_every=1)
    assert isinstance(policy, DqnPolicy)
    assert history.updates == 0 and history.mean_losses == [None, None]
    assert policy.training["steps"] == 10 and policy.training["seed"] == 0
