"""Filter and score plugins by name, as a scenario names them (with their parameters)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from scheduling.framework import FilterPlugin, ScorePlugin
from scheduling.plugins.device_free import DeviceFreeFilter
from scheduling.plugins.entropy_load import EntropyLoadScore
from scheduling.plugins.health import HealthFilter
from scheduling.plugins.least_loaded import LeastLoadedScore
from scheduling.plugins.staleness import StalenessScore
from scheduling.plugins.statistical_utility import StatisticalUtilityScore
from scheduling.plugins.task_fit import TaskFitFilter
from scheduling.plugins.throughput import ThroughputScore

__all__ = [
    "DeviceFreeFilter",
    "EntropyLoadScore",
    "HealthFilter",
    "LeastLoadedScore",
    "TaskFitFilter",
    "ThroughputScore",
    "build_filter",
    "build_score",
    "filter_names",
    "StalenessScore",
    "StatisticalUtilityScore",
    "register_filter",
    "register_score",
    "score_names",
]

_FILTERS: dict[str, Callable[..., FilterPlugin]] = {
    DeviceFreeFilter.name: DeviceFreeFilter,
    HealthFilter.name: HealthFilter,
    TaskFitFilter.name: TaskFitFilter,
}
_SCORES: dict[str, Callable[..., ScorePlugin]] = {
    EntropyLoadScore.name: EntropyLoadScore,
    LeastLoadedScore.name: LeastLoadedScore,
    StalenessScore.name: StalenessScore,
    StatisticalUtilityScore.name: StatisticalUtilityScore,
    ThroughputScore.name: ThroughputScore,
}

P = TypeVar("P")


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")  # "task_fit" and "task-fit" are one plugin


def _build(
    kind: str, registry: Mapping[str, Callable[..., P]], name: str, params: dict[str, Any]
) -> P:
    key = _canonical(name)
    if key not in registry:
        raise ValueError(f"unknown {kind} plugin {name!r}; valid: {', '.join(sorted(registry))}")
    factory = registry[key]
    signature = inspect.signature(factory)
    try:
        signature.bind(**params)
    except TypeError as err:
        valid = ", ".join(signature.parameters) or "none"
        raise ValueError(
            f"{kind} plugin {key!r}: bad parameters {sorted(params)} ({err}); valid: {valid}"
        ) from None
    return factory(**params)


def build_filter(name: str, **params: Any) -> FilterPlugin:
    """Build the filter plugin ``name`` with ``params``.

    Raises:
        ValueError: On an unknown name (listing the valid ones) or parameters the plugin
            does not take (listing the ones it does), or a bad parameter value.
    """
    return _build("filter", _FILTERS, name, params)


def build_score(name: str, **params: Any) -> ScorePlugin:
    """Build the score plugin ``name`` with ``params`` (errors as :func:`build_filter`)."""
    return _build("score", _SCORES, name, params)


def filter_names() -> list[str]:
    """Registered filter plugin names, sorted."""
    return sorted(_FILTERS)


def score_names() -> list[str]:
    """Registered score plugin names, sorted."""
    return sorted(_SCORES)


def _register(
    kind: str, registry: dict[str, Callable[..., P]], name: str, factory: Callable[..., P]
) -> None:
    key = _canonical(name)
    if key in registry:
        raise ValueError(f"{kind} plugin {key!r} is already registered; choose another name")
    registry[key] = factory


def register_filter(name: str, factory: Callable[..., FilterPlugin]) -> None:
    """Make a filter plugin buildable by ``name`` (``ValueError`` if the name is taken)."""
    _register("filter", _FILTERS, name, factory)


def register_score(name: str, factory: Callable[..., ScorePlugin]) -> None:
    """Make a score plugin buildable by ``name`` (``ValueError`` if the name is taken)."""
    _register("score", _SCORES, name, factory)
