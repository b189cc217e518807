"""Training ground: fit the round-duration LSTM and the scale/migrate DQN in the cluster simulator, and measure both against their baselines on held-out seeds.

Models learn only from :data:`~scheduling.sim.traces.TRAIN_SEEDS` and are measured only on
:data:`~scheduling.sim.traces.EVAL_SEEDS`; every entry point refuses a seed of the other
split. The command line trains both, evaluates them, prints a table and writes the figures
and the models a coordinator loads::

    python -m scheduling.training_ground --out scenarios/models [--quick]
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from fedcore.storage import atomic_write_json
from scheduling.history import Observation
from scheduling.policy.base import ScalePolicy, ScalingEnvProtocol
from scheduling.policy.observation import ACTIONS
from scheduling.policy.rules import HoldPolicy, RulePolicy
from scheduling.sim.env import ScalingEnv
from scheduling.sim.traces import EVAL_SEEDS, TRAIN_SEEDS, check_seed, generate_trace

if TYPE_CHECKING:  # torch loads in the functions that train: `--help` stays fast
    import torch

    from scheduling.policy.dqn import DqnConfig, DqnPolicy
    from scheduling.policy.train import TrainingLog
    from scheduling.predictor import Forecaster, LstmForecaster

log = logging.getLogger(__name__)

LSTM_FILE = "duration-lstm.pt"
"""File name of the saved round-duration forecaster in a models folder."""
DQN_FILE = "scaling-dqn.safetensors"
"""File name of the saved scale/migrate policy in a models folder."""
REPORT_FILE = "training.json"
"""File name of the figures the command line writes next to the models."""

LSTM_SETTINGS: dict[str, Any] = {"window": 1, "hidden": 32, "epochs": 40, "lr": 0.01}
"""The forecaster's settings, chosen on validation traces of train seeds (never eval seeds).

Until a site has ``window`` measured rounds the forecaster answers with its EWMA
fallback, and an EWMA answer after a round that waited for a busy device can be hundreds
of times too long. On the validation traces (train seeds 1028-1031, 16 training traces)
the LSTM's own answers scored 8.3 % MAPE with ``window=8`` but all rounds 120 %, because
of those fallback answers; ``window=1`` answers every round after a site's first and
scored 9.6-10 % on all rounds.
"""

RELATIVE_ERROR_CAP = 3.0
"""Log over-prediction above which :func:`relative_error_loss` grows linearly (e^3 = 20x)."""


def trace_histories(
    seeds: Sequence[int], rounds: int, n_sites: int = 20, *, split: str = "train"
) -> dict[str, list[Observation]]:
    """Simulator traces as predictor histories, one per site and seed.

    Each record of :func:`~scheduling.sim.traces.generate_trace` becomes an
    :class:`~scheduling.history.Observation` of site ``f"{seed}/{site_id}"`` with the
    telemetry before its round, work ``{"steps": s, "examples": s * examples_per_step}``
    and its duration (``None`` when the site dropped out).

    Args:
        seeds: Trace seeds.
        rounds: Rounds per trace (>= 1).
        n_sites: Sites per consortium (default 20).
        split: ``"train"`` (default) or ``"eval"``: what the histories are for; a seed of
            the other split is refused.

    Returns:
        Site id -> observations in round order, site ids sorted.

    Raises:
        ValueError: No seeds, a seed of the other split, or ``rounds < 1``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("trace_histories needs at least one seed; found none")
    for seed in seeds:
        check_seed(seed, split)
    out: dict[str, list[Observation]] = {}
    for seed in seeds:
        for r in generate_trace(seed, rounds, n_sites):
            site = f"{seed}/{r.site_id}"
            out.setdefault(site, []).append(
                Observation(
                    site,
                    r.round,
                    r.t_s,
                    dict(r.readings),
                    {"steps": float(r.steps), "examples": float(r.steps * r.examples_per_step)},
                    None if r.failed else r.duration_s,
                )
            )
    return {site: sorted(obs, key=lambda o: o.round) for site, obs in sorted(out.items())}


