"""Selectors by name, as a scenario's ``scheduler.policy`` names them."""

from __future__ import annotations

from collections.abc import Callable

from fedcore.config import Scenario
from scheduling.base import Selector
from scheduling.random_selector import RandomSelector

_REGISTRY: dict[str, Callable[[Scenario], Selector]] = {
    "random": lambda s: RandomSelector(s.scheduler.fraction, s.scheduler.min_sites, s.seed),
}


def build_selector(scenario: Scenario) -> Selector:
    """Build the selector a scenario asks for (``ValueError`` listing valid names otherwise)."""
    policy = scenario.scheduler.policy
    try:
        factory = _REGISTRY[policy]
    except KeyError:
        raise ValueError(
            f"unknown scheduler policy {policy!r}; valid: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(scenario)
