"""The scaling environment: observation shape and range, determinism, actions, reward, seed splits."""

from __future__ import annotations

import numpy as np
import pytest

from scheduling.policy.base import ScalingEnvProtocol
from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE, ClusterObservation
from scheduling.sim.env import ScalingEnv, period_reward, round_progress
from scheduling.sim.traces import EVAL_SEEDS, TRAIN_SEEDS

HOLD, UP, DOWN, MIGRATE = (ACTIONS.index(a) for a in ("hold", "scale-up", "scale-down", "migrate"))
TEMPERATURE = list(ClusterObservation.__dataclass_fields__).index("max_temperature")


def play(env: ScalingEnv, seed: int, actions: list[int]) -> list[tuple[list[float], float, bool]]:
    out = [(env.reset(seed).tolist(), 0.0, False)]
    for a in actions:
        obs, reward, done, _ = env.step(a)
        out.append((obs.tolist(), reward, done))
    return out


def test_shapes_and_protocol() -> None:
    env = ScalingEnv(periods=3)
    assert isinstance(env, ScalingEnvProtocol)
    assert (env.observation_size, env.num_actions) == (OBSERVATION_SIZE, len(ACTIONS))
    obs = env.reset(TRAIN_SEEDS[0])
    assert obs.shape == (OBSERVATION_SIZE,) and obs.dtype == np.float32


@pytest.mark.parametrize("seed", [TRAIN_SEEDS[0], TRAIN_SEEDS[1], EVAL_SEEDS[0]])
def test_observations_stay_in_range(seed: int) -> None:
    env = ScalingEnv(periods=16)
    rng = np.random.default_rng(seed)
    seen = [env.reset(seed)]
    done = False
    while not done:
        obs, reward, done, _ = env.step(int(rng.integers(len(ACTIONS))))
        seen.append(obs)
        assert np.isfinite(reward)
    values = np.stack(seen)
    assert np.isfinite(values).all() and values.min() >= 0.0
    others = np.delete(values, TEMPERATURE, axis=1)
    assert others.max() <= 1.0
    assert (
        values[:, TEMPERATURE].max() <= 2.0
    )  # temperature / throttle point: above 1 when throttling
    assert values[:, TEMPERATURE].min() > 0.2  # devices are never at absolute zero


def test_same_seed_same_episode_and_different_seeds_differ() -> None:
    env = ScalingEnv(periods=6)
    actions = [UP, HOLD, MIGRATE, DOWN, UP, HOLD]
    first = play(env, TRAIN_SEEDS[2], actions)
    assert play(ScalingEnv(periods=6), TRAIN_SEEDS[2], actions) == first
    assert play(env, TRAIN_SEEDS[3], actions) != first


def test_episode_is_cut_after_its_periods() -> None:
    env = ScalingEnv(periods=3)
    with pytest.raises(RuntimeError, match=r"call reset\(seed\) first"):
        env.step(HOLD)
    env.reset(TRAIN_SEEDS[0])
    infos = [env.step(HOLD)[3] for _ in range(3)]
    assert [i["truncated"] for i in infos] == [False, False, True]
    assert all(i["rounds"] == 3 for i in infos)
    with pytest.raises(RuntimeError, match="the episode ended after 3 periods"):
        env.step(HOLD)
    env.reset(TRAIN_SEEDS[0])  # a new episode starts
    env.step(HOLD)


@pytest.mark.parametrize("action", [4, -1, 1.0, "hold"])
def test_bad_action(action: object) -> None:
    env = ScalingEnv(periods=2)
    env.reset(TRAIN_SEEDS[0])
    with pytest.raises(ValueError, match=r"action must be an index in \[0, 4\)"):
        env.step(action)  # type: ignore[arg-type]


def test_splits_refuse_each_others_seeds() -> None:
    with pytest.raises(ValueError, match="is one of the eval seeds"):
        ScalingEnv(split="train").reset(EVAL_SEEDS[0])
    with pytest.raises(ValueError, match="is one of the train seeds"):
        ScalingEnv(split="eval").reset(TRAIN_SEEDS[0])
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        ScalingEnv(split="test")
    ScalingEnv(split="eval", periods=1).reset(EVAL_SEEDS[0])


