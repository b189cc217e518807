"""DQN parts: epsilon schedule, TD targets, replay ring buffer, agent updates, save/load of the policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save as safetensors_save

from scheduling.policy.dqn import (
    FORMAT,
    METADATA_KEY,
    DqnAgent,
    DqnConfig,
    DqnPolicy,
    QNetwork,
    ReplayBuffer,
    linear_epsilon,
    read_policy_file,
    td_targets,
)
from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE


def first_weight(net: torch.nn.Module) -> torch.Tensor:
    """The first layer's weight (shares storage with the network)."""
    weight: torch.Tensor = net.state_dict()["layers.0.weight"]
    return weight


@pytest.mark.parametrize(
    ("step", "start", "end", "decay", "expected"),
    [
        (0, 1.0, 0.1, 100, 1.0),
        (50, 1.0, 0.1, 100, 0.55),  # 1 + (0.1 - 1) * 50 / 100
        (99, 1.0, 0.1, 100, 0.109),  # 1 - 0.9 * 0.99
        (100, 1.0, 0.1, 100, 0.1),
        (5_000, 1.0, 0.1, 100, 0.1),  # stays at the end value
        (10, 0.5, 0.5, 100, 0.5),  # constant schedule
        (0, 1.0, 0.05, 0, 0.05),  # no decay: the end value from the start
    ],
)
def test_linear_epsilon(step: int, start: float, end: float, decay: int, expected: float) -> None:
    assert linear_epsilon(step, start, end, decay) == pytest.approx(expected)


def test_td_targets_dqn_and_double_dqn() -> None:
    rewards = torch.tensor([1.0, 0.0, -1.0])
    dones = torch.tensor([0.0, 1.0, 0.0])
    q_target = torch.tensor([[2.0, 5.0], [3.0, 4.0], [1.0, -2.0]])
    q_online = torch.tensor([[3.0, 1.0], [0.0, 9.0], [0.0, 1.0]])
    # DQN: max of the target row.  1 + 0.9 * 5 = 5.5;  0 (ended);  -1 + 0.9 * 1 = -0.1
    dqn = td_targets(rewards, dones, q_target, 0.9)
    assert dqn.tolist() == pytest.approx([5.5, 0.0, -0.1])
    # Double DQN: the online argmax (0, 1, 1) read from the target row.
    # 1 + 0.9 * 2 = 2.8;  0 (ended);  -1 + 0.9 * -2 = -2.8
    double = td_targets(rewards, dones, q_target, 0.9, q_online)
    assert double.tolist() == pytest.approx([2.8, 0.0, -2.8])


def test_replay_buffer_wraps_around() -> None:
    buffer = ReplayBuffer(capacity=3, observation_size=2)
    for i in range(5):
        buffer.add(np.array([i, i]), i % 4, float(i), np.array([i + 1, i + 1]), done=i == 4)
    # slots 0, 1, 2 held transitions 0, 1, 2; transitions 3 and 4 overwrote slots 0 and 1
    assert len(buffer) == 3
    assert buffer.observations[:, 0].tolist() == [3.0, 4.0, 2.0]
    assert buffer.next_observations[:, 0].tolist() == [4.0, 5.0, 3.0]
    assert buffer.actions.tolist() == [3, 0, 2]
    assert buffer.rewards.tolist() == [3.0, 4.0, 2.0]
    assert buffer.dones.tolist() == [0.0, 1.0, 0.0]
    batch = buffer.sample(64, np.random.default_rng(0))
    assert batch.observations.shape == (64, 2)
    assert set(batch.rewards.tolist()) == {2.0, 3.0, 4.0}  # 64 draws hit all three
    # each sampled transition is consistent across arrays
    assert np.array_equal(batch.observations[:, 0], batch.rewards)
    assert np.array_equal(batch.next_observations[:, 0], batch.rewards + 1)
    assert repr(buffer) == "ReplayBuffer(capacity=3, size=3)"


def test_replay_buffer_partly_filled_and_empty() -> None:
    buffer = ReplayBuffer(capacity=10, observation_size=1)
    with pytest.raises(ValueError, match="empty replay buffer"):
        buffer.sample(1, np.random.default_rng(0))
    buffer.add(np.array([7.0]), 1, 0.5, np.array([8.0]), False)
    batch = buffer.sample(5, np.random.default_rng(0))
    assert batch.observations[:, 0].tolist() == [7.0] * 5  # only the stored slot is drawn
    with pytest.raises(ValueError, match="capacity must be >= 1; found 0"):
        ReplayBuffer(0, 1)


