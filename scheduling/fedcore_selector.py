"""fedcore's scheduler: filter -> score, forecast each site's round, size its work to a deadline, scale and migrate."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from fedcore.config import SchedulerSpec
from scheduling.allocator import (
    AllocatorConfig,
    SiteForecast,
    allocate,
    deadline_from_predictions,
    usable_share,
)
from scheduling.base import Candidate, Selection, Selector, SiteResult
from scheduling.framework import Pipeline, SchedulingContext
from scheduling.history import TelemetryHistory
from scheduling.plugins import build_filter, build_score
from scheduling.plugins.staleness import ROUNDS_SINCE
from scheduling.plugins.statistical_utility import LAST_LOSS
from scheduling.policy.base import ScalePolicy
from scheduling.policy.observation import ACTIONS, ClusterObservation
from scheduling.predictor import EwmaForecaster, Forecaster
from scheduling.random_selector import sample_size

log = logging.getLogger(__name__)

CENSORED_FACTOR = 1.5
"""A site that missed the deadline is recorded as taking this many deadlines (a lower bound)."""

TIMEOUT_MARKERS = ("deadline", "no reply within")
"""Words of a left-out reason that mean the site ran out of time (simulated or real)."""


def _timed_out(reason: str) -> bool:
    return any(m in reason for m in TIMEOUT_MARKERS)


MAX_DEADLINE_SCALE = 16.0
"""Most the automatic deadline grows after rounds that most chosen sites missed."""

DEFAULT_EPOCH_SECONDS = 1.0
"""Predicted seconds per local epoch of a site nothing is known about (first round)."""


def _clip(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return min(high, max(low, value))


class FedcoreSelector(Selector):
    """Choose sites, their local epochs and devices so that rounds finish together and on time.

    Each round: the filter plugins drop unhealthy or unfit sites (every reason kept);
    the score plugins rank the rest (entropy-weighted load by default); the forecaster
    predicts each site's seconds at the scenario's local epochs from its telemetry
    history; the allocator takes the best-ranked sites up to the job size and gives
    each as many epochs as fit the deadline. Sites keep ``allocator.headroom`` of their
    device free beyond their own load (the instruction carries it, so the measured
    durations the forecasts learn from include it); a site whose load leaves nothing
    after the headroom is left out. Every ``scaling.period`` rounds the scale/migrate policy may grow or
    shrink the job or move the slowest site to another device of its pool.

    Unequal epochs keep the aggregate unbiased only with FedNova-style weights
    (:func:`scheduling.fednova.fednova_weights`); where the aggregation cannot apply
    them (``unequal_work=False``), every chosen site runs the scenario's epochs and the
    allocator only chooses sites.

    Args:
        spec: The scenario's ``scheduler`` section.
        base_epochs: The scenario's ``training.local_epochs``.
        num_sites: Sites in the consortium.
        unequal_work: Whether sites may run different numbers of epochs.
        forecaster: Round-duration forecaster (default: EWMA).
        policy: Scale/migrate policy (default: none, the job size stays put).
        max_deadline_s: The longest the coordinator waits for a site (the scenario's
            ``engine.round_timeout``): no deadline is set beyond it.
    """

    name = "fedcore"

    def __init__(
        self,
        spec: SchedulerSpec,
        *,
        base_epochs: int,
        num_sites: int,
        unequal_work: bool = True,
        forecaster: Forecaster | None = None,
        policy: ScalePolicy | None = None,
        max_deadline_s: float | None = None,
    ) -> None:
        if base_epochs < 1:
            raise ValueError(f"base_epochs must be >= 1; found {base_epochs}")
        self.spec = spec
        self.base_epochs = base_epochs
        self.unequal_work = unequal_work
        self.forecaster: Forecaster = forecaster or EwmaForecaster()
        self.policy = policy
        self.max_deadline_s = max_deadline_s
        self.pipeline = Pipeline(
            [build_filter(f.name, **f.params) for f in spec.filters],
            [(build_score(s.name, **s.params), s.weight) for s in spec.scores],
        )
        self.history = TelemetryHistory()
        self.target_sites = sample_size(num_sites, spec.fraction, spec.min_sites)
        self.devices: dict[str, int] = {}
        self._trained: dict[str, int] = {}  # site -> last round it sent a valid update
        self._losses: dict[str, float] = {}  # site -> its mean train loss that round
        self.deadline_scale = 1.0
        self._last: dict[str, Any] = {}

    # ------------------------------------------------------------------ select

    def _forecast(self, cand: Candidate, epochs: int) -> tuple[float, str]:
        work = {"steps": float(epochs), "examples": float(epochs * max(cand.num_train_examples, 1))}
        try:
            return self.forecaster.predict_with_source(
                self.history.for_site(cand.site_id), work, cand.readings
            )
        except ValueError:  # nothing measured anywhere yet
            return DEFAULT_EPOCH_SECONDS * epochs, "default"

    def _with_history(self, round_: int, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Candidates whose readings also say how many rounds ago each last trained, and its loss then."""
        out = []
        for c in candidates:
            last = self._trained.get(c.site_id)
            extra = {ROUNDS_SINCE: float(round_ - last)} if last is not None else {}
            if c.site_id in self._losses:
                extra[LAST_LOSS] = self._losses[c.site_id]
            out.append(replace(c, readings={**c.readings, **extra}))
        return out

    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        candidates = self._with_history(round_, candidates)
        for c in candidates:
            try:
                self.history.record_telemetry(c.site_id, round_, float(round_), c.readings)
            except ValueError as exc:
                log.warning("round %d: telemetry of %s not kept: %s", round_, c.site_id, exc)
        ctx = SchedulingContext(round_, self.spec.task_kind, dict(self.spec.thresholds))
        result = self.pipeline.run(candidates, ctx)
        rejected = {k: list(v) for k, v in result.rejected.items()}
        scaling = self._scale(round_, result.passed)
        forecasts: list[SiteForecast] = []
        predicted_base: dict[str, float] = {}
        sources: dict[str, str] = {}
        headroom = self.spec.allocator.headroom
        eligible: list[Candidate] = []
        for c in result.passed:
            background = _clip(c.readings.get("background_load_percent", 0.0) / 100.0)
            if usable_share(background, headroom) <= 0.0:
                rejected.setdefault(c.site_id, []).append(
                    f"allocator: background load {100 * background:.0f}% plus headroom "
                    f"{100 * headroom:.0f}% leaves no capacity for this job"
                )
                continue
            eligible.append(c)
            seconds, source = self._forecast(c, self.base_epochs)
            predicted_base[c.site_id], sources[c.site_id] = seconds, source
            # the measured rounds ran with the headroom kept free at the site (RoundConfig),
            # so the forecast already prices it in: the allocator adds no share of its own
            forecasts.append(
                SiteForecast(
                    c.site_id,
                    result.total.get(c.site_id, 0.0),
                    max(seconds / self.base_epochs, 1e-9),
                )
            )
        alloc_spec = self.spec.allocator
        deadline = alloc_spec.deadline_s
        if forecasts and all(src == "default" for src in sources.values()):
            # nothing measured anywhere yet: rank only, everyone runs the scenario's epochs
            # with no deadline, and the first round's measurements seed the forecasts
            return self._first_round(round_, result, eligible, rejected, sources, scaling)
        if deadline is None and predicted_base:
            deadline = deadline_from_predictions(
                list(predicted_base.values()), alloc_spec.deadline_quantile
            )
        if deadline is not None and alloc_spec.deadline_s is None:
            deadline *= self.deadline_scale  # backs off after rounds most sites missed
        if deadline is not None and self.max_deadline_s is not None:
            deadline = min(deadline, self.max_deadline_s)
        config = AllocatorConfig(
            deadline_s=(deadline or 1.0) * (1.0 - alloc_spec.margin),
            base_steps=self.base_epochs,
            headroom=0.0,  # enforced at the sites, priced into the forecasts
            min_steps=alloc_spec.min_epochs if self.unequal_work else self.base_epochs,
            max_steps=(alloc_spec.max_epochs or self.base_epochs)
            if self.unequal_work
            else self.base_epochs,
            max_sites=max(self.target_sites, 1),
            min_sites=min(self.spec.min_sites, len(forecasts)) or 1,
        )
        allocation = allocate(forecasts, config) if forecasts else None
        by_id = {c.site_id: c for c in candidates}
        chosen: list[Candidate] = []
        epochs: dict[str, int] = {}
        predicted: dict[str, float] = {}
        if allocation is not None:
            for a in allocation.chosen:
                chosen.append(by_id[a.site_id])
                epochs[a.site_id] = a.steps
                predicted[a.site_id] = a.predicted_s
            for site, reasons in allocation.excluded.items():
                rejected.setdefault(site, []).extend(f"allocator: {r}" for r in reasons)
        chosen.sort(key=lambda c: c.site_id)
        devices = {c.site_id: self.devices[c.site_id] for c in chosen if c.site_id in self.devices}
        details: dict[str, Any] = {
            "job_size": self.target_sites,
            "forecast": {
                "forecaster": self.forecaster.name,
                "source": sources,
                "seconds_at_base_epochs": {k: round(v, 3) for k, v in predicted_base.items()},
            },
            "plugin_weights": result.weights,
            "plugins": result.details,
        }
        if allocation is not None and allocation.warnings:
            details["allocator_warnings"] = list(allocation.warnings)
        if scaling:
            details["scaling"] = scaling
        self._last = {
            "chosen": [c.site_id for c in chosen],
            "deadline": deadline,
            "passed": len(result.passed),
        }
        return Selection(
            chosen=chosen,
            rejected=rejected,
            scores={k: float(v) for k, v in result.total.items()},
            epochs=epochs,
            devices=devices,
            predicted_s=predicted,
            deadline_s=deadline,
            headroom=alloc_spec.headroom,
            details=details,
        )

    def _first_round(
        self,
        round_: int,
        result: Any,
        eligible: Sequence[Candidate],
        rejected: dict[str, list[str]],
        sources: dict[str, str],
        scaling: dict[str, Any] | None,
    ) -> Selection:
        k = max(min(self.target_sites, len(eligible)), 0)
        chosen = sorted(eligible[:k], key=lambda c: c.site_id)
        for rank, c in enumerate(eligible[k:], start=k + 1):
            rejected.setdefault(c.site_id, []).append(
                f"ranked {rank} by score {result.total.get(c.site_id, 0.0):.1f}; job size {k}"
            )
        deadline = self.spec.allocator.deadline_s  # a fixed deadline holds from the start
        self._last = {"chosen": [c.site_id for c in chosen], "deadline": deadline}
        details: dict[str, Any] = {
            "job_size": self.target_sites,
            "forecast": {"forecaster": self.forecaster.name, "source": sources},
            "note": "no measured round yet: chosen by score, each runs the scenario's epochs",
            "plugin_weights": result.weights,
        }
        if scaling:
            details["scaling"] = scaling
        log.info("round %d: no durations measured yet; choosing by score only", round_)
        return Selection(
            chosen=chosen,
            rejected=rejected,
            scores={k_: float(v) for k_, v in result.total.items()},
            epochs={c.site_id: self.base_epochs for c in chosen},
            deadline_s=deadline,
            headroom=self.spec.allocator.headroom,
            details=details,
        )

    # ------------------------------------------------------------------ scale / migrate

    def observation(self, passed: Sequence[Candidate]) -> ClusterObservation:
        """The cluster state the scale/migrate policy sees, from telemetry and the last round."""
        chosen = [c for c in passed if c.site_id in set(self._last.get("chosen", []))]
        active = chosen or list(passed)
        results: Mapping[str, SiteResult] = self._last.get("results", {})
        utils = [c.readings.get("device_utilization_percent", 0.0) for c in active]
        limit = self.spec.thresholds.get("max_temperature_c", 85.0)
        temps = [c.readings.get("device_temperature_c", 0.0) / limit for c in active]
        done = [r.seconds for r in results.values() if r.seconds is not None]
        deadline = self._last.get("deadline")
        straggler = 0.0
        if len(done) >= 2:
            straggler = _clip(max(done) / max(statistics.median(done), 1e-9) - 1.0, 0.0, 4.0) / 4.0
        devices = [max(c.readings.get("num_devices", 1.0), 1.0) for c in active]
        return ClusterObservation(
            active_fraction=_clip(len(chosen) / max(len(passed), 1)),
            mean_utilization=_clip(sum(utils) / max(len(utils), 1) / 100.0),
            max_temperature=_clip(max(temps, default=0.0), 0.0, 2.0),
            straggler_ratio=straggler,
            dropout_rate=_clip(sum(1 for r in results.values() if r.failed) / max(len(results), 1)),
            queue=0.0,  # work does not queue at a site in this setting
            deadline_miss=_clip(max(done) / deadline - 1.0) if done and deadline else 0.0,
            spare_devices=_clip(sum(d - 1.0 for d in devices) / max(sum(devices), 1.0)),
        )

    def _scale(self, round_: int, passed: Sequence[Candidate]) -> dict[str, Any] | None:
        period = self.spec.scaling.period
        if self.policy is None or round_ <= 1 or (round_ - 1) % period:
            return None
        obs = self.observation(passed)
        action = ACTIONS[self.policy.act(obs.to_vector())]
        why = self.policy.explain(obs.to_vector())
        out: dict[str, Any] = {"action": action, "why": why, "policy": self.policy.name}
        if action == "scale-up":
            self.target_sites = min(self.target_sites + 1, max(len(passed), 1))
        elif action == "scale-down":
            self.target_sites = max(self.target_sites - 1, self.spec.min_sites)
        elif action == "migrate":
            moved = self._migrate(passed)
            out["moved"] = moved or "no site with a spare device"
        out["job_size"] = self.target_sites
        log.info("round %d: %s (%s): %s", round_, action, self.policy.name, why)
        return out

    def _migrate(self, passed: Sequence[Candidate]) -> dict[str, int] | None:
        """Move the slowest last-round site with more than one device to its next device."""
        results: Mapping[str, SiteResult] = self._last.get("results", {})
        pools = {c.site_id: int(c.readings.get("num_devices", 1.0)) for c in passed}
        timed = sorted(
            (
                (r.seconds, s)
                for s, r in results.items()
                if r.seconds is not None and pools.get(s, 1) > 1
            ),
            reverse=True,
        )
        if not timed:
            return None
        site = timed[0][1]
        current = self.devices.get(site, 0)
        self.devices[site] = (current + 1) % pools[site]
        return {site: self.devices[site]}

    # ------------------------------------------------------------------ learn

    def observe(self, round_: int, results: Mapping[str, SiteResult]) -> None:
        deadline = self._last.get("deadline")
        for site, r in results.items():
            try:
                self.history.record_work(
                    site,
                    round_,
                    {
                        "steps": float(r.epochs),
                        "examples": float(r.epochs * max(r.num_examples, 1)),
                    },
                )
                if r.seconds is not None and r.seconds > 0 and r.failed is None:
                    self.history.record_duration(site, round_, r.seconds)
                elif deadline and r.failed is not None and _timed_out(r.failed):
                    # censored: it took longer than the deadline; record a lower bound, or
                    # its forecast never grows and it is chosen, and misses, round after round
                    self.history.record_duration(site, round_, CENSORED_FACTOR * deadline)
            except ValueError as exc:
                log.warning("round %d: result of %s not kept: %s", round_, site, exc)
        self._last["results"] = dict(results)
        failed = sum(1 for r in results.values() if r.failed is not None)
        if results and failed * 2 > len(results):
            # most chosen sites sent nothing (deadline missed, dropped): the forecasts were
            # too short or the sites too busy; give the next rounds twice the time
            self.deadline_scale = min(self.deadline_scale * 2.0, MAX_DEADLINE_SCALE)
            log.warning(
                "round %d: %d of %d chosen sites sent no update; deadline x%.0f from now on",
                round_,
                failed,
                len(results),
                self.deadline_scale,
            )
        elif failed == 0:
            self.deadline_scale = max(1.0, self.deadline_scale / 2.0)
        for site, r in results.items():
            if r.failed is None:
                self._trained[site] = round_
                if r.loss is not None and math.isfinite(r.loss):
                    self._losses[site] = float(r.loss)
        histories = self.history.histories()
        fallback = getattr(self.forecaster, "fallback", None)
        if isinstance(fallback, Forecaster):
            fallback.fit(histories)  # the EWMA fallback's fleet prior: cheap, every round
        every = self.spec.predictor.refit_every
        if self.forecaster.name != "lstm" or (every and round_ % every == 0):
            self.forecaster.fit(histories)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.to_dict(),
            "target_sites": self.target_sites,
            "devices": dict(self.devices),
            "trained": dict(self._trained),
            "losses": dict(self._losses),
            "deadline_scale": self.deadline_scale,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "history" in state:
            self.history = TelemetryHistory.from_dict(state["history"])
        self.target_sites = int(state.get("target_sites", self.target_sites))
        self.devices = {str(k): int(v) for k, v in dict(state.get("devices", {})).items()}
        self._trained = {str(k): int(v) for k, v in dict(state.get("trained", {})).items()}
        self._losses = {str(k): float(v) for k, v in dict(state.get("losses", {})).items()}
        self.deadline_scale = float(state.get("deadline_scale", 1.0))

    def __repr__(self) -> str:
        return (
            f"FedcoreSelector(job_size={self.target_sites}, forecaster={self.forecaster.name}, "
            f"policy={self.policy.name if self.policy else None})"
        )
