"""Rule-based scale/migrate policy (the baseline the DQN agent is measured against), and always-hold."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
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


def migrate_block(
    straggler_ratio: float,
    last_action: int | None,
    last_ratio: float | None,
    blocked_at: float | None,
    gain: float,
) -> float | None:
    """Whether migration stays off, as the straggler ratio it was turned off at (``None``: on).

    A migrate that paid lowers the straggler ratio by at least ``gain`` by the next
    decision. When the last action was a migrate and the ratio fell by less, the move did
    not apply (no faster device in the straggler's own pool, e.g. a CPU-only site) or did
    not help: migration goes off at the current ratio. It stays off while the ratio stays
    within ``gain`` of that value, i.e. while the straggler is the same, and comes back on
    when the ratio moves further (another straggler, or the same one in a new state).
    Compared at float32 precision, that of an observation vector.

    >>> migrate_block(0.50, MIGRATE, 0.50, None, 0.05)  # the migrate changed nothing: off
    0.5
    >>> migrate_block(0.30, MIGRATE, 0.50, None, 0.05) is None  # 0.3 <= 0.5 - 0.05: it paid
    True
    >>> migrate_block(0.52, HOLD, 0.50, 0.50, 0.05)  # |0.52 - 0.5| <= 0.05: still off
    0.5
    >>> migrate_block(0.80, HOLD, 0.52, 0.50, 0.05) is None  # moved by 0.3: on again
    True
    """
    ratio = _f32(straggler_ratio)
    if last_action == MIGRATE and last_ratio is not None and ratio > _f32(last_ratio - gain):
        return straggler_ratio
    if blocked_at is not None and abs(ratio - _f32(blocked_at)) <= _f32(gain):
        return blocked_at
    return None


@dataclass
class _Memory:
    """What :class:`RulePolicy` keeps between decisions of one job."""

    last_action: int | None = None
    last_ratio: float | None = None
    blocked_at: float | None = None
    last_vector: np.ndarray | None = None
    last_why: str = ""


@dataclass(frozen=True)
class RulePolicy(ScalePolicy):
    """Threshold rules over a :class:`ClusterObservation`, tried in this order:

    1. **migrate** when ``straggler_ratio >= straggler_high`` and ``spare_devices >
       spare_min``: a site is much slower than the median and its pool has an idle device
       to move its work to (this fixes the straggler without dropping its data). Unless
       the last migrate did not pay (see :func:`migrate_block`): ``spare_devices`` counts
       the idle devices of every active pool, not the straggler's, so a straggler with no
       faster device of its own (a CPU-only site) would get a migrate that does nothing,
       decision after decision, and starve the rules below.
    2. **scale-down** when any of ``deadline_miss >= deadline_miss_high``,
       ``dropout_rate >= dropout_high``, ``max_temperature >= temperature_high``: the job
       is late, losing sites, or about to throttle.
    3. **scale-up** when ``active_fraction < active_low``, ``deadline_miss <=
       deadline_miss_ok`` and ``queue < queue_low``: the job is small and rounds finish
       on time without waiting. ``deadline_miss`` is clipped at 0, so the queue is the
       measure of slack.
    4. **hold** otherwise.

    Every threshold is in the observation's scaled units (see :class:`ClusterObservation`).

    The policy remembers its last decision (one job at a time; :meth:`reset` before
    another); :meth:`decide` itself is pure, and :meth:`explain` of the observation just
    acted on gives the reason of that action.

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
        migrate_gain: Fall of the straggler ratio by the next decision that shows a
            migrate paid (default 0.05: the slowest site lost a fifth of the median's
            duration, 0.2 / 4); see :func:`migrate_block`.
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
    migrate_gain: float = 0.05
    _memory: _Memory = field(default_factory=_Memory, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not f.init:
                continue
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

    def decide(self, obs: ClusterObservation, migrate_off: float | None = None) -> tuple[int, str]:
        """The action for ``obs`` and the conditions that chose it (pure; no state).

        Args:
            obs: The cluster observation.
            migrate_off: The straggler ratio at which migration went off (rule 1 is
                skipped), or ``None`` (default) when it is on; see :func:`migrate_block`.
        """
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
        skipped = all(c.holds for c in migrate) and migrate_off is not None
        off = (
            f"migrate is off: the last one left straggler_ratio at {migrate_off:.2f} "
            f"(a move that pays lowers it by {self.migrate_gain:.2f})"
            if migrate_off is not None
            else ""
        )
        if all(c.holds for c in migrate) and not skipped:
            return MIGRATE, " and ".join(map(str, migrate))
        note = f" ({off})" if skipped else ""
        if any(c.holds for c in down):
            return SCALE_DOWN, ", ".join(str(c) for c in down if c.holds) + note
        if all(c.holds for c in up):
            return SCALE_UP, " and ".join(map(str, up)) + note
        unmet = [
            off if skipped else f"migrate needs {next(c for c in migrate if not c.holds)}",
            f"scale-down needs one of {' or '.join(map(str, down))}",
            f"scale-up needs {next(c for c in up if not c.holds)}",
        ]
        return HOLD, "no rule fired: " + "; ".join(unmet)

    def act(self, observation: np.ndarray) -> int:
        """The action for ``observation``; remembers it (see :func:`migrate_block`)."""
        vector = check_observation(observation)
        obs = ClusterObservation.from_vector(vector)
        memory = self._memory
        off = self._migrate_off(obs)
        action, why = self.decide(obs, off)
        memory.blocked_at = off
        memory.last_action, memory.last_ratio = action, obs.straggler_ratio
        memory.last_vector, memory.last_why = vector.copy(), why
        return action

    def explain(self, observation: np.ndarray) -> str:
        """Why :meth:`act` chose what it did for ``observation`` (what it would choose, if it has not acted on it)."""
        vector = check_observation(observation)
        memory = self._memory
        if memory.last_vector is not None and np.array_equal(vector, memory.last_vector):
            assert memory.last_action is not None
            action, why = memory.last_action, memory.last_why
        else:
            obs = ClusterObservation.from_vector(vector)
            action, why = self.decide(obs, self._migrate_off(obs))
        return f"{self.name}: {ACTIONS[action]}: {why}"

    def reset(self) -> None:
        """Forget the decisions made so far (before the policy acts for another job)."""
        object.__setattr__(self, "_memory", _Memory())

    def _migrate_off(self, obs: ClusterObservation) -> float | None:
        m = self._memory
        return migrate_block(
            obs.straggler_ratio, m.last_action, m.last_ratio, m.blocked_at, self.migrate_gain
        )


class HoldPolicy(ScalePolicy):
    """Never changes the job: the do-nothing reference point."""

    name = "hold"

    def act(self, observation: np.ndarray) -> int:
        check_observation(observation)
        return HOLD

    def explain(self, observation: np.ndarray) -> str:
        check_observation(observation)
        return f"{self.name}: hold: this policy always holds"