def test_scale_up_and_down_change_the_job() -> None:
    env = ScalingEnv(n_sites=6, periods=12, min_active=1)
    env.reset(TRAIN_SEEDS[0])
    cluster = env.cluster
    start = env.active
    idle = [s for s in cluster.site_ids if s not in start]
    # scale-up adds the idle site with the most free throughput (speed * free share * throttle)
    free = {
        s: cluster.site(s).profiles[cluster.current_device(s)].relative_throughput
        * (1 - cluster.background_load(s) / 100)
        * cluster.throttle(s)
        for s in idle
    }
    _, _, _, info = env.step(UP)
    best = max(free, key=lambda s: (free[s], s))
    assert info["applied"] and info["note"] == f"added {best}"
    assert env.active == sorted([*start, best])
    sizes = []
    for _ in range(len(env.active) + 1):
        _, _, _, info = env.step(DOWN)
        sizes.append(len(info["active"]))
    assert sizes[-2:] == [1, 1]  # never below min_active
    assert not info["applied"] and "minimum of 1 site" in info["note"]
    assert sizes == sorted(sizes, reverse=True)


def test_scale_up_when_every_site_is_in() -> None:
    env = ScalingEnv(n_sites=3, periods=5)
    env.reset(TRAIN_SEEDS[0])
    while len(env.active) < 3:
        env.step(UP)
    _, _, _, info = env.step(UP)
    assert not info["applied"] and info["note"] == "every site is already in the job"


def test_migrate_moves_a_straggler_to_a_better_device_or_explains() -> None:
    env = ScalingEnv(periods=24)
    env.reset(TRAIN_SEEDS[0])
    moved = 0
    for _ in range(24):
        devices = {s: env.cluster.current_device(s) for s in env.cluster.site_ids}
        _, _, _, info = env.step(MIGRATE)
        after = {s: env.cluster.current_device(s) for s in env.cluster.site_ids}
        changed = [s for s in devices if devices[s] != after[s]]
        if info["applied"]:
            moved += 1
            assert len(changed) == 1 and changed[0] in env.active
            assert info["note"] == f"moved {changed[0]} to device {after[changed[0]]}"
        else:
            assert changed == [] and info["note"].endswith("has no faster idle device")
    assert 1 <= moved < 24


def test_growing_past_the_budget_and_the_deadline_does_not_pay() -> None:
    # every site in: CPU sites miss the 60 s deadline and the job holds 12 / 12 > 0.5
    returns = {}
    for action in (HOLD, UP):
        trajectory = play(ScalingEnv(periods=12), TRAIN_SEEDS[0], [action] * 12)
        returns[action] = sum(r for _, r, _ in trajectory)
    assert returns[UP] < returns[HOLD] - 10.0


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        (0, 0.0),
        (10_000, 0.693147),  # ln 2
        (30_000, 1.386294),  # ln 4: three times the examples, twice the progress
    ],
)
def test_round_progress(examples: float, expected: float) -> None:
    assert round_progress(examples, 10_000.0) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # progress 3 over 180 s with a 60 s deadline: 3 / 180 * 60 = 1; nothing else
        ((3.0, 180.0, 60.0, 0.0, 0.5, 0.5), (1.0, 1.0, 0.0, 0.0)),
        # a third of the rounds missed: 1 - 1/3
        ((3.0, 180.0, 60.0, 1 / 3, 0.5, 0.5), (2 / 3, 1.0, 1 / 3, 0.0)),
        # 0.75 of the sites held, budget 0.5: 1 - 2 * 0.25
        ((3.0, 180.0, 60.0, 0.0, 0.75, 0.5), (0.5, 1.0, 0.0, 0.25)),
        # no time passed: no progress rate
        ((0.0, 0.0, 60.0, 0.0, 0.0, 0.5), (0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_period_reward(args: tuple[float, ...], expected: tuple[float, ...]) -> None:
    assert period_reward(*args) == pytest.approx(expected)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_sites >= 2"):
        ScalingEnv(n_sites=1)
    with pytest.raises(ValueError, match=r"min_active must be in \[1, n_sites=4\]"):
        ScalingEnv(n_sites=4, min_active=5)
    with pytest.raises(ValueError, match="deadline_s > 0"):
        ScalingEnv(deadline_s=0.0)