# -- round-duration forecaster -----------------------------------------------------------


def relative_error_loss(
    predicted: torch.Tensor, target: torch.Tensor, scale: float, cap: float = RELATIVE_ERROR_CAP
) -> torch.Tensor:
    """Mean relative error of duration forecasts made in standardized log space.

    With ``d = (predicted - target) * scale`` (the log ratio of the predicted to the
    actual duration), each term is ``|exp(d) - 1|``, the forecast's absolute percentage
    error / 100, so training minimizes what MAPE scores; past ``d = cap`` it grows linearly
    with the slope it has there, which keeps gradients bounded.

    Unlike the squared log error, it does not chase a round that waited a long time for
    its device: missing it costs at most 1, while predicting such waits for the rounds
    that do not wait costs without bound.

    >>> import torch
    >>> round(float(relative_error_loss(torch.tensor([0.5]), torch.tensor([0.0]), 2 * math.log(2))), 4)
    1.0

    Args:
        predicted: Standardized predictions ``[B]``.
        target: Standardized targets ``[B]``.
        scale: The targets' standard deviation (log seconds per unit of standardized value).
        cap: Log ratio past which the loss is linear.
    """
    import torch

    d = (predicted - target) * scale
    head = torch.exp(torch.clamp(d, max=cap))
    tail = math.exp(cap) * (1.0 + d - cap)
    return torch.where(d > cap, tail - 1.0, (head - 1.0).abs()).mean()


@cache
def _relative_error_lstm() -> type[LstmForecaster]:
    """The :class:`LstmForecaster` subclass fitted with :func:`relative_error_loss` (built on first use)."""
    from scheduling.predictor import LstmForecaster

    class _RelativeErrorLstm(LstmForecaster):
        """An :class:`LstmForecaster` fitted with :func:`relative_error_loss` instead of the squared error.

        Only training differs: saved, it is an ordinary forecaster file that
        :meth:`LstmForecaster.load` reads.
        """

        def _batch_loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return relative_error_loss(predicted, target, self._target_std)

    return _RelativeErrorLstm


def fit_forecaster(
    train_seeds: Sequence[int] = TRAIN_SEEDS[:16],
    rounds: int = 200,
    seed: int = 0,
    *,
    n_sites: int = 20,
    loss: str = "relative",
    **lstm_kwargs: Any,
) -> LstmForecaster:
    """Fit the round-duration LSTM on simulator traces of train seeds.

    Args:
        train_seeds: Trace seeds, all outside :data:`EVAL_SEEDS` (default the first 16
            train seeds).
        rounds: Rounds per trace (default 200).
        seed: Seed of the weights and the batch order (default 0).
        n_sites: Sites per consortium (default 20).
        loss: ``"relative"`` (default: :func:`relative_error_loss`, what MAPE scores) or
            ``"squared"`` (the forecaster's own squared error on the log change).
        **lstm_kwargs: :class:`LstmForecaster` settings over :data:`LSTM_SETTINGS`.

    Returns:
        The fitted forecaster (``save`` it for the coordinator).

    Raises:
        ValueError: An eval seed, an unknown ``loss``, or a bad setting.
    """
    from scheduling.predictor import LstmForecaster

    kinds: dict[str, type[LstmForecaster]] = {
        "relative": _relative_error_lstm(),
        "squared": LstmForecaster,
    }
    if loss not in kinds:
        raise ValueError(f"loss must be one of {', '.join(kinds)}; found {loss!r}")
    histories = trace_histories(train_seeds, rounds, n_sites, split="train")
    forecaster = kinds[loss](**{**LSTM_SETTINGS, "seed": seed, **lstm_kwargs})
    forecaster.fit(histories)
    if not forecaster.is_fitted:
        raise ValueError(
            f"the LSTM found no training window in {len(train_seeds)} trace(s) of {rounds} "
            f"round(s); give it more rounds than its window ({forecaster.window})"
        )
    return forecaster


