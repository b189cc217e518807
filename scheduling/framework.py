"""Load balancing as a filter -> score pipeline, shaped like the Kubernetes scheduler framework.

Filter plugins reject sites that cannot take the round, each reporting *every* reason;
score plugins rank the sites left, each score normalized once to an integer in [0, 100];
the weighted mean of the normalized scores orders the sites. Every decision keeps its reasons
(:meth:`PipelineResult.as_dict` is the ``schedule`` entry of ``summary.json``).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from scheduling.base import Candidate, Selection, by_site_id

log = logging.getLogger(__name__)

TaskKind = Literal["training", "fine-tuning", "inference"]
"""What the chosen sites will run this round."""

TASK_KINDS: tuple[str, ...] = get_args(TaskKind)

MAX_SCORE = 100
"""Normalized scores and weighted totals lie in [0, MAX_SCORE]."""


@dataclass(frozen=True)
class SchedulingContext:
    """What every plugin knows about the round being scheduled.

    Attributes:
        round: Round number (1-based in the round driver; 0 is allowed for dry runs).
        task: ``"training"``, ``"fine-tuning"`` or ``"inference"``.
        thresholds: Scenario-wide limits by name (e.g. ``max_temperature_c``), read by every
            plugin that needs them; a plugin's own argument of the same name wins over them.
    """

    round: int
    task: TaskKind = "training"
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ValueError(f"round must be >= 0; found {self.round!r}")
        if self.task not in TASK_KINDS:
            raise ValueError(
                f"unknown task kind {self.task!r}; expected one of: {', '.join(TASK_KINDS)}"
            )
        for key, value in self.thresholds.items():
            if not math.isfinite(value):
                raise ValueError(f"threshold {key!r} must be a finite number; found {value!r}")
        object.__setattr__(self, "thresholds", dict(self.thresholds))  # never share the caller's

    def threshold(self, name: str, default: float) -> float:
        """The scenario's threshold ``name``, or ``default`` when the scenario sets none."""
        return float(self.thresholds.get(name, default))


