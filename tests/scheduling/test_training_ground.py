"""Training ground: simulator traces as histories, the LSTM fitted and compared, the DQN trained, evaluated, saved."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scheduling.policy import build_policy
from scheduling.policy.dqn import DqnPolicy
from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE
from scheduling.policy.rules import HoldPolicy, RulePolicy
from scheduling.predictor import EwmaForecaster, LastValueForecaster, LstmForecaster
from scheduling.sim.env import ScalingEnv
from scheduling.sim.traces import EVAL_SEEDS, TRAIN_SEEDS, generate_trace
from scheduling.training_ground import (
    DQN_FILE,
    LSTM_FILE,
    PLANS,
    REPORT_FILE,
    TrainingPlan,
    _Episodes,
    app,
    compare_forecasters,
    dqn_config,
    evaluate_scaling,
    fit_forecaster,
    relative_error_loss,
    save_models,
    trace_histories,
    train_scaling_policy,
)

# a tiny environment: 4 sites, 3 decision periods of 1 round each
TINY_ENV = {"n_sites": 4, "periods": 3, "rounds_per_period": 1}
TINY_LSTM: dict[str, Any] = {"n_sites": 4, "epochs": 2, "hidden": 8}


# -- trace_histories ---------------------------------------------------------------------


def test_histories_follow_the_trace() -> None:
    seed = TRAIN_SEEDS[0]
    records = generate_trace(seed, 4, 3)
    histories = trace_histories([seed], 4, 3)
    assert sorted(histories) == [f"{seed}/bank-0{i}" for i in (1, 2, 3)]
    assert sum(len(h) for h in histories.values()) == len(records)
    for r in records:
        obs = next(o for o in histories[f"{seed}/{r.site_id}"] if o.round == r.round)
        assert obs.time == r.t_s
        assert obs.readings == dict(r.readings)
        # e.g. 50 steps of 64 examples: {"steps": 50, "examples": 3200}
        assert obs.work == {"steps": r.steps, "examples": r.steps * r.examples_per_step}
        assert obs.duration_s == (None if r.failed else r.duration_s)
    for h in histories.values():
        assert [o.round for o in h] == sorted(o.round for o in h)


def test_site_ids_are_unique_per_seed() -> None:
    histories = trace_histories(TRAIN_SEEDS[:2], 6, 3)
    assert len(histories) == 6  # 3 sites x 2 seeds, each site in one of 6 rounds at least
    assert {s.split("/")[0] for s in histories} == {str(TRAIN_SEEDS[0]), str(TRAIN_SEEDS[1])}
    assert all(o.site_id == s for s, h in histories.items() for o in h)


@pytest.mark.parametrize(
    ("seeds", "split", "message"),
    [
        ([EVAL_SEEDS[0]], "train", f"seed {EVAL_SEEDS[0]} is one of the eval seeds"),
        ([TRAIN_SEEDS[0], EVAL_SEEDS[1]], "train", f"seed {EVAL_SEEDS[1]} is one of the eval"),
        ([TRAIN_SEEDS[0]], "eval", f"seed {TRAIN_SEEDS[0]} is one of the train seeds"),
        ([], "train", "at least one seed; found none"),
        ([TRAIN_SEEDS[0]], "test", "split must be 'train' or 'eval'"),
    ],
)
def test_histories_refuse_the_other_split(seeds: list[int], split: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trace_histories(seeds, 2, 3, split=split)


# -- forecaster -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_ratio", "expected"),
    [
        (0.0, 0.0),  # exact forecast
        (math.log(1.1), 0.1),  # 10% over: |1.1 - 1|
        (-math.log(2.0), 0.5),  # half the actual duration: |0.5 - 1|
        (math.log(2.0), 1.0),  # twice the actual duration: |2 - 1|
        (-20.0, 1.0 - math.exp(-20.0)),  # a round that waited long: costs at most 1
        (3.0, math.exp(3.0) - 1.0),  # at the cap: 19.09
        (4.0, 2.0 * math.exp(3.0) - 1.0),  # linear past it: e^3 * (1 + 4 - 3) - 1 = 39.17
    ],
)
def test_relative_error_loss(log_ratio: float, expected: float) -> None:
    # predicted - target = log_ratio / scale, so (predicted - target) * scale = log_ratio
    scale = 0.5
    loss = relative_error_loss(torch.tensor([log_ratio / scale]), torch.tensor([0.0]), scale)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_relative_error_loss_is_a_mean_with_bounded_gradient() -> None:
    predicted = torch.tensor([math.log(2.0), 0.0, 50.0], requires_grad=True)
    loss = relative_error_loss(predicted, torch.zeros(3), 1.0)
    # (1 + 0 + e^3 * (1 + 50 - 3) - 1) / 3
    expected = (1.0 + 0.0 + math.exp(3.0) * 48.0 - 1.0) / 3.0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()  # type: ignore[no-untyped-call]
    assert predicted.grad is not None
    # d/dp of |e^p - 1| / 3 at ln 2 is 2 / 3; past the cap the slope stays e^3 / 3
    assert predicted.grad.tolist() == pytest.approx([2.0 / 3.0, 0.0, math.exp(3.0) / 3.0], rel=1e-4)


@pytest.fixture(scope="module")
def lstm() -> LstmForecaster:
    return fit_forecaster(TRAIN_SEEDS[:1], 15, seed=0, **TINY_LSTM)


def test_fit_and_compare(lstm: LstmForecaster) -> None:
    assert lstm.is_fitted and lstm.window == 1 and lstm.epochs == 2
    assert lstm.train_loss is not None and math.isfinite(lstm.train_loss)
    result = compare_forecasters(
        {"lstm": lstm, "ewma": EwmaForecaster(), "last-value": LastValueForecaster()},
        EVAL_SEEDS[:1],
        rounds=10,
        n_sites=4,
    )
    assert result["eval_seeds"] == [EVAL_SEEDS[0]] and result["sites"] == 4
    rows = result["forecasters"]
    assert list(rows) == ["lstm", "ewma", "last-value"]
    counts = {r["count"] for r in rows.values()}
    assert len(counts) == 1 and counts.pop() > 10  # the same rounds, scored for all three
    for r in rows.values():
        assert math.isfinite(r["mape"]) and r["mape"] > 0
        assert sum(r["sources"].values()) == r["count"]
        assert r["site_mape_median"] <= r["site_mape_max"]
    assert rows["lstm"]["sources"] == {"lstm": rows["lstm"]["count"]}  # window 1: from round 2


def test_fitting_is_seeded(lstm: LstmForecaster) -> None:
    again = fit_forecaster(TRAIN_SEEDS[:1], 15, seed=0, **TINY_LSTM)
    assert again.train_loss == lstm.train_loss


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_forecaster(EVAL_SEEDS[:1], 5), "is one of the eval seeds"),
        (lambda: fit_forecaster(TRAIN_SEEDS[:1], 5, loss="l2"), "loss must be one of"),
        (lambda: fit_forecaster(TRAIN_SEEDS[:1], 1, n_sites=2), "found no training window"),
        (
            lambda: compare_forecasters({"ewma": EwmaForecaster()}, TRAIN_SEEDS[:1], 5),
            "is one of the train seeds",
        ),
        (lambda: compare_forecasters({}, EVAL_SEEDS[:1], 5), "at least one forecaster"),
    ],
)
def test_forecaster_misuse(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_squared_loss_is_the_predictors_own() -> None:
    model = fit_forecaster(TRAIN_SEEDS[:1], 12, loss="squared", **TINY_LSTM)
    assert type(model) is LstmForecaster and model.is_fitted


# -- scale policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_steps", "learning_starts", "epsilon_decay_steps", "target_sync_every"),
    [
        (4800, 480, 2880, 240),  # 200 episodes of 24: 4800 // 10, 0.6 * 4800, 4800 // 20
        (50_000, 1000, 30_000, 500),  # capped at 1000 and 500
        (9, 0, 5, 1),  # 9 // 10 = 0; int(5.4) = 5; 9 // 20 = 0 -> 1
        (1, 0, 1, 1),  # int(0.6) = 0 -> 1
    ],
)
def test_dqn_config(
    total_steps: int, learning_starts: int, epsilon_decay_steps: int, target_sync_every: int
) -> None:
    c = dqn_config(total_steps)
    assert (c.learning_starts, c.epsilon_decay_steps, c.target_sync_every) == (
        learning_starts,
        epsilon_decay_steps,
        target_sync_every,
    )
    assert dqn_config(total_steps, batch_size=8).batch_size == 8
    with pytest.raises(ValueError, match="total_steps must be >= 1; found 0"):
        dqn_config(0)


def test_train_evaluate_save_and_load(lstm: LstmForecaster, tmp_path: Path) -> None:
    seeds = list(TRAIN_SEEDS[:2])
    policy, history = train_scaling_policy(
        seeds, episodes=3, seed=0, config=dqn_config(9, batch_size=4), env_kwargs=TINY_ENV
    )
    assert history.episode_lengths == [3, 3, 3]  # 3 episodes of 3 periods
    assert history.steps == 9 and history.updates > 0
    assert policy.training["train_seeds"] == seeds
    assert policy.training["environment_settings"]["split"] == "train"

    paths = save_models(tmp_path / "models", lstm, policy)
    assert paths == {"lstm": tmp_path / "models" / LSTM_FILE, "dqn": tmp_path / "models" / DQN_FILE}
    loaded = build_policy("dqn", path=paths["dqn"])
    assert isinstance(loaded, DqnPolicy)
    rng = np.random.default_rng(0)
    for obs in rng.random((5, OBSERVATION_SIZE)).astype(np.float32):
        assert loaded.act(obs) == policy.act(obs)
    # the relative-error training saves an ordinary forecaster file
    forecaster = LstmForecaster.load(paths["lstm"])
    assert type(forecaster) is LstmForecaster
    histories = trace_histories(EVAL_SEEDS[:1], 4, 3, split="eval")
    site_history = next(h for h in histories.values() if sum(o.measured for o in h) >= 2)
    last = max(i for i, o in enumerate(site_history) if o.measured)
    args = (site_history[:last], site_history[last].work, site_history[last].readings)
    assert forecaster.predict(*args) == pytest.approx(lstm.predict(*args), rel=1e-6)


def test_evaluate_scaling(tmp_path: Path) -> None:
    seeds = list(EVAL_SEEDS[:2])
    result = evaluate_scaling(
        {"rules": RulePolicy(), "hold": HoldPolicy()}, seeds, env_kwargs=TINY_ENV
    )
    assert result["eval_seeds"] == seeds
    hold, rules = result["policies"]["hold"], result["policies"]["rules"]
    assert hold["action_counts"] == {"hold": 6, "scale-up": 0, "scale-down": 0, "migrate": 0}
    assert hold["not_applied"] == dict.fromkeys(ACTIONS, 0)
    assert len(hold["returns"]) == 2 and hold["mean_return"] == pytest.approx(
        float(np.mean(hold["returns"]))
    )
    assert sum(rules["action_counts"].values()) == 6
    for action, n in rules["not_applied"].items():
        assert 0 <= n <= rules["action_counts"][action]
    json.dumps(result)  # JSON-ready
    again = evaluate_scaling({"hold": HoldPolicy()}, seeds, env_kwargs=TINY_ENV)
    assert again["policies"]["hold"]["returns"] == hold["returns"]  # seeded


def test_training_episodes_cycle_through_the_train_seeds() -> None:
    env = _Episodes(ScalingEnv(split="train", **TINY_ENV), TRAIN_SEEDS[:2])
    drawn = []
    for k in range(3):  # train_dqn resets with seed + k
        env.reset(k)
        drawn.append(env.env.cluster.seed)
    assert drawn == [TRAIN_SEEDS[0], TRAIN_SEEDS[1], TRAIN_SEEDS[0]]


class _Remembering(HoldPolicy):
    """Holds, and counts the resets (a policy with memory is reset for each episode)."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


