"""Which sites train each round: selection policies, their plugins, allocator, predictor, simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
)

from fedcore.config.base import _Model

SCHEDULER_POLICIES = ("random", "round-robin", "least-loaded", "oort", "fedcore")
"""Participant-selection policies a scenario may name in ``scheduler.policy``."""


class PluginSpec(_Model):
    """One filter or score plugin of the ``fedcore`` scheduler, by registry name."""

    name: str = Field(..., description="plugin name, e.g. health, task-fit, entropy-load")
    weight: float = Field(1.0, ge=0.0, description="score plugins: weight of its 0-100 score")
    params: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="keyword arguments of the plugin"
    )


class AllocatorSpec(_Model):
    """How the ``fedcore`` scheduler sizes each site's local work against a round deadline."""

    deadline_s: float | None = Field(
        None,
        gt=0.0,
        description="round deadline in seconds; unset: the deadline_quantile of the chosen "
        "sites' predicted times at training.local_epochs",
    )
    deadline_quantile: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="quantile of the sites' predicted seconds that sets the automatic deadline",
    )
    margin: float = Field(
        0.3,
        ge=0.0,
        lt=1.0,
        description="work is sized to finish by (1 - margin) x deadline; the rest absorbs "
        "forecast error",
    )
    headroom: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of each site's capacity kept free for its own work"
    )
    min_epochs: int = Field(1, ge=1, description="fewest local epochs a chosen site runs")
    max_epochs: int | None = Field(
        None, ge=1, description="most local epochs (unset: training.local_epochs)"
    )


class PredictorSpec(_Model):
    """The round-duration forecaster of the ``fedcore`` scheduler."""

    kind: Literal["lstm", "ewma", "last-value"] = "lstm"
    model: Path | None = Field(
        None,
        description="a trained LSTM file (relative: to the scenario); unset: EWMA until one is "
        "fitted on this run's own history",
    )
    refit_every: int = Field(
        0, ge=0, description="refit the LSTM on the run's history every N rounds (0: never)"
    )


class ScalingSpec(_Model):
    """The scale/migrate policy of the ``fedcore`` scheduler."""

    policy: Literal["hold", "rules", "dqn"] = "rules"
    period: int = Field(3, ge=1, description="rounds between two scale/migrate decisions")
    model: Path | None = Field(None, description="dqn: trained weights (relative: to the scenario)")


class SchedulerSpec(_Model):
    """Which sites train each round, on which device, and how much."""

    policy: Literal["random", "round-robin", "least-loaded", "oort", "fedcore"] = Field(
        "random", description="participant selection policy"
    )
    fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="share of healthy sites chosen per round"
    )
    min_sites: int = Field(2, ge=1, description="fewest valid replies a round may aggregate")
    short_round: Literal["fail", "skip"] = Field(
        "fail",
        description="a round with fewer than min_sites valid updates: stop the run (fail), or "
        "keep the global model and go on (skip; plaintext and ckks)",
    )
    task_kind: Literal["training", "fine-tuning", "inference"] = Field(
        "training", description="what the sites run; sizes the task-fit filter's needs"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="health limits for the filters, e.g. max_temperature_c: 85",
    )
    filters: list[PluginSpec] = Field(
        default_factory=lambda: [PluginSpec(name="health"), PluginSpec(name="task-fit")],
        description="fedcore: filter plugins, run in order (add device-free where sites "
        "report GPU utilization)",
    )
    scores: list[PluginSpec] = Field(
        default_factory=lambda: [
            PluginSpec(name="entropy-load", weight=0.5),
            PluginSpec(name="staleness", weight=2.0),
            PluginSpec(name="statistical-utility", weight=1.0),
        ],
        description="fedcore: score plugins and their weights",
    )
    allocator: AllocatorSpec = AllocatorSpec()
    predictor: PredictorSpec = PredictorSpec()
    scaling: ScalingSpec = ScalingSpec()


class SimulatorSpec(_Model):
    """Run the consortium on simulated device pools and a virtual clock (in-process engine only).

    Models really train; how long each site takes, whether it waits for its device or
    drops out, and what telemetry it reports come from the trace-driven simulator.
    """

    seed: int = Field(0, description="seed of the simulated loads, heat, noise and failures")
    start_hour: float = Field(9.0, ge=0.0, lt=24.0, description="UTC hour at virtual time 0")
    examples_per_second: float = Field(
        2000.0, gt=0.0, description="training examples per second on an idle, cool A100"
    )
    round_overhead_s: float = Field(
        5.0, ge=0.0, description="virtual seconds of each round's telemetry and evaluation"
    )
    pools: dict[str, list[Literal["h100", "a100", "t4", "mi250", "mi300x", "max1550", "cpu"]]] = (
        Field(
            default_factory=dict,
            description="device pool per site id; unlisted sites get a seeded heterogeneous pool",
        )
    )
