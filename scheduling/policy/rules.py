"""Rule-based scale/migrate policy (the baseline the DQN agent is measured against), and always-hold."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from scheduling.policy.base import ScalePolicy, check_observation
from scheduling.policy.observation import ACTIONS, ClusterObservation

HOLD = ACTIONS.index("hold")
SCALE_UP = ACTIONS.index("scale-up")
SCALE_DOWN = ACTIONS.index("scale-down")
MIGRATE = ACTIONS.index("migrate")

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<": operator.lt,
    "<=": operator.le,
}


def _f32(x: float) -> float:
    """``x`` rounded to float32, the precision of an observation vector."""
    return float(np.float32(x))


class Condition(NamedTuple):
    """One comparison of an observation field with a threshold, e.g. ``queue < 0.10``."""

    field: str
    value: float
    op: str
    threshold: float

    @property
    def holds(self) -> bool:
        """Whether ``value op threshold``, at float32 precision (0.95 in a vector counts as 0.95)."""
        return _OPS[self.op](_f32(self.value), _f32(self.threshold))

    def __str__(self) -> str:
        return f"{self.field}={self.value:.2f} {self.op} {self.threshold:.2f}"


@dataclass(frozen=True)
class RulePolicy(ScalePolicy):
    """Threshold rules over a :class:`ClusterObservation`, tried in this order:

    1. **migrate** when ``straggler_ratio >= straggler_high`` and ``spare_devices >
       spare_min``: a site is much slower than the median and its pool has an idle device
       to move its work to (this fixes the straggler without dropping its data).
    2. **scale-down** when any of ``deadline_miss >= deadline_miss_high``,
       ``dropout_rate >= dropout_high``, ``max_temperature >= temperature_high``: the job
       is late, losing sites, or about to throttle.
    3. **scale-up** when ``active_fraction < active_low``, ``deadline_miss <=
       deadline_miss_ok`` and ``queue < queue_low``: the job is small and rounds finish
       on time without waiting. ``deadline_miss`` is clipped at 0, so the queue is the
       measure of slack.
    4. **hold** otherwise.

    Every threshold is in the observation's scaled units (see :class:`ClusterObservation`).

    Args:
        straggler_high: Straggler ratio that calls for migration (default 0.25: the
            slowest site takes 2x the median, since (2 - 1) / 4 = 0.25).
        spare_min: Spare-device share that must be exceeded to migrate (default 0.0:
            at least one idle device).
        deadline_miss_high: Overrun that calls for scaling down (default 0.1: the last
            round took 10% longer than its deadline).
        dropout_high: Share of active sites failing in a period that calls for scaling
            down (default 0.2).
        temperature_high: Hottest device's temperature / its throttle temperature that
            calls for scaling down (default 0.95).
        active_low: Share of available sites in the job below which it may grow
            (default 0.5).
        deadline_miss_ok: Largest overrun that still allows growing (default 0.0: on time).
        queue_low: Wait / deadline below which the job may grow (default 0.1).
    """

    name = "rules"

    straggler_high: float = 0.25
    spare_min: float = 0.0
    deadline_miss_high: float = 0.1
    dropout_high: float = 0.2
    temperature_high: float = 0.95
    active_low: float = 0.5
    deadline_miss_ok: float = 0.0
    queue_low: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 <= float(value) <= 1.0
            ):
                raise ValueError(
                    f"RulePolicy.{f.name} must be a number in [0, 1] (the observation's scaled units); found {value!r}"
                )
        if self.deadline_miss_ok >= self.deadline_miss_high:
            raise ValueError(
                f"RulePolicy.deadline_miss_ok ({self.deadline_miss_ok}) must be below deadline_miss_high "
                f"({self.deadline_miss_high}), or the policy would scale up and down on the same rounds"
            )

    def decide(self, obs: ClusterObservation) -> tuple[int, str]:
        """The action for ``obs`` and the conditions that chose it (pure; no state)."""
        migrate = [
            Condition("straggler_ratio", obs.straggler_ratio, ">=", self.straggler_high),
            Condition("spare_devices", obs.spare_devices, ">", self.spare_min),
        ]
        down = [
            Condition("deadline_miss", obs.deadline_miss, ">=", self.deadline_miss_high),
            Condition("dropout_rate", obs.dropout_rate, ">=", self.dropout_high),
            Condition("max_temperature", obs.max_temperature, ">=", self.temperature_high),
        ]
        up = [
            Condition("active_fraction", obs.active_fraction, "<", self.active_low),
            Condition("deadline_miss", obs.deadline_miss, "<=", self.deadline_miss_ok),
            Condition("queue", obs.queue, "<", self.queue_low),
        ]
        if all(c.holds for c in migrate):
            return MIGRATE, " and ".join(map(str, migrate))
        if any(c.holds for c in down):
            return SCALE_DOWN, ", ".join(str(c) for c in down if c.holds)
        if all(c.holds for c in up):
            return SCALE_UP, " and ".join(map(str, up))
        unmet = [
            f"migrate needs {next(c for c in migrate if not c.holds)}",
            f"scale-down needs one of {' or '.join(map(str, down))}",
            f"scale-up needs {next(c for c in up if not c.holds)}",
        ]
        return HOLD, "no rule fired: " + "; ".join(unmet)

    def act(self, observation: np.ndarray) -> int:
        return self.decide(ClusterObservation.from_vector(check_observation(observation)))[0]

    def explain(self, observation: np.ndarray) -> str:
        action, why = self.decide(ClusterObservation.from_vector(check_observation(observation)))
        return f"{self.name}: {ACTIONS[action]}: {why}"


class HoldPolicy(ScalePolicy):
    """Never changes the job: the do-nothing reference point."""

    name = "hold"

    def act(self, observation: np.ndarray) -> int:
        check_observation(observation)
        return HOLD

    def explain(self, observation: np.ndarray) -> str:
        check_observation(observation)
        return f"{self.name}: hold: this policy always holds"
