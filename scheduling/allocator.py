"""Predictive allocator: which sites train and how many local steps each, so a round ends on time.

The model of a site's device is time sharing. Its capacity is 1.0; the site's own
workloads already use ``background`` of it, and fedcore leaves a further ``headroom``
free for them (default 20%), so fedcore's training gets the *usable share*
``u = max(0, 1 - headroom - background)`` and a local step that would take
``sec_per_step`` seconds on the whole device takes ``sec_per_step / u``. A site with
``u == 0`` is never given work: its own workloads come first.

Each site's step count is the most that fits the round deadline,
``steps = floor((deadline - overhead) * u / sec_per_step)``, clamped to
``[min_steps, max_steps]``, so predicted finish times
``overhead + steps * sec_per_step / u`` line up at the deadline. Sites then run
unequal amounts of local work; aggregate with :mod:`scheduling.fednova` so the
global model stays unbiased.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduling.base import Candidate, Selection

_ROUNDING_SLACK = 1e-9  # steps; absorbs float error such as 0.3 / 0.1 = 2.9999999999999996


def usable_share(background: float, headroom: float) -> float:
    """Share of a device fedcore may use: ``max(0, 1 - headroom - background)``.

    >>> usable_share(0.3, 0.2)
    0.5
    """
    return max(0.0, 1.0 - headroom - background)


def predicted_finish(overhead_s: float, steps: int, sec_per_step: float, usable: float) -> float:
    """Predicted round duration: ``overhead_s + steps * sec_per_step / usable`` (``inf`` if usable <= 0).

    >>> predicted_finish(10.0, 20, 2.0, 0.8)
    60.0
    """
    if usable <= 0.0:
        return math.inf
    return overhead_s + steps * sec_per_step / usable


def steps_within(deadline_s: float, overhead_s: float, sec_per_step: float, usable: float) -> int:
    """Most local steps that finish by the deadline: ``floor((deadline - overhead) * usable / sec_per_step)``.

    Returns 0 when nothing fits (overhead past the deadline, or no usable share).

    >>> steps_within(60.0, 10.0, 2.0, 0.8)
    20
    """
    if usable <= 0.0 or deadline_s <= overhead_s:
        return 0
    return max(0, math.floor((deadline_s - overhead_s) * usable / sec_per_step + _ROUNDING_SLACK))


def deadline_from_predictions(predicted_s: Sequence[float], quantile: float = 0.5) -> float:
    """A round deadline from sites' predicted durations at the scenario's local work.

    Pass each site's :func:`predicted_finish` at ``base_steps``. The deadline is the
    ``quantile`` of those times (numpy's linear interpolation): 0.5, the median, lets
    about half the sites do the full ``base_steps`` while the slower half get fewer
    steps; 1.0 waits for the slowest site, so everyone does ``base_steps``.
    Non-finite predictions (sites without usable share) are ignored.

    >>> deadline_from_predictions([10.0, 20.0, 30.0, 40.0], 0.5)
    25.0

    Raises:
        ValueError: if ``quantile`` is outside [0, 1] or no prediction is finite.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    finite = [float(p) for p in predicted_s if math.isfinite(p)]
    if not finite:
        raise ValueError(
            f"no finite predicted duration among {list(predicted_s)!r}; "
            "predict at least one site's round time before setting a deadline"
        )
    return float(np.quantile(finite, quantile))


@dataclass(frozen=True)
class SiteForecast:
    """What the allocator knows about one candidate site (already filtered and scored).

    Attributes:
        site_id: The site's id.
        score: Composite score in [0, 100]; higher is preferred.
        sec_per_step: Predicted seconds per local step on the whole device (> 0).
        overhead_s: Predicted fixed seconds per round (download, upload), >= 0.
        background: Share of the device the site's own workloads use, in [0, 1].
        failure_prob: Estimated probability that the site fails the round, in [0, 1];
            ``None`` when unknown (treated as 0).
    """

    site_id: str
    score: float
    sec_per_step: float
    overhead_s: float = 0.0
    background: float = 0.0
    failure_prob: float | None = None

    def __post_init__(self) -> None:
        checks = [
            ("score", self.score, 0.0 <= self.score <= 100.0, "in [0, 100]"),
            (
                "sec_per_step",
                self.sec_per_step,
                math.isfinite(self.sec_per_step) and self.sec_per_step > 0.0,
                "finite and > 0",
            ),
            (
                "overhead_s",
                self.overhead_s,
                math.isfinite(self.overhead_s) and self.overhead_s >= 0.0,
                "finite and >= 0",
            ),
            ("background", self.background, 0.0 <= self.background <= 1.0, "in [0, 1]"),
        ]
        if self.failure_prob is not None:
            ok = 0.0 <= self.failure_prob <= 1.0
            checks.append(("failure_prob", self.failure_prob, ok, "in [0, 1] or None"))
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"site {self.site_id!r}: {name} must be {expected}, got {value!r}; "
                    "check the forecaster's output for this site"
                )

    @property
    def expected_score(self) -> float:
        """Ranking key: ``score * (1 - failure_prob)``."""
        return self.score * (1.0 - (self.failure_prob or 0.0))