def test_q_network_shapes_and_repr() -> None:
    net = QNetwork(OBSERVATION_SIZE, 4, (16, 8))
    assert net(torch.zeros(5, OBSERVATION_SIZE)).shape == (5, 4)
    linear = [m for m in net.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(8, 16), (16, 8), (8, 4)]
    assert "observation_size=8, num_actions=4, hidden_sizes=(16, 8)" in repr(net)
    with pytest.raises(ValueError, match="hidden sizes must be >= 1; found \\[0\\]"):
        QNetwork(8, 4, (0,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 1.5}, "DqnConfig.gamma must be in \\[0, 1\\]; found 1.5"),
        ({"hidden_sizes": ()}, "DqnConfig.hidden_sizes must be a non-empty tuple"),
        ({"learning_rate": 0.0}, "DqnConfig.learning_rate must be > 0; found 0.0"),
        ({"batch_size": 0}, "DqnConfig.batch_size must be >= 1; found 0"),
        ({"learning_starts": -1}, "DqnConfig.learning_starts must be >= 0; found -1"),
        ({"epsilon_end": -0.1}, "DqnConfig.epsilon_end must be in \\[0, 1\\]; found -0.1"),
    ],
)
def test_config_is_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DqnConfig(**kwargs)


def test_agent_is_seeded_and_leaves_torch_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a = DqnAgent(OBSERVATION_SIZE, 4, DqnConfig(hidden_sizes=(8,)), seed=1)
    b = DqnAgent(OBSERVATION_SIZE, 4, DqnConfig(hidden_sizes=(8,)), seed=1)
    c = DqnAgent(OBSERVATION_SIZE, 4, DqnConfig(hidden_sizes=(8,)), seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first_weight(a.online), first_weight(b.online))
    assert not torch.equal(first_weight(a.online), first_weight(c.online))
    assert torch.equal(first_weight(a.online), first_weight(a.target))


def test_epsilon_greedy_explores_then_exploits() -> None:
    obs = np.full(OBSERVATION_SIZE, 0.5, dtype=np.float32)
    always = DqnAgent(OBSERVATION_SIZE, 4, DqnConfig(epsilon_start=1.0, epsilon_end=1.0), seed=0)
    counts = np.bincount([always.act(obs) for _ in range(400)], minlength=4)
    assert counts.min() >= 70  # uniform: about 100 each
    never = DqnAgent(OBSERVATION_SIZE, 4, DqnConfig(epsilon_start=0.0, epsilon_end=0.0), seed=0)
    greedy = int(never.online(torch.from_numpy(obs).reshape(1, -1)).argmax())
    assert {never.act(obs) for _ in range(50)} == {greedy}
    assert always.act(obs, explore=False) == int(
        always.online(torch.from_numpy(obs).reshape(1, -1)).argmax()
    )


def test_agent_learns_when_due_and_syncs_target_periodically() -> None:
    config = DqnConfig(
        hidden_sizes=(8,), batch_size=4, learning_starts=5, train_every=2, target_sync_every=3
    )
    agent = DqnAgent(2, 2, config, seed=0)
    obs = np.array([0.1, 0.9], dtype=np.float32)
    losses = [agent.observe(obs, 1, 1.0, obs, False) for _ in range(12)]
    # learning from 5 stored transitions on, on even steps: steps 6, 8, 10, 12
    assert [loss is not None for loss in losses] == [False] * 5 + [True, False] * 3 + [True]
    assert (agent.steps, agent.updates) == (12, 4)
    # the target was copied after update 3 (step 10) and not since
    assert not torch.equal(first_weight(agent.online), first_weight(agent.target))
    agent.sync_target()
    assert torch.equal(first_weight(agent.online), first_weight(agent.target))


def test_gradient_is_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # one transition with a huge reward: the raw gradient norm is far above 0.5
    config = DqnConfig(hidden_sizes=(4,), batch_size=1, learning_starts=1, grad_clip_norm=0.5)
    agent = DqnAgent(2, 2, config, seed=0)
    seen: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params: Any, max_norm: float) -> torch.Tensor:
        total = original(params, max_norm)
        seen.append(float(total))
        grads = [p.grad.reshape(-1) for p in agent.online.parameters() if p.grad is not None]
        after = torch.linalg.vector_norm(torch.cat(grads))
        assert float(after) == pytest.approx(max_norm, rel=1e-4)
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    agent.observe(np.array([1.0, 1.0]), 0, 1e6, np.array([1.0, 1.0]), True)
    assert seen and seen[0] > 0.5


def _policy(observation_size: int = OBSERVATION_SIZE, seed: int = 0) -> DqnPolicy:
    torch.manual_seed(seed)
    return DqnPolicy(QNetwork(observation_size, 4, (16, 16)), training={"episodes": 3})