def compare_forecasters(
    forecasters: Mapping[str, Forecaster],
    eval_seeds: Sequence[int] = EVAL_SEEDS[:4],
    rounds: int = 150,
    *,
    n_sites: int = 20,
    warmup: int = 1,
) -> dict[str, Any]:
    """One-step-ahead MAPE of each forecaster on the same held-out traces.

    Every measured round after a site's first ``warmup`` measured rounds is scored
    (:func:`scheduling.predictor.evaluate`); the forecasters are not refitted.

    Args:
        forecasters: Name -> fitted forecaster, e.g. ``{"lstm": ..., "ewma": ...}``.
        eval_seeds: Trace seeds, all outside :data:`TRAIN_SEEDS` (default the first 4
            eval seeds).
        rounds: Rounds per trace (default 150).
        n_sites: Sites per consortium (default 20).
        warmup: Measured rounds a site has before its rounds are scored (default 1).

    Returns:
        ``eval_seeds``, ``rounds``, ``n_sites``, ``warmup``, ``sites``, and
        ``forecasters``: name -> ``mape`` (percent), ``count`` (rounds scored),
        ``sources`` (what answered -> rounds), ``site_mape_median`` and
        ``site_mape_max`` (over the sites' own MAPEs).

    Raises:
        ValueError: No forecaster, a train seed, or nothing to score.
    """
    from scheduling.predictor import evaluate

    if not forecasters:
        raise ValueError("compare_forecasters needs at least one forecaster; found none")
    histories = trace_histories(eval_seeds, rounds, n_sites, split="eval")
    results: dict[str, Any] = {}
    for name, forecaster in forecasters.items():
        r = evaluate(forecaster, histories, warmup)
        per_site = list(r["per_site"].values())
        results[name] = {
            "mape": r["mape"],
            "count": r["count"],
            "sources": r["sources"],
            "site_mape_median": float(np.median(per_site)),
            "site_mape_max": float(np.max(per_site)),
        }
    return {
        "eval_seeds": list(eval_seeds),
        "rounds": rounds,
        "n_sites": n_sites,
        "warmup": warmup,
        "sites": len(histories),
        "forecasters": results,
    }


# -- scale/migrate policy ------------------------------------------------------------------