@dataclass(frozen=True)
class FilterStatus:
    """A filter's verdict on one site: every reason it fails; no reasons = it passes."""

    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the site passed the filter."""
        return not self.reasons


class FilterPlugin(ABC):
    """Rejects sites that cannot run the round (Kubernetes ``Filter`` extension point)."""

    name: str = "abstract"

    @abstractmethod
    def filter(self, candidate: Candidate, ctx: SchedulingContext) -> FilterStatus:
        """Check one site; return *all* reasons it fails, each quoting the values compared."""


class ScorePlugin(ABC):
    """Ranks the sites that passed the filters (Kubernetes ``Score`` + ``NormalizeScore``)."""

    name: str = "abstract"

    @abstractmethod
    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        """Raw score per site id (any scale, higher = better), one for every candidate."""

    def normalize(self, raw: Mapping[str, float]) -> dict[str, int]:
        """Map raw scores to integers in [0, 100]; by default :func:`min_max_normalize`."""
        return min_max_normalize(raw)

    def explain(self) -> dict[str, object]:
        """JSON-ready details of the last :meth:`score` call for the log (e.g. weights)."""
        return {}


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def min_max_normalize(raw: Mapping[str, float]) -> dict[str, int]:
    """Min-max normalize raw scores to integers in [0, 100]: best = 100, worst = 0.

    ``round_half_up(100 * (s - min) / (max - min))``; when all scores are equal (or there is
    one) every site gets 100.

    >>> min_max_normalize({"a": 2.0, "b": 4.0, "c": 3.0})
    {'a': 0, 'b': 100, 'c': 50}
    """
    _check_finite(raw)
    if not raw:
        return {}
    lo, hi = min(raw.values()), max(raw.values())
    if hi == lo:
        return {site: MAX_SCORE for site in raw}
    return {site: _round_half_up(MAX_SCORE * (s - lo) / (hi - lo)) for site, s in raw.items()}


def clip_normalize(raw: Mapping[str, float]) -> dict[str, int]:
    """For raw scores already on an absolute [0, 100] scale: round half up and clip, no stretch.

    >>> clip_normalize({"a": 42.5, "b": 101.0, "c": -3.0})
    {'a': 43, 'b': 100, 'c': 0}
    """
    _check_finite(raw)
    return {site: min(MAX_SCORE, max(0, _round_half_up(s))) for site, s in raw.items()}


def _check_finite(raw: Mapping[str, float]) -> None:
    bad = {site: s for site, s in raw.items() if not math.isfinite(s)}
    if bad:
        raise ValueError(f"expected finite raw scores; found {bad!r}")


@dataclass(frozen=True)
class PipelineResult:
    """One round's scheduling decision with all its reasons.

    Attributes:
        round: The round scheduled.
        task: The task kind scheduled.
        passed: Sites that passed every filter, best weighted total first (ties by site id).
        rejected: Site id -> every reason from every filter, each prefixed ``"<plugin>: "``.
        plugin_scores: Score plugin name -> site id -> normalized score in [0, 100].
        weights: Score plugin name -> its weight.
        total: Site id -> weighted mean of its normalized scores, in [0, 100].
        details: Score plugin name -> :meth:`ScorePlugin.explain` of this round.
    """

    round: int
    task: str
    passed: list[Candidate]
    rejected: dict[str, list[str]]
    plugin_scores: dict[str, dict[str, int]]
    weights: dict[str, float]
    total: dict[str, float]
    details: dict[str, dict[str, object]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, the ``schedule`` entry of a round in ``summary.json``."""
        return {
            "round": self.round,
            "task": self.task,
            "passed": [c.site_id for c in self.passed],
            "rejected": {k: list(v) for k, v in self.rejected.items()},
            "scores": {k: round(v, 4) for k, v in self.total.items()},
            "plugin_scores": {k: dict(v) for k, v in self.plugin_scores.items()},
            "weights": dict(self.weights),
            "details": {k: dict(v) for k, v in self.details.items()},
        }

    def to_selection(self, limit: int | None = None) -> Selection:
        """The best ``limit`` passed sites (all when ``None``) as a :class:`Selection`.

        Sites beyond ``limit`` are rejected with the reason that they ranked lower.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None; found {limit!r}")
        cut = len(self.passed) if limit is None else limit
        rejected = {k: list(v) for k, v in self.rejected.items()}
        for rank, c in enumerate(self.passed[cut:], start=cut + 1):
            rejected[c.site_id] = [
                f"ranked {rank} with score {self.total[c.site_id]:.1f}; only {cut} site(s) taken"
            ]
        return Selection(chosen=list(self.passed[:cut]), rejected=rejected, scores=dict(self.total))


class Pipeline:
    """Filter, score, normalize, weigh: the load-balancing decision of one round.

    Args:
        filters: Filter plugins, run in order on every site (all of them, so that every
            reason is reported).
        scores: ``(plugin, weight)`` pairs; weights are finite and > 0, names unique.
    """

    def __init__(
        self,
        filters: Sequence[FilterPlugin],
        scores: Sequence[tuple[ScorePlugin, float]],
    ) -> None:
        names = [f.name for f in filters] + [p.name for p, _ in scores]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"plugin names must be unique in a pipeline; found {', '.join(dupes)} twice; "
                "list each plugin once"
            )
        for plugin, weight in scores:
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"score plugin {plugin.name!r}: weight must be a finite number > 0; "
                    f"found {weight!r}; drop the plugin instead of weighting it 0"
                )
        self.filters = list(filters)
        self.scores = [(p, float(w)) for p, w in scores]

    def run(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> PipelineResult:
        """Filter and rank ``candidates`` for the round described by ``ctx``.

        Raises:
            ValueError: On duplicate site ids, or on a score plugin that returns scores for
                other sites than those passed to it, or normalized scores outside [0, 100].
        """
        ordered = by_site_id(candidates)
        rejected: dict[str, list[str]] = {}
        for cand in ordered:
            reasons = [
                f"{f.name}: {reason}"
                for f in self.filters
                for reason in f.filter(cand, ctx).reasons
            ]
            if reasons:
                rejected[cand.site_id] = reasons
        passed = [c for c in ordered if c.site_id not in rejected]
        plugin_scores: dict[str, dict[str, int]] = {}
        details: dict[str, dict[str, object]] = {}
        if passed:
            for plugin, _ in self.scores:
                plugin_scores[plugin.name] = self._scored(plugin, passed, ctx)
                details[plugin.name] = plugin.explain()
        total = {c.site_id: self._total(c.site_id, plugin_scores) for c in passed}
        passed.sort(key=lambda c: (-total[c.site_id], c.site_id))
        result = PipelineResult(
            round=ctx.round,
            task=ctx.task,
            passed=passed,
            rejected=rejected,
            plugin_scores=plugin_scores,
            weights={p.name: w for p, w in self.scores},
            total=total,
            details=details,
        )
        self._log(result)
        return result

    def _scored(
        self, plugin: ScorePlugin, passed: list[Candidate], ctx: SchedulingContext
    ) -> dict[str, int]:
        expected = {c.site_id for c in passed}
        raw = plugin.score(passed, ctx)
        if set(raw) != expected:
            raise ValueError(
                f"score plugin {plugin.name!r} must score exactly the sites passed to it; "
                f"missing {sorted(expected - set(raw))}, extra {sorted(set(raw) - expected)}"
            )
        norm = plugin.normalize(raw)
        bad = {k: v for k, v in norm.items() if not 0 <= v <= MAX_SCORE}
        if set(norm) != expected or bad:
            raise ValueError(
                f"score plugin {plugin.name!r}: normalize must map every site to [0, 100]; "
                f"found {bad or norm!r}"
            )
        return norm

    def _total(self, site_id: str, plugin_scores: dict[str, dict[str, int]]) -> float:
        if not self.scores:
            return 0.0
        weighted = sum(w * plugin_scores[p.name][site_id] for p, w in self.scores)
        return weighted / sum(w for _, w in self.scores)

    @staticmethod
    def _log(result: PipelineResult) -> None:
        log.info(
            "round %d (%s): %d site(s) passed, ranked %s",
            result.round,
            result.task,
            len(result.passed),
            ", ".join(f"{c.site_id}={result.total[c.site_id]:.1f}" for c in result.passed) or "-",
        )
        for site, reasons in result.rejected.items():
            log.info("round %d: site %s rejected: %s", result.round, site, "; ".join(reasons))
        for name, detail in result.details.items():
            if detail:
                log.debug("round %d: score %s: %s", result.round, name, detail)

    def __repr__(self) -> str:
        filters = ", ".join(f.name for f in self.filters)
        scores = ", ".join(f"{p.name}*{w:g}" for p, w in self.scores)
        return f"Pipeline(filters=[{filters}], scores=[{scores}])"