def test_save_load_round_trip_gives_identical_actions(tmp_path: Path) -> None:
    policy = _policy()
    path = policy.save(tmp_path / "policies" / "dqn.safetensors")
    loaded = DqnPolicy.load(path)
    states = np.random.default_rng(0).random((200, OBSERVATION_SIZE)).astype(np.float32)
    assert [loaded.act(s) for s in states] == [policy.act(s) for s in states]
    assert np.array_equal(
        np.stack([loaded.q_values(s) for s in states]),
        np.stack([policy.q_values(s) for s in states]),
    )
    assert loaded.training == {"episodes": 3}
    assert loaded.actions == ACTIONS
    assert repr(loaded) == (
        "DqnPolicy(observation_size=8, actions=['hold', 'scale-up', 'scale-down', 'migrate'], "
        "hidden_sizes=[16, 16])"
    )
    meta, state = read_policy_file(path)
    assert meta["format"] == FORMAT
    assert meta["hidden_sizes"] == [16, 16]
    assert meta["observation_fields"][3] == "straggler_ratio"
    assert sorted(state) == [f"layers.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]


def test_explain_quotes_q_values_and_observation() -> None:
    policy = _policy()
    obs = np.array([0.5, 0.25, 0.6, 0.1, 0.0, 0.05, 0.0, 0.2], dtype=np.float32)
    q = policy.q_values(obs)
    best = int(np.argmax(q))
    line = policy.explain(obs)
    assert line.startswith(f"dqn: {ACTIONS[best]} (Q hold={q[0]:+.2f} scale-up={q[1]:+.2f}")
    assert f"margin {q[best] - np.sort(q)[-2]:.2f}" in line
    assert "at active_fraction=0.50 mean_utilization=0.25 max_temperature=0.60" in line
    assert "\n" not in line
    with pytest.raises(ValueError, match="must hold 8 values .*found 3"):
        policy.act(np.zeros(3))
    with pytest.raises(ValueError, match="must be finite"):
        policy.act(np.array([np.nan] * OBSERVATION_SIZE))


def _rewrite(path: Path, change_meta: Any = None, change_state: Any = None) -> Path:
    meta, state = read_policy_file(path)
    if change_meta:
        change_meta(meta)
    if change_state:
        change_state(state)
    out = path.with_name("changed.safetensors")
    out.write_bytes(safetensors_save(state, metadata={METADATA_KEY: json.dumps(meta)}))
    return out


def test_mismatched_files_are_refused(tmp_path: Path) -> None:
    good = _policy().save(tmp_path / "good.safetensors")
    small = _policy(observation_size=5).save(tmp_path / "small.safetensors")
    with pytest.raises(ValueError, match="reads observations of 5 values; expected 8: retrain"):
        DqnPolicy.load(small)
    assert DqnPolicy.load(small, observation_size=5).observation_size == 5
    renamed = _rewrite(good, lambda m: m.update(actions=["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match=r"chooses among actions \['a', 'b', 'c', 'd'\]; expected"):
        DqnPolicy.load(renamed)
    shuffled = _rewrite(good, lambda m: m["observation_fields"].reverse())
    with pytest.raises(ValueError, match="trained on observation fields \\['spare_devices'"):
        DqnPolicy.load(shuffled)
    resized = _rewrite(good, lambda m: m.update(hidden_sizes=[16, 32]))
    with pytest.raises(ValueError, match="do not match hidden sizes \\[16, 32\\]"):
        DqnPolicy.load(resized)
    old = _rewrite(good, lambda m: m.update(format="fedcore.scale-policy.dqn/0"))
    with pytest.raises(ValueError, match="format 'fedcore.scale-policy.dqn/0' is not supported"):
        DqnPolicy.load(old)
    nan = _rewrite(good, change_state=lambda s: s["layers.0.bias"].fill_(float("nan")))
    with pytest.raises(ValueError, match="non-finite weights"):
        DqnPolicy.load(nan)


def test_files_that_are_not_policies_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no policy file at"):
        DqnPolicy.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ValueError, match="is not a saved scale policy"):
        DqnPolicy.load(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(plain))
    with pytest.raises(ValueError, match="has no 'fedcore.policy' metadata"):
        DqnPolicy.load(plain)


def test_policy_checks_action_names() -> None:
    with pytest.raises(ValueError, match="network has 4 outputs but 2 action names"):
        DqnPolicy(QNetwork(OBSERVATION_SIZE, 4, (4,)), ("hold", "migrate"))


def test_agent_to_policy_copies_the_network() -> None:
    agent = DqnAgent(OBSERVATION_SIZE, 4, DqnConfig(hidden_sizes=(4,)), seed=0)
    policy = agent.to_policy(training={"episodes": 1})
    assert policy.network is not agent.online
    assert policy.training["updates"] == 0 and policy.training["episodes"] == 1
    assert policy.training["config"]["hidden_sizes"] == [4]
    first_weight(agent.online).add_(1.0)
    assert not torch.equal(first_weight(policy.network), first_weight(agent.online))
