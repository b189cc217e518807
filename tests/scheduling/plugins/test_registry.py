"""Plugins by name: building, aliases, errors that list the valid names and parameters."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import scheduling.plugins as plugins
from scheduling.base import Candidate
from scheduling.framework import SchedulingContext, ScorePlugin
from scheduling.plugins import (
    EntropyLoadScore,
    HealthFilter,
    LeastLoadedScore,
    TaskFitFilter,
    ThroughputScore,
    build_filter,
    build_score,
    filter_names,
    register_score,
    score_names,
)


def test_names() -> None:
    assert filter_names() == ["device-free", "health", "task-fit"]
    assert score_names() == [
        "entropy-load",
        "least-loaded",
        "staleness",
        "statistical-utility",
        "throughput",
    ]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("health", HealthFilter), ("task-fit", TaskFitFilter), ("task_fit", TaskFitFilter)],
)
def test_build_filter(name: str, cls: type) -> None:
    assert type(build_filter(name)) is cls


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("entropy-load", EntropyLoadScore),
        ("least_loaded", LeastLoadedScore),
        ("throughput", ThroughputScore),
    ],
)
def test_build_score(name: str, cls: type) -> None:
    assert type(build_score(name)) is cls


def test_parameters_reach_the_plugin() -> None:
    health = build_filter("health", max_temperature_c=80.0)
    assert isinstance(health, HealthFilter) and health.max_temperature_c == 80.0
    fit = build_filter("task-fit", allow_cpu=True, min_free_memory_mib={"training": 1024.0})
    assert (
        isinstance(fit, TaskFitFilter)
        and fit.allow_cpu
        and fit.min_free_memory_mib["training"] == 1024.0
    )


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown filter plugin 'thermal'; valid: device-free, health, task-fit"
    ):
        build_filter("thermal")
    with pytest.raises(
        ValueError,
        match="unknown score plugin 'fastest'; valid: entropy-load, least-loaded, staleness, "
        "statistical-utility, throughput",
    ):
        build_score("fastest")


def test_bad_parameters_list_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"filter plugin 'health': bad parameters \['max_temp'\] .*; valid: max_temperature_c, max_power_fraction, min_free_memory_mib",
    ):
        build_filter("health", max_temp=80.0)
    with pytest.raises(ValueError, match="health: max_temperature_c must be a finite number > 0"):
        build_filter("health", max_temperature_c=-3.0)


def test_register_score(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "_SCORES", dict(plugins._SCORES))  # leave the registry as it was

    class Oldest(ScorePlugin):
        name = "oldest"

        def score(
            self, candidates: Sequence[Candidate], ctx: SchedulingContext
        ) -> dict[str, float]:
            return {c.site_id: float(c.num_train_examples) for c in candidates}

    register_score("oldest", Oldest)
    assert type(build_score("oldest")) is Oldest
    assert "oldest" in score_names()
    with pytest.raises(ValueError, match="score plugin 'throughput' is already registered"):
        register_score("throughput", Oldest)