class _Episodes:
    """A :class:`ScalingEnv` whose episode ``k`` is drawn from ``seeds[k % len(seeds)]``
    (``k`` itself when ``seeds`` is empty), counting the actions that could not apply and
    calling ``on_reset`` before each episode."""

    def __init__(
        self,
        env: ScalingEnv,
        seeds: Sequence[int] = (),
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.seeds = tuple(seeds)
        self.on_reset = on_reset
        self.not_applied: Counter[str] = Counter()

    @property
    def observation_size(self) -> int:
        return self.env.observation_size

    @property
    def num_actions(self) -> int:
        return self.env.num_actions

    def reset(self, seed: int) -> np.ndarray:
        if self.on_reset is not None:
            self.on_reset()
        return self.env.reset(self.seeds[seed % len(self.seeds)] if self.seeds else seed)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        obs, reward, done, info = self.env.step(action)
        if not info["applied"]:
            self.not_applied[info["action"]] += 1
        return obs, reward, done, info


def _returning(env: ScalingEnvProtocol) -> Callable[[], ScalingEnvProtocol]:
    return lambda: env


def dqn_config(total_steps: int, **overrides: Any) -> DqnConfig:
    """:class:`DqnConfig` scaled to a training run of ``total_steps`` environment steps.

    Learning starts after ``min(1000, total_steps // 10)`` steps, epsilon falls over the
    first 60 % of the run (``int(0.6 * total_steps)``, at least 1), and the target
    network follows every ``min(500, max(1, total_steps // 20))`` gradient steps.

    >>> c = dqn_config(4800)  # 200 episodes of 24 periods
    >>> (c.learning_starts, c.epsilon_decay_steps, c.target_sync_every)
    (480, 2880, 240)

    Raises:
        ValueError: ``total_steps < 1``, or a bad override.
    """
    from scheduling.policy.dqn import DqnConfig

    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; found {total_steps}")
    settings: dict[str, Any] = {
        "learning_starts": min(1000, total_steps // 10),
        "epsilon_decay_steps": max(1, int(0.6 * total_steps)),
        "target_sync_every": min(500, max(1, total_steps // 20)),
    }
    return DqnConfig(**{**settings, **overrides})


def train_scaling_policy(
    train_seeds: Sequence[int] = TRAIN_SEEDS,
    episodes: int = 200,
    seed: int = 0,
    *,
    config: DqnConfig | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> tuple[DqnPolicy, TrainingLog]:
    """Train the DQN scale/migrate policy in :class:`ScalingEnv` on train seeds.

    Episode ``k`` runs the consortium of ``train_seeds[k % len(train_seeds)]``, so the
    agent sees each one in turn, acting differently as it learns.

    Args:
        train_seeds: Episode seeds, all outside :data:`EVAL_SEEDS` (default every train seed).
        episodes: Episodes to train (default 200).
        seed: Seed of the agent (default 0).
        config: Hyper-parameters (default :func:`dqn_config` of the run's steps).
        env_kwargs: :class:`ScalingEnv` settings (default its own).

    Returns:
        The greedy policy (``save`` it for the coordinator) and the per-episode log.

    Raises:
        ValueError: No seeds, an eval seed, or ``episodes < 1``.
    """
    from scheduling.policy.train import train_dqn

    seeds = list(train_seeds)
    if not seeds:
        raise ValueError("train_scaling_policy needs at least one train seed; found none")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; found {episodes}")
    for s in seeds:
        check_seed(s, "train")
    kwargs = {**(env_kwargs or {}), "split": "train"}
    periods = ScalingEnv(**kwargs).periods
    cfg = config or dqn_config(episodes * periods)
    policy, history = train_dqn(
        lambda: _Episodes(ScalingEnv(**kwargs), seeds),
        episodes,
        seed=seed,
        config=cfg,
        max_steps=periods,
    )
    policy.training.update(
        {"train_seeds": seeds, "config": cfg.as_dict(), "environment_settings": dict(kwargs)}
    )
    return policy, history


def evaluate_scaling(
    policies: Mapping[str, ScalePolicy],
    eval_seeds: Sequence[int] = EVAL_SEEDS,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Each policy for one episode per eval seed in :class:`ScalingEnv`: returns and actions.

    A policy with a ``reset()`` method (:class:`RulePolicy` remembers its last decision)
    is reset before each episode, a new job.

    Args:
        policies: Name -> policy, e.g. ``{"dqn": ..., "rules": RulePolicy(), "hold": HoldPolicy()}``.
        eval_seeds: Episode seeds, all outside :data:`TRAIN_SEEDS` (default every eval seed).
        env_kwargs: :class:`ScalingEnv` settings (default its own; use the training's).

    Returns:
        ``eval_seeds`` and ``policies``: name -> ``mean_return``, ``std_return``,
        ``returns`` (per seed), ``mean_length``, ``action_counts`` and ``not_applied``
        (action -> times it could not apply, e.g. a migrate with no faster device).

    Raises:
        ValueError: No policy, no seeds, or a train seed.
    """
    from scheduling.policy.train import evaluate_policy

    if not policies:
        raise ValueError("evaluate_scaling needs at least one policy; found none")
    seeds = list(eval_seeds)
    kwargs = {**(env_kwargs or {}), "split": "eval"}
    for s in seeds:
        check_seed(s, "eval")
    out: dict[str, Any] = {}
    for name, policy in policies.items():
        reset = getattr(policy, "reset", None)
        env = _Episodes(ScalingEnv(**kwargs), on_reset=reset if callable(reset) else None)
        result = evaluate_policy(policy, _returning(env), seeds)
        result["not_applied"] = {a: env.not_applied[a] for a in ACTIONS}
        out[name] = result
    return {"eval_seeds": seeds, "policies": out}


# -- models and the command line -----------------------------------------------------------


def save_models(
    out_dir: str | Path, forecaster: LstmForecaster, policy: DqnPolicy
) -> dict[str, Path]:
    """Write the forecaster to ``out_dir/duration-lstm.pt`` and the policy to ``out_dir/scaling-dqn.safetensors``.

    Returns:
        ``{"lstm": path, "dqn": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"lstm": out / LSTM_FILE, "dqn": out / DQN_FILE}
    forecaster.save(paths["lstm"])
    policy.save(paths["dqn"])
    return paths


@dataclass(frozen=True)
class TrainingPlan:
    """How much the command line trains and evaluates.

    Attributes:
        lstm_train_seeds: Traces the LSTM learns from.
        lstm_train_rounds: Rounds per training trace.
        lstm_epochs: Passes over the training windows.
        lstm_eval_seeds: Held-out traces the forecasters are scored on.
        lstm_eval_rounds: Rounds per held-out trace.
        dqn_train_seeds: Consortia the DQN learns in.
        dqn_episodes: Training episodes.
        dqn_eval_seeds: Held-out consortia the policies are scored in.
    """

    lstm_train_seeds: tuple[int, ...]
    lstm_train_rounds: int
    lstm_epochs: int
    lstm_eval_seeds: tuple[int, ...]
    lstm_eval_rounds: int
    dqn_train_seeds: tuple[int, ...]
    dqn_episodes: int
    dqn_eval_seeds: tuple[int, ...]


PLANS: dict[str, TrainingPlan] = {
    "full": TrainingPlan(
        TRAIN_SEEDS[:16],
        200,
        LSTM_SETTINGS["epochs"],
        EVAL_SEEDS,
        150,
        TRAIN_SEEDS,
        200,
        EVAL_SEEDS,
    ),
    "quick": TrainingPlan(TRAIN_SEEDS[:4], 80, 10, EVAL_SEEDS[:2], 60, TRAIN_SEEDS, 40, EVAL_SEEDS),
}
"""The command line's plans: ``full`` (about 3 minutes on 2 cores) and ``quick`` (under 40 s)."""


def run_training(out_dir: str | Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train both models on train seeds, measure them on eval seeds, save them and the figures.

    Writes ``out_dir/duration-lstm.pt``, ``out_dir/scaling-dqn.safetensors`` and
    ``out_dir/training.json`` (the returned report).

    Args:
        out_dir: The models folder (created if missing).
        quick: Use the ``quick`` plan (a smoke run; its figures mean little).
        seed: Seed of both models.
    """
    from scheduling.predictor import EwmaForecaster, LastValueForecaster

    plan = PLANS["quick" if quick else "full"]
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    log.info(
        "fitting the duration LSTM on %d train traces of %d rounds",
        len(plan.lstm_train_seeds),
        plan.lstm_train_rounds,
    )
    lstm = fit_forecaster(
        plan.lstm_train_seeds, plan.lstm_train_rounds, seed, epochs=plan.lstm_epochs
    )
    seconds["lstm_fit"] = time.perf_counter() - start

    start = time.perf_counter()
    log.info(
        "scoring the forecasters on %d eval traces of %d rounds",
        len(plan.lstm_eval_seeds),
        plan.lstm_eval_rounds,
    )
    ewma, last = EwmaForecaster(), LastValueForecaster()
    predictor = compare_forecasters(
        {"lstm": lstm, "ewma": ewma, "last-value": last},
        plan.lstm_eval_seeds,
        plan.lstm_eval_rounds,
    )
    seconds["lstm_eval"] = time.perf_counter() - start

    start = time.perf_counter()
    dqn, history = train_scaling_policy(plan.dqn_train_seeds, plan.dqn_episodes, seed)
    seconds["dqn_fit"] = time.perf_counter() - start

    start = time.perf_counter()
    log.info("scoring dqn, rules and hold in %d eval episodes", len(plan.dqn_eval_seeds))
    scaling = evaluate_scaling(
        {"dqn": dqn, "rules": RulePolicy(), "hold": HoldPolicy()}, plan.dqn_eval_seeds
    )
    seconds["dqn_eval"] = time.perf_counter() - start

    paths = save_models(out_dir, lstm, dqn)
    mapes = {k: v["mape"] for k, v in predictor["forecasters"].items()}
    cut = 1.0 - mapes["lstm"] / mapes["ewma"] if mapes["ewma"] > 0 else None
    returns = {k: v["mean_return"] for k, v in scaling["policies"].items()}
    report: dict[str, Any] = {
        "plan": "quick" if quick else "full",
        "seed": seed,
        "predictor": {
            "train_seeds": list(plan.lstm_train_seeds),
            "train_rounds": plan.lstm_train_rounds,
            "settings": {**LSTM_SETTINGS, "epochs": plan.lstm_epochs, "loss": "relative"},
            "train_loss": lstm.train_loss,
            **predictor,
        },
        "scaling": {
            "train_seeds": list(plan.dqn_train_seeds),
            "episodes": plan.dqn_episodes,
            "training": {
                "steps": history.steps,
                "updates": history.updates,
                "seconds": history.seconds,
                "mean_return_last_20": history.recent_return(20),
                "episode_returns": history.episode_returns,
            },
            **scaling,
        },
        "targets": {
            "lstm_mape_percent": _target(mapes["lstm"], "<= 10", mapes["lstm"] <= 10.0),
            "lstm_vs_ewma_mape_reduction": _target(
                cut, ">= 0.2 (1 - LSTM / EWMA MAPE)", None if cut is None else cut >= 0.2
            ),
            "dqn_vs_rules_return": _target(
                returns["dqn"] - returns["rules"],
                "> 0 (mean return of the DQN minus the rules')",
                returns["dqn"] > returns["rules"],
            ),
        },
        "models": {k: str(v) for k, v in paths.items()},
        "seconds": seconds,
    }
    atomic_write_json(Path(out_dir) / REPORT_FILE, report)
    return report


def _target(value: float | None, goal: str, met: bool | None) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": met}


def report_table(report: Mapping[str, Any]) -> Table:
    """A rich table of a :func:`run_training` report: forecasters' MAPE, policies' returns."""
    pred, scal = report["predictor"], report["scaling"]
    table = Table(
        title=f"training ground ({report['plan']}): held-out seeds "
        f"{pred['eval_seeds'][0]}..{pred['eval_seeds'][-1]} (predictor), "
        f"{scal['eval_seeds'][0]}..{scal['eval_seeds'][-1]} (policy)"
    )
    for column in ("model", "measure", "value", "detail"):
        table.add_column(column)
    for name, r in pred["forecasters"].items():
        sources = ", ".join(f"{k} {v}" for k, v in r["sources"].items())
        table.add_row(name, "MAPE %", f"{r['mape']:.2f}", f"{r['count']} rounds ({sources})")
    for name, r in scal["policies"].items():
        actions = ", ".join(f"{k} {v}" for k, v in r["action_counts"].items() if v)
        stuck = sum(r["not_applied"].values())
        table.add_row(
            name,
            "mean return",
            f"{r['mean_return']:.2f} ± {r['std_return']:.2f}",
            f"{actions}; {stuck} not applied",
        )
    for name, t in report["targets"].items():
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        table.add_row(name, "target", value, f"{t['goal']}: {'met' if t['met'] else 'NOT met'}")
    return table


app = typer.Typer(
    name="training-ground",
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train the duration LSTM and the scale/migrate DQN in the simulator.",
)


@app.command()
def main(
    out: Annotated[
        Path, typer.Option("--out", help="Models folder to write (created if missing).")
    ],
    quick: Annotated[bool, typer.Option("--quick", help="A smoke run, under 40 s.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of both models.")] = 0,
    threads: Annotated[
        int, typer.Option("--threads", min=1, help="Torch threads (small models gain little).")
    ] = 1,
) -> None:
    """Train the duration LSTM and the scale/migrate DQN on train seeds; measure them on eval seeds."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)
    report = run_training(out, quick, seed)
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(report_table(report))
    console.print(f"wrote {out / REPORT_FILE} and the models: {json.dumps(report['models'])}")


if __name__ == "__main__":
    app()
