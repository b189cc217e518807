"""Selectors by name, as a scenario's ``scheduler.policy`` names them."""

from __future__ import annotations

from collections.abc import Callable

from fedcore.config import SCHEDULER_POLICIES, Scenario
from scheduling.base import Selector
from scheduling.random_selector import RandomSelector


def _fedcore(s: Scenario) -> Selector:
    from scheduling.fedcore_selector import FedcoreSelector
    from scheduling.policy import build_policy
    from scheduling.predictor import (
        EwmaForecaster,
        Forecaster,
        LastValueForecaster,
        LstmForecaster,
    )

    spec = s.scheduler
    forecaster: Forecaster
    if spec.predictor.kind == "lstm":
        if spec.predictor.model is not None:
            if not spec.predictor.model.is_file():
                raise ValueError(
                    f"scheduler.predictor.model: no file {spec.predictor.model}; train one with "
                    "benchmarks/scheduling.py --save-models, or unset it to fit on the run's history"
                )
            forecaster = LstmForecaster.load(spec.predictor.model)
        else:
            forecaster = LstmForecaster()
    elif spec.predictor.kind == "ewma":
        forecaster = EwmaForecaster()
    else:
        forecaster = LastValueForecaster()
    params = {}
    if spec.scaling.policy == "dqn":
        if spec.scaling.model is None or not spec.scaling.model.is_file():
            raise ValueError(
                f"scheduler.scaling.policy is dqn but scheduler.scaling.model "
                f"({spec.scaling.model}) is not a file; train one in the simulator first"
            )
        params["path"] = spec.scaling.model
    policy = None if spec.scaling.policy == "hold" else build_policy(spec.scaling.policy, **params)
    # unequal local work stays unbiased through FedNova weights, which every weighted
    # aggregation applies; SecAgg+ weighs by examples at the site and DP by 1: equal work
    unequal = s.privacy.mode in ("plaintext", "ckks") and s.privacy.dp is None
    return FedcoreSelector(
        spec,
        base_epochs=s.training.local_epochs,
        num_sites=len(s.sites),
        unequal_work=unequal,
        forecaster=forecaster,
        policy=policy,
        max_deadline_s=s.engine.round_timeout,
    )


def _round_robin(s: Scenario) -> Selector:
    from scheduling.round_robin import RoundRobinSelector

    return RoundRobinSelector(s.scheduler.fraction, s.scheduler.min_sites)


def _least_loaded(s: Scenario) -> Selector:
    from scheduling.least_loaded_selector import LeastLoadedSelector

    return LeastLoadedSelector(s.scheduler.fraction, s.scheduler.min_sites)


def _oort(s: Scenario) -> Selector:
    from scheduling.oort import OortSelector

    return OortSelector(s.scheduler.fraction, s.scheduler.min_sites, seed=s.seed)


_REGISTRY: dict[str, Callable[[Scenario], Selector]] = {
    "random": lambda s: RandomSelector(s.scheduler.fraction, s.scheduler.min_sites, s.seed),
    "round-robin": _round_robin,
    "least-loaded": _least_loaded,
    "oort": _oort,
    "fedcore": _fedcore,
}
assert set(_REGISTRY) == set(SCHEDULER_POLICIES)


def build_selector(scenario: Scenario) -> Selector:
    """Build the selector a scenario asks for (``ValueError`` listing valid names otherwise)."""
    policy = scenario.scheduler.policy
    try:
        factory = _REGISTRY[policy]
    except KeyError:
        raise ValueError(
            f"unknown scheduler policy {policy!r}; valid: {', '.join(sorted(_REGISTRY))}"
        ) from None
    try:
        return factory(scenario)
    except (TypeError, AttributeError, KeyError) as exc:  # a plugin's parameters do not fit
        raise ValueError(f"scheduler.{policy}: {type(exc).__name__}: {exc}") from None