def test_a_policy_with_memory_is_reset_for_each_episode() -> None:
    policy = _Remembering()
    evaluate_scaling({"p": policy}, EVAL_SEEDS[:3], env_kwargs=TINY_ENV)
    assert policy.resets == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: train_scaling_policy(EVAL_SEEDS[:1], 1), "is one of the eval seeds"),
        (lambda: train_scaling_policy([], 1), "at least one train seed"),
        (lambda: train_scaling_policy(TRAIN_SEEDS[:1], 0), "episodes must be >= 1; found 0"),
        (lambda: evaluate_scaling({"hold": HoldPolicy()}, TRAIN_SEEDS[:1]), "train seeds"),
        (lambda: evaluate_scaling({}, EVAL_SEEDS[:1]), "at least one policy"),
    ],
)
def test_policy_misuse(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


# -- command line ------------------------------------------------------------------------


def test_command_line_writes_models_and_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = TrainingPlan(
        lstm_train_seeds=TRAIN_SEEDS[:1],
        lstm_train_rounds=10,
        lstm_epochs=1,
        lstm_eval_seeds=EVAL_SEEDS[:1],
        lstm_eval_rounds=6,
        dqn_train_seeds=TRAIN_SEEDS[:1],
        dqn_episodes=1,
        dqn_eval_seeds=EVAL_SEEDS[:1],
    )
    monkeypatch.setitem(PLANS, "quick", tiny)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["--out", str(tmp_path / "models"), "--quick"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "MAPE %" in result.output and "mean return" in result.output
    report = json.loads((tmp_path / "models" / REPORT_FILE).read_text())
    assert report["plan"] == "quick"
    pred, scal = report["predictor"], report["scaling"]
    assert pred["train_seeds"] == [TRAIN_SEEDS[0]] and pred["eval_seeds"] == [EVAL_SEEDS[0]]
    assert list(pred["forecasters"]) == ["lstm", "ewma", "last-value"]
    assert list(scal["policies"]) == ["dqn", "rules", "hold"]
    assert scal["training"]["steps"] == 24  # one episode of ScalingEnv's 24 periods
    mapes = {k: v["mape"] for k, v in pred["forecasters"].items()}
    lstm_target = report["targets"]["lstm_mape_percent"]
    assert lstm_target == {"value": mapes["lstm"], "goal": "<= 10", "met": mapes["lstm"] <= 10}
    cut = report["targets"]["lstm_vs_ewma_mape_reduction"]["value"]
    assert cut == pytest.approx(1 - mapes["lstm"] / mapes["ewma"])
    assert isinstance(LstmForecaster.load(tmp_path / "models" / LSTM_FILE), LstmForecaster)
    assert isinstance(build_policy("dqn", path=tmp_path / "models" / DQN_FILE), DqnPolicy)