@dataclass(frozen=True)
class AllocatorConfig:
    """Allocator settings.

    Attributes:
        deadline_s: Round deadline in seconds (> 0); see :func:`deadline_from_predictions`.
        base_steps: The scenario's local work in steps (>= 1).
        headroom: Share of each device kept free for the site's own workloads, in [0, 1).
        min_steps: Fewest local steps worth sending (>= 1).
        max_steps: Most local steps per site; ``None`` means ``base_steps``, so no
            site does more than the scenario asks. Raise it to let fast sites use
            the whole deadline.
        max_sites: Most sites per round; ``None`` means no limit.
        min_sites: Fewest sites per round; when fewer fit the deadline, the least
            late ones are added with ``min_steps`` and flagged as predicted late.
    """

    deadline_s: float
    base_steps: int
    headroom: float = 0.2
    min_steps: int = 1
    max_steps: int | None = None
    max_sites: int | None = None
    min_sites: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0.0):
            problems.append(f"deadline_s must be finite and > 0, got {self.deadline_s!r}")
        if self.base_steps < 1:
            problems.append(f"base_steps must be >= 1, got {self.base_steps!r}")
        if not 0.0 <= self.headroom < 1.0:
            problems.append(f"headroom must be in [0, 1), got {self.headroom!r}")
        if self.min_steps < 1:
            problems.append(f"min_steps must be >= 1, got {self.min_steps!r}")
        if self.step_cap < self.min_steps:
            problems.append(f"max_steps ({self.step_cap}) is below min_steps ({self.min_steps})")
        if self.min_sites < 1:
            problems.append(f"min_sites must be >= 1, got {self.min_sites!r}")
        if self.max_sites is not None and self.max_sites < self.min_sites:
            problems.append(f"max_sites ({self.max_sites}) is below min_sites ({self.min_sites})")
        if problems:
            raise ValueError("invalid allocator config: " + "; ".join(problems))

    @property
    def step_cap(self) -> int:
        """``max_steps``, or ``base_steps`` when unset."""
        return self.base_steps if self.max_steps is None else self.max_steps


@dataclass(frozen=True)
class Assignment:
    """One chosen site's work: ``steps`` local steps, predicted to take ``predicted_s``."""

    site_id: str
    steps: int
    predicted_s: float
    usable_share: float
    score: float
    predicted_late: bool = False


