"""Episodic environment for training a scale/migrate policy on the simulated cluster (no model training)."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduling.policy.observation import ACTIONS, OBSERVATION_SIZE, ClusterObservation
from scheduling.sim.cluster import (
    Outcome,
    SimCluster,
    Work,
    heterogeneous_consortium,
    training_rate,
)
from scheduling.sim.load import derive_seed
from scheduling.sim.traces import check_seed


def round_progress(examples: float, reference_examples: float) -> float:
    """Statistical progress of one round: ``ln(1 + examples / reference_examples)``.

    Grows with the examples the round's updates were trained on, with diminishing returns.

    >>> round(round_progress(10_000, 10_000), 4)  # ln(2)
    0.6931
    """
    return math.log1p(max(0.0, examples) / reference_examples)


def period_reward(
    progress: float,
    period_s: float,
    deadline_s: float,
    miss_share: float,
    device_share: float,
    device_budget: float,
    miss_weight: float = 1.0,
    overuse_weight: float = 2.0,
) -> tuple[float, float, float, float]:
    """Reward of one decision period and its progress, deadline and resource terms.

    ``reward = progress / period_s * deadline_s - miss_weight * miss_share
    - overuse_weight * max(0, device_share - device_budget)``: progress per deadline's
    worth of virtual time, less the share of rounds that missed the deadline, less the
    devices held beyond the budget the consortium grants the job.

    >>> r = period_reward(3.0, 180.0, 60.0, 1 / 3, 0.75, 0.5)
    >>> [round(x, 4) for x in r]  # 3 / 180 * 60 = 1; 1/3 missed; 0.75 - 0.5 = 0.25 over
    [0.1667, 1.0, 0.3333, 0.25]

    Returns:
        ``(reward, progress term, miss term, overuse term)``, the terms before weighting.
    """
    rate = progress / period_s * deadline_s if period_s > 0 else 0.0
    overuse = max(0.0, device_share - device_budget)
    return rate - miss_weight * miss_share - overuse_weight * overuse, rate, miss_share, overuse


@dataclass
class _Period:
    """What one decision period measured."""

    rounds: int = 0
    seconds: float = 0.0
    progress: float = 0.0
    misses: int = 0
    site_rounds: int = 0
    failures: int = 0
    wait_s: float = 0.0
    last_round_s: float = 0.0


class ScalingEnv:
    """A scale/migrate decision problem on a seeded :class:`~scheduling.sim.cluster.SimCluster`.

    An episode is one consortium (:func:`~scheduling.sim.cluster.heterogeneous_consortium`
    drawn from the episode seed) running a federated job on a subset of its sites. Each
    step applies one action of :data:`~scheduling.policy.observation.ACTIONS`, then runs
    ``rounds_per_period`` rounds: every active site gets ``local_steps`` steps of
    ``examples_per_step`` examples; a round lasts ``round_overhead_s`` plus the slowest
    update (cut at ``2 * deadline_s``, when late updates are dropped; the late site keeps
    its device busy, so its next work queues). Progress is
    :func:`round_progress` of the examples of the updates that arrived; the reward is
    :func:`period_reward`. Episodes are cut after ``periods`` steps
    (``info["truncated"]``).

    Actions: ``hold``; ``scale-up`` adds the idle site with the most free throughput
    (relative throughput times free device share times throttle factor); ``scale-down`` drops the active site
    with the longest predicted round (never below ``min_active``); ``migrate`` moves that
    site to the device of its pool with the most free throughput, if better than its own.
    An action that cannot apply leaves the job as it is (``info["applied"]`` false).

    Args:
        n_sites: Sites in each episode's consortium (default 12).
        periods: Decision periods per episode (default 24).
        rounds_per_period: Rounds per decision period (default 3).
        deadline_s: Round deadline, seconds (default 60.0).
        local_steps: Local steps per site and round (default 100).
        examples_per_step: Batch size (default 32).
        model_bytes: Model (and update) size, bytes (default 4,000,000).
        reference_examples: Examples per round that give ``ln 2`` of progress (default 10,000).
        device_budget: Share of the consortium's sites the job may hold for free (default 0.5).
        miss_weight: Weight of the deadline-miss term (default 1.0).
        overuse_weight: Weight of the over-budget term (default 2.0).
        round_overhead_s: Coordinator time per round (selection, aggregation), seconds (default 5.0).
        min_active: Fewest sites the job keeps (default 1).
        split: ``"train"`` or ``"eval"`` to refuse the other split's seeds
            (:data:`~scheduling.sim.traces.TRAIN_SEEDS`, :data:`~scheduling.sim.traces.EVAL_SEEDS`);
            ``None`` accepts any seed.
        step_s: Integration step of the cluster's load and temperature (default 60.0).
    """

    def __init__(
        self,
        n_sites: int = 12,
        periods: int = 24,
        rounds_per_period: int = 3,
        deadline_s: float = 60.0,
        local_steps: int = 100,
        examples_per_step: int = 32,
        model_bytes: int = 4_000_000,
        reference_examples: float = 10_000.0,
        device_budget: float = 0.5,
        miss_weight: float = 1.0,
        overuse_weight: float = 2.0,
        round_overhead_s: float = 5.0,
        min_active: int = 1,
        split: str | None = None,
        step_s: float = 60.0,
    ) -> None:
        if n_sites < 2 or periods < 1 or rounds_per_period < 1:
            raise ValueError(
                "ScalingEnv needs n_sites >= 2, periods >= 1 and rounds_per_period >= 1; found "
                f"{n_sites}, {periods}, {rounds_per_period}"
            )
        if not 1 <= min_active <= n_sites:
            raise ValueError(f"min_active must be in [1, n_sites={n_sites}]; found {min_active}")
        if deadline_s <= 0 or reference_examples <= 0 or not 0 <= device_budget <= 1:
            raise ValueError(
                "ScalingEnv needs deadline_s > 0, reference_examples > 0 and device_budget in [0, 1]; "
                f"found {deadline_s}, {reference_examples}, {device_budget}"
            )
        if split is not None:
            check_seed(0, split)  # validates the split's name
        self.n_sites = n_sites
        self.periods = periods
        self.rounds_per_period = rounds_per_period
        self.deadline_s = deadline_s
        self.work = Work(
            local_steps, examples_per_step, upload_bytes=model_bytes, download_bytes=model_bytes
        )
        self.reference_examples = reference_examples
        self.device_budget = device_budget
        self.miss_weight = miss_weight
        self.overuse_weight = overuse_weight
        self.round_overhead_s = round_overhead_s
        self.min_active = min_active
        self.split = split
        self.step_s = step_s
        self._cluster: SimCluster | None = None
        self._active: list[str] = []
        self._period_index = 0

    @property
    def observation_size(self) -> int:
        """Length of every observation (:data:`~scheduling.policy.observation.OBSERVATION_SIZE`)."""
        return OBSERVATION_SIZE

    @property
    def num_actions(self) -> int:
        """Number of actions (``len(ACTIONS)``)."""
        return len(ACTIONS)

    @property
    def cluster(self) -> SimCluster:
        """The episode's cluster (after :meth:`reset`)."""
        if self._cluster is None:
            raise RuntimeError("no episode yet: call reset(seed) first")
        return self._cluster

    @property
    def active(self) -> list[str]:
        """Site ids in the job, sorted."""
        return sorted(self._active)

    def reset(self, seed: int) -> np.ndarray:
        """Start the episode of ``seed``: a fresh consortium, a seeded start hour and job, one warm-up period.

        Returns:
            The first observation, ``float32 [OBSERVATION_SIZE]``.

        Raises:
            ValueError: ``seed`` belongs to the other split (when ``split`` is set).
        """
        if self.split is not None:
            check_seed(seed, self.split)
        rng = random.Random(derive_seed("scaling-env", seed, self.n_sites))
        sites = heterogeneous_consortium(self.n_sites, seed)
        self._cluster = SimCluster(
            sites, seed, start_hour=rng.uniform(0.0, 24.0), step_s=self.step_s
        )
        ids = self._cluster.site_ids
        k = max(self.min_active, rng.randint(2, max(2, self.n_sites // 2)))
        self._active = sorted(rng.sample(ids, min(k, len(ids))))
        self._period_index = 0
        return self._observe(self._run_period())

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """Apply ``action``, run one decision period, and score it.

        Returns:
            ``(observation, reward, done, info)``; ``info`` holds ``action``, ``applied``,
            ``note``, the period's ``rounds``, ``virtual_s``, ``progress``, ``misses``,
            ``failures``, the reward terms ``progress_rate``, ``miss_share``, ``overuse``,
            ``active`` (site ids), ``now_s`` and ``truncated``.

        Raises:
            RuntimeError: No episode, or the episode is over.
            ValueError: ``action`` is not an index into ``ACTIONS``.
        """
        cluster = self.cluster
        if self._period_index >= self.periods:
            raise RuntimeError(f"the episode ended after {self.periods} periods; call reset(seed)")
        if not (isinstance(action, (int, np.integer)) and 0 <= int(action) < len(ACTIONS)):
            raise ValueError(
                f"action must be an index in [0, {len(ACTIONS)}) into {ACTIONS}; found {action!r}"
            )
        name = ACTIONS[int(action)]
        applied, note = self._apply(name)
        period = self._run_period()
        self._period_index += 1
        reward, rate, miss, overuse = period_reward(
            period.progress,
            period.seconds,
            self.deadline_s,
            period.misses / period.rounds,
            len(self._active) / self.n_sites,
            self.device_budget,
            self.miss_weight,
            self.overuse_weight,
        )
        done = self._period_index >= self.periods
        info: dict[str, Any] = {
            "action": name,
            "applied": applied,
            "note": note,
            "rounds": period.rounds,
            "virtual_s": period.seconds,
            "progress": period.progress,
            "misses": period.misses,
            "failures": period.failures,
            "progress_rate": rate,
            "miss_share": miss,
            "overuse": overuse,
            "active": self.active,
            "now_s": cluster.now,
            "truncated": done,
        }
        return self._observe(period), reward, done, info

    # -- actions -----------------------------------------------------------------------

    def _free_throughput(self, site_id: str, device: int | None = None) -> float:
        """Relative throughput times free share times throttle factor of a device (default: current)."""
        cluster = self.cluster
        index = cluster.current_device(site_id) if device is None else device
        share = 1.0 - cluster.background_load(site_id, index) / 100.0
        speed = cluster.site(site_id).profiles[index].relative_throughput
        return speed * max(0.0, share) * cluster.throttle(site_id, index)

    def _predicted_s(self, site_id: str) -> float:
        """Round duration predicted from telemetry: transfers plus training at today's load and heat."""
        cluster = self.cluster
        site = cluster.site(site_id)
        rate = training_rate(
            cluster.base_examples_per_s,
            site.profiles[cluster.current_device(site_id)].relative_throughput,
            cluster.background_load(site_id),
            cluster.throttle(site_id),
            cluster.min_share,
        )
        net = (self.work.upload_bytes + self.work.download_bytes) / site.bandwidth_bytes_per_s
        return net + self.work.examples / rate

    def _apply(self, name: str) -> tuple[bool, str]:
        cluster = self.cluster
        if name == "hold":
            return True, "held"
        if name == "scale-up":
            idle = [s for s in cluster.site_ids if s not in self._active]
            if not idle:
                return False, "every site is already in the job"
            best = max(idle, key=lambda s: (self._free_throughput(s), s))
            self._active = sorted([*self._active, best])
            return True, f"added {best}"
        slowest = max(self._active, key=lambda s: (self._predicted_s(s), s))
        if name == "scale-down":
            if len(self._active) <= self.min_active:
                return False, f"the job is at its minimum of {self.min_active} site(s)"
            self._active = [s for s in self._active if s != slowest]
            return True, f"dropped {slowest}"
        current = cluster.current_device(slowest)
        pool = range(len(cluster.site(slowest).devices))
        target = max(pool, key=lambda d: (self._free_throughput(slowest, d), -d))
        if target == current or self._free_throughput(slowest, target) <= self._free_throughput(
            slowest, current
        ):
            return False, f"{slowest} has no faster idle device"
        cluster.migrate(slowest, target)
        return True, f"moved {slowest} to device {target}"

    # -- rounds ------------------------------------------------------------------------

    def _run_period(self) -> _Period:
        cluster = self.cluster
        period = _Period()
        timeout = 2.0 * self.deadline_s
        for _ in range(self.rounds_per_period):
            outcomes: dict[str, Outcome] = cluster.run({s: self.work for s in self._active})
            slowest = max(min(o.duration_s, timeout) for o in outcomes.values())
            arrived = [o for o in outcomes.values() if not o.failed and o.duration_s <= timeout]
            round_s = self.round_overhead_s + slowest
            period.rounds += 1
            period.seconds += round_s
            period.progress += round_progress(
                self.work.examples * len(arrived), self.reference_examples
            )
            period.misses += round_s > self.deadline_s
            period.site_rounds += len(outcomes)
            period.failures += sum(o.failed for o in outcomes.values())
            period.wait_s += sum(o.started_after_s for o in outcomes.values())
            period.last_round_s = round_s
            cluster.advance(round_s)
        return period

    def _observe(self, period: _Period) -> np.ndarray:
        cluster = self.cluster
        active = self._active
        readings = [cluster.telemetry(s) for s in active]
        temps = [
            r["device_temperature_c"]
            / cluster.site(s).profiles[cluster.current_device(s)].throttle_temp_c
            for s, r in zip(active, readings, strict=True)
        ]
        predicted = [self._predicted_s(s) for s in active]
        median = statistics.median(predicted)
        pools = [len(cluster.site(s).devices) for s in active]
        obs = ClusterObservation(
            active_fraction=len(active) / self.n_sites,
            mean_utilization=statistics.fmean(r["device_utilization_percent"] for r in readings)
            / 100.0,
            max_temperature=min(2.0, max(0.0, max(temps))),
            straggler_ratio=min(4.0, max(0.0, max(predicted) / median - 1.0)) / 4.0,
            dropout_rate=period.failures / period.site_rounds if period.site_rounds else 0.0,
            queue=min(1.0, period.wait_s / max(1, period.site_rounds) / self.deadline_s),
            deadline_miss=min(1.0, max(0.0, period.last_round_s / self.deadline_s - 1.0)),
            spare_devices=sum(p - 1 for p in pools) / sum(pools),
        )
        return obs.to_vector()

    def __repr__(self) -> str:
        return (
            f"ScalingEnv(n_sites={self.n_sites}, periods={self.periods}, "
            f"rounds_per_period={self.rounds_per_period}, deadline_s={self.deadline_s}, split={self.split!r})"
        )