@dataclass(frozen=True)
class Allocation:
    """The allocator's decision: the chosen sites' work, and why every other site is out."""

    deadline_s: float
    headroom: float
    chosen: list[Assignment]
    excluded: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def steps(self) -> dict[str, int]:
        """Local steps per chosen site."""
        return {a.site_id: a.steps for a in self.chosen}

    @property
    def predicted_s(self) -> dict[str, float]:
        """Predicted duration per chosen site."""
        return {a.site_id: a.predicted_s for a in self.chosen}

    @property
    def late(self) -> list[str]:
        """Chosen sites predicted to finish after the deadline."""
        return [a.site_id for a in self.chosen if a.predicted_late]

    @property
    def predicted_round_s(self) -> float:
        """Predicted round duration: the slowest chosen site (0 when none)."""
        return max((a.predicted_s for a in self.chosen), default=0.0)

    def selection(self, candidates: Sequence[Candidate]) -> Selection:
        """The same decision as a :class:`Selection` over the round's candidates."""
        by_id = {c.site_id: c for c in candidates}
        return Selection(
            chosen=[by_id[a.site_id] for a in self.chosen if a.site_id in by_id],
            rejected={k: list(v) for k, v in self.excluded.items()},
            scores={a.site_id: a.score for a in self.chosen},
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for logs and ``summary.json``."""
        return {
            "deadline_s": self.deadline_s,
            "headroom": self.headroom,
            "predicted_round_s": self.predicted_round_s,
            "chosen": {
                a.site_id: {
                    "steps": a.steps,
                    "predicted_s": round(a.predicted_s, 3),
                    "usable_share": round(a.usable_share, 4),
                    "score": a.score,
                    "predicted_late": a.predicted_late,
                }
                for a in self.chosen
            },
            "excluded": {k: list(v) for k, v in self.excluded.items()},
            "warnings": list(self.warnings),
        }


def allocate(sites: Sequence[SiteForecast], config: AllocatorConfig) -> Allocation:
    """Choose the round's sites and each one's local steps.

    1. Sites whose usable share is 0 are excluded (their own workloads need it all).
    2. Each other site gets :func:`steps_within` the deadline, clamped to
       ``[min_steps, max_steps]``; a site that cannot finish ``min_steps`` in time is
       *late*.
    3. Sites that fit are ranked by ``score * (1 - failure_prob)`` (ties: site id)
       and the first ``max_sites`` are chosen.
    4. If fewer than ``min_sites`` were chosen, late sites are added with
       ``min_steps``, earliest predicted finish first, and flagged. If still short,
       a warning says so; the caller decides whether to run the round.

    Args:
        sites: Candidate forecasts, with unique site ids (order does not matter).
        config: Deadline, headroom and limits.

    Returns:
        The :class:`Allocation`, with a reason for every site not chosen.

    Raises:
        ValueError: if a site id appears twice.
    """
    dupes = sorted(i for i, n in Counter(s.site_id for s in sites).items() if n > 1)
    if dupes:
        raise ValueError(
            f"site id(s) given more than once: {', '.join(dupes)}; pass one forecast per site"
        )
    h, deadline = config.headroom, config.deadline_s
    excluded: dict[str, list[str]] = {}
    fits: list[Assignment] = []
    late: list[Assignment] = []
    for s in sorted(sites, key=lambda s: s.site_id):
        u = usable_share(s.background, h)
        if u <= 0.0:
            excluded[s.site_id] = [
                f"no usable share: 1 - headroom {h:g} - background {s.background:g} <= 0"
            ]
            continue
        steps = min(steps_within(deadline, s.overhead_s, s.sec_per_step, u), config.step_cap)
        if steps >= config.min_steps:
            t = predicted_finish(s.overhead_s, steps, s.sec_per_step, u)
            fits.append(Assignment(s.site_id, steps, t, u, s.score))
            continue
        t = predicted_finish(s.overhead_s, config.min_steps, s.sec_per_step, u)
        late.append(Assignment(s.site_id, config.min_steps, t, u, s.score, predicted_late=True))
        excluded[s.site_id] = [
            f"cannot finish min_steps={config.min_steps} by the deadline: "
            f"{s.overhead_s:g} s + {config.min_steps} x {s.sec_per_step:g} s / {u:g} "
            f"= {t:.1f} s > {deadline:g} s"
        ]
    key = {s.site_id: s.expected_score for s in sites}
    fits.sort(key=lambda a: (-key[a.site_id], a.site_id))
    cap = len(fits) if config.max_sites is None else config.max_sites
    chosen = fits[:cap]
    for rank, a in enumerate(fits[cap:], start=cap + 1):
        excluded[a.site_id] = [
            f"ranked {rank} of {len(fits)} by expected score {key[a.site_id]:g}; "
            f"max_sites is {config.max_sites}"
        ]
    late.sort(key=lambda a: (a.predicted_s, -key[a.site_id], a.site_id))
    for a in late[: max(0, config.min_sites - len(chosen))]:
        chosen.append(a)
        del excluded[a.site_id]
    warnings = []
    if len(chosen) < config.min_sites:
        warnings.append(
            f"only {len(chosen)} site(s) can be given work; min_sites is {config.min_sites}"
        )
    if any(a.predicted_late for a in chosen):
        warnings.append(
            f"{sum(a.predicted_late for a in chosen)} site(s) added to reach min_sites="
            f"{config.min_sites} are predicted to finish after the {deadline:g} s deadline"
        )
    return Allocation(float(deadline), h, chosen, excluded, warnings)
