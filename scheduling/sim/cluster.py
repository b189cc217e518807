"""A seeded cluster of sites with heterogeneous device pools, run on a virtual clock.

Each site owns a pool of devices (:mod:`scheduling.sim.profiles`) shared with its own
workloads (:mod:`scheduling.sim.load`). Work sent to a site waits while a burst
saturates its device, downloads the model, trains at the device's share of speed
(background load, thermal throttling, seeded noise), uploads, and may fail on the way.
:meth:`SimCluster.run` says how long that took; the caller moves the clock with
:meth:`SimCluster.advance`, and temperatures follow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduling.base import Candidate
from scheduling.sim.load import BackgroundLoad, LoadPattern, derive_seed
from scheduling.sim.profiles import (
    DeviceProfile,
    equilibrium_temperature,
    equilibrium_temperatures,
    power_draw,
    thermal_step,
    throttle_factor,
)
from scheduling.sim.sites import Outcome, SimSite, Work, training_rate

__all__ = [
    "FAST",
    "MID",
    "TIMEZONES",
    "Outcome",
    "SimCluster",
    "SimSite",
    "Work",
    "heterogeneous_consortium",
    "training_rate",
]


_VECTOR_CELLS = 24
"""Idle stretches of at least this many grid cells are integrated with numpy."""


@dataclass
class _Device:
    profile: DeviceProfile
    load: BackgroundLoad
    grid_temp: float  # temperature at virtual time grid_t
    grid_t: float = 0.0  # a multiple of the cluster's step_s
    busy: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, memory MiB)
    version: int = 0  # bumped whenever work is added
    memo: tuple[float, int, float] = (math.nan, -1, 0.0)  # (t, version, temperature at t)


@dataclass
class _SiteState:
    site: SimSite
    devices: list[_Device]
    current: int = 0
    finished: list[tuple[float, float, float]] = field(default_factory=list)
    """Successful work as (virtual time it completes, duration s, bytes moved)."""

    def last_round(self, now: float) -> tuple[float, float] | None:
        """(duration s, bytes) of the work completed last by ``now``; older entries are dropped."""
        done = [f for f in self.finished if f[0] <= now]
        if not done:
            return None
        latest = max(done, key=lambda f: f[0])
        self.finished = [latest] + [f for f in self.finished if f[0] > now]
        return latest[1], latest[2]


class SimCluster:
    """Sites with device pools, background load, heat and failures, on a virtual clock.

    Everything is a function of ``seed``: the same seed and the same calls give the same
    outcomes and telemetry.

    Args:
        sites: The sites (ids must be unique).
        seed: Seed of loads, noise and failures.
        start_hour: UTC hour at virtual time 0 (default 9.0).
        base_examples_per_s: Training examples per second on an idle, cool A100
            (default 2000.0); other devices scale by their relative throughput.
        wait_threshold_percent: Background load at or above which work waits for the
            device to free up (default 90.0).
        max_wait_s: Longest such wait; then the work starts regardless (default 1800.0).
        min_share: Least device share training gets under background load (default 0.05).
        noise_sigma: Sigma of the log-normal noise on compute time (default 0.05).
        network_sigma: Sigma of the log-normal noise on transfer times (default 0.1).
        step_s: Integration step of load and temperature, seconds (default 30.0).

    Temperatures are integrated lazily on a fixed grid of ``step_s`` cells, each at its
    mean utilization, so reading telemetry never changes what happens next, and devices
    nobody asks about cost nothing until they are asked about.
    """

    def __init__(
        self,
        sites: Sequence[SimSite],
        seed: int,
        start_hour: float = 9.0,
        *,
        base_examples_per_s: float = 2000.0,
        wait_threshold_percent: float = 90.0,
        max_wait_s: float = 1800.0,
        min_share: float = 0.05,
        noise_sigma: float = 0.05,
        network_sigma: float = 0.1,
        step_s: float = 30.0,
    ) -> None:
        ids = [s.site_id for s in sites]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"site ids must be unique; found duplicates {dupes}")
        if base_examples_per_s <= 0 or step_s <= 0 or max_wait_s < 0:
            raise ValueError(
                "SimCluster needs base_examples_per_s > 0, step_s > 0 and max_wait_s >= 0; found "
                f"{base_examples_per_s}, {step_s}, {max_wait_s}"
            )
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1]; found {min_share}")
        self.seed = seed
        self.start_hour = start_hour
        self.base_examples_per_s = base_examples_per_s
        self.wait_threshold_percent = wait_threshold_percent
        self.max_wait_s = max_wait_s
        self.min_share = min_share
        self.noise_sigma = noise_sigma
        self.network_sigma = network_sigma
        self.step_s = step_s
        self._now = 0.0
        self._runs = 0
        self._sites: dict[str, _SiteState] = {}
        for site in sorted(sites, key=lambda s: s.site_id):
            devices = []
            for i, profile in enumerate(site.profiles):
                load = BackgroundLoad(
                    site.load, seed, site.site_id, i, site.tz_offset_h, start_hour
                )
                temp = equilibrium_temperature(profile, load.at(0.0) / 100.0, site.ambient_offset_c)
                devices.append(_Device(profile, load, temp))
            self._sites[site.site_id] = _SiteState(site, devices)

    # -- clock -------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds since the start."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; devices heat under the work run and the background load, and cool.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"the clock only moves forward; advance() got {seconds} s")
        self._now += seconds

    # -- sites -------------------------------------------------------------------------

    @property
    def site_ids(self) -> list[str]:
        """Site ids, sorted."""
        return list(self._sites)

    def site(self, site_id: str) -> SimSite:
        """The site called ``site_id`` (``ValueError`` listing the ids otherwise)."""
        return self._state(site_id).site

    def current_device(self, site_id: str) -> int:
        """Pool index of the device the site trains on."""
        return self._state(site_id).current

    def migrate(self, site_id: str, device_index: int) -> None:
        """Make ``device_index`` of the site's pool its current device.

        Raises:
            ValueError: Unknown site, or an index outside its pool.
        """
        state = self._state(site_id)
        self._check_index(state, device_index)
        state.current = device_index

    def background_load(
        self, site_id: str, device: int | None = None, at: float | None = None
    ) -> float:
        """Background load of a device (default: current) at time ``at`` (default: now), percent."""
        state = self._state(site_id)
        dev = state.devices[self._index(state, device)]
        return dev.load.at(self._now if at is None else at)

    def throttle(self, site_id: str, device: int | None = None) -> float:
        """Throttle factor of a device (default: current) now: 1 when cool, less when hot."""
        state = self._state(site_id)
        dev = state.devices[self._index(state, device)]
        return throttle_factor(dev.profile, self._temperature(state.site, dev, self._now))

    # -- telemetry ---------------------------------------------------------------------

    def telemetry(self, site_id: str, device: int | None = None) -> dict[str, float]:
        """The readings the site would send now, in the shared telemetry keys.

        ``device_*`` readings are those of ``device`` (default: the current one). A
        CPU-only site reports what the CPU adapter does on Linux: utilization, host memory
        and package temperature, no power. ``last_round_seconds`` and ``net_bytes`` (of
        the latest work completed by now) appear once the site has completed a round.
        """
        state = self._state(site_id)
        index = self._index(state, device)
        site = state.site
        out = self._device_readings(state, index)
        util = out["device_utilization_percent"]
        bg = out["background_load_percent"]
        if state.devices[index].profile.vendor == "cpu":
            out["cpu_util_percent"] = util
            out["mem_used_mib"] = out["device_memory_used_mib"]
        else:
            out["cpu_util_percent"] = min(100.0, 4.0 + 0.2 * util)
            out["mem_used_mib"] = site.host_memory_mib * (0.08 + 0.3 * bg / 100.0)
        out["mem_total_mib"] = site.host_memory_mib
        out["cpu_count"] = float(site.cpu_count)
        out["num_devices"] = float(len(site.devices))
        last = state.last_round(self._now)
        if last is not None:
            out["last_round_seconds"], out["net_bytes"] = last
        return out

    def devices(self, site_id: str) -> list[dict[str, float]]:
        """Per-device readings of the site's pool, by index.

        Each holds ``device_index``, ``current`` (1.0 for the current device),
        ``relative_throughput``, ``background_load_percent`` and the ``device_*`` readings.
        """
        state = self._state(site_id)
        out = []
        for i in range(len(state.devices)):
            readings = {"device_index": float(i), "current": float(i == state.current)}
            readings.update(self._device_readings(state, i))
            out.append(readings)
        return out

    def candidates(self) -> list[Candidate]:
        """Every site as a selection candidate with its telemetry (node ids 1..n in id order)."""
        return [
            Candidate(sid, i + 1, s.site.num_train_examples, self.telemetry(sid))
            for i, (sid, s) in enumerate(self._sites.items())
        ]

    # -- work --------------------------------------------------------------------------

    def run(self, work: Mapping[str, Work]) -> dict[str, Outcome]:
        """Run one round's work, all of it starting now; the clock does not move.

        Per site: the model downloads; the work waits until earlier work on the device is
        done and the background load is below ``wait_threshold_percent``; it trains
        (:func:`training_rate`, integrated over the changing load and temperature,
        times log-normal noise); the update uploads. A seeded draw decides whether the
        site drops out, and when. Devices are marked busy for the training, so the next
        :meth:`advance` heats them and later work queues behind it.

        Args:
            work: Work per site id.

        Returns:
            An :class:`Outcome` per site id.

        Raises:
            ValueError: An unknown site id or device index (before anything runs).
        """
        plans = []
        for site_id in sorted(work):
            state = self._state(site_id)
            plans.append((state, work[site_id], self._index(state, work[site_id].device)))
        run_index = self._runs
        self._runs += 1
        return {state.site.site_id: self._run_one(state, w, i, run_index) for state, w, i in plans}

    def _run_one(self, state: _SiteState, work: Work, index: int, run_index: int) -> Outcome:
        site, dev = state.site, state.devices[index]
        rng = random.Random(derive_seed("run", self.seed, run_index, site.site_id))
        # every draw is made, in a fixed order, whatever happens: later draws never shift
        down_s = (
            work.download_bytes
            / site.bandwidth_bytes_per_s
            * rng.lognormvariate(0.0, self.network_sigma)
        )
        up_s = (
            work.upload_bytes
            / site.bandwidth_bytes_per_s
            * rng.lognormvariate(0.0, self.network_sigma)
        )
        noise = rng.lognormvariate(0.0, self.noise_sigma)
        fails = rng.random() < site.failure_prob
        fail_share = rng.random()

        ready = max([self._now + down_s] + [b[1] for b in dev.busy])
        start = dev.load.next_below(ready, self.wait_threshold_percent, self.max_wait_s)
        wait_s = (start - ready) + (ready - (self._now + down_s))  # exactly 0 when nothing waits
        temp = self._temperature(site, dev, start)

        free = dev.profile.memory_mib - self._memory_used(state, dev, start)
        if work.memory_mib > free:
            return Outcome(
                site.site_id,
                index,
                wait_s,
                0.0,
                down_s,
                down_s + wait_s,
                True,
                f"out of device memory on {dev.profile.model} (device {index}): the work needs "
                f"{work.memory_mib:.0f} MiB, {max(0.0, free):.0f} MiB free",
            )
        compute_s = self._compute(site, dev, start, temp, work.examples * noise, work.headroom)
        phases = [down_s, wait_s, compute_s, up_s]
        total = sum(phases)
        if fails:
            cut = fail_share * total
            done, left = [], cut
            for p in phases:
                done.append(min(p, left))
                left -= done[-1]
            down_s, wait_s, compute_s, up_s = done
            reason: str | None = f"site went offline at +{cut:.1f} s"
        else:
            cut, reason = total, None
        if compute_s > 0:
            dev.busy.append((start, start + compute_s, work.memory_mib))
            dev.version += 1
        if not fails:
            state.finished.append(
                (self._now + cut, cut, float(work.upload_bytes + work.download_bytes))
            )
        return Outcome(site.site_id, index, wait_s, compute_s, down_s + up_s, cut, fails, reason)

    # -- internals ---------------------------------------------------------------------

    def _state(self, site_id: str) -> _SiteState:
        try:
            return self._sites[site_id]
        except KeyError:
            raise ValueError(f"unknown site {site_id!r}; sites: {', '.join(self._sites)}") from None

    @staticmethod
    def _check_index(state: _SiteState, index: int) -> None:
        n = len(state.devices)
        if not 0 <= index < n:
            raise ValueError(
                f"site {state.site.site_id!r} has {n} device(s) (indices 0..{n - 1}: "
                f"{', '.join(state.site.devices)}); found device index {index}"
            )

    def _index(self, state: _SiteState, device: int | None) -> int:
        if device is None:
            return state.current
        self._check_index(state, device)
        return device

    def _busy_at(self, dev: _Device, t: float) -> tuple[bool, float]:
        """Whether work runs on ``dev`` at ``t``, and the memory it holds."""
        memory = sum(b[2] for b in dev.busy if b[0] <= t < b[1])
        return any(b[0] <= t < b[1] for b in dev.busy), memory

    def _memory_used(self, state: _SiteState, dev: _Device, t: float) -> float:
        bg = dev.load.at(t)  # memoized: the caller usually just asked
        if dev.profile.vendor == "cpu":
            base = state.site.host_memory_mib * (0.08 + 0.5 * bg / 100.0)
        else:
            base = dev.profile.memory_mib * (0.02 + 0.7 * bg / 100.0)
        return base + self._busy_at(dev, t)[1]

    def _device_readings(self, state: _SiteState, index: int) -> dict[str, float]:
        dev = state.devices[index]
        profile = dev.profile
        bg = dev.load.at(self._now)
        busy, _ = self._busy_at(dev, self._now)
        util = 100.0 if busy else bg
        temp = self._temperature(state.site, dev, self._now)
        total = state.site.host_memory_mib if profile.vendor == "cpu" else profile.memory_mib
        out = {
            "device_utilization_percent": util,
            "device_memory_used_mib": min(total, self._memory_used(state, dev, self._now)),
            "device_memory_total_mib": total,
            "device_temperature_c": temp,
        }
        if profile.reports_power:
            f = throttle_factor(profile, temp)
            out["device_power_w"] = power_draw(profile, util / 100.0, f)
            out["device_power_limit_w"] = profile.power_limit_w
        out["background_load_percent"] = bg
        out["relative_throughput"] = profile.relative_throughput
        return out

    def _temperature(self, site: SimSite, dev: _Device, t: float) -> float:
        """Temperature of ``dev`` at ``t``: grid cells up to ``min(t, now)`` are kept, the rest projected."""
        if dev.memo[0] == t and dev.memo[1] == dev.version:
            return dev.memo[2]
        step = self.step_s
        kept = math.floor((min(t, self._now) - dev.grid_t) / step)
        if kept > 0:
            dev.grid_temp = self._roll(site, dev, dev.grid_t, kept, dev.grid_temp)
            dev.grid_t += kept * step
            dev.busy = [b for b in dev.busy if b[1] > dev.grid_t]
        ahead = math.floor((t - dev.grid_t) / step)
        temp = (
            self._roll(site, dev, dev.grid_t, ahead, dev.grid_temp) if ahead > 0 else dev.grid_temp
        )
        t0 = dev.grid_t + max(0, ahead) * step
        if t > t0:
            temp = self._integrate(site, dev, t0, t, temp, dev.load.at(t0 + 0.5 * step) / 100.0)
        dev.memo = (t, dev.version, temp)
        return temp

    def _roll(self, site: SimSite, dev: _Device, t0: float, cells: int, temp: float) -> float:
        """Temperature after ``cells`` grid cells from ``t0``; long stretches vectorized."""
        step = self.step_s
        if cells < _VECTOR_CELLS:
            for k in range(cells):
                start = t0 + k * step
                u = dev.load.at(start + 0.5 * step) / 100.0
                temp = self._integrate(site, dev, start, start + step, temp, u)
            return temp
        starts = t0 + step * np.arange(cells, dtype=np.float64)
        idle = np.ones(cells, dtype=bool)
        for b_start, b_end, _ in dev.busy:
            idle &= ~((starts < b_end) & (starts + step > b_start))
        loads = dev.load.at_many(starts + 0.5 * step) / 100.0
        targets = equilibrium_temperatures(dev.profile, loads, site.ambient_offset_c)
        decay = math.exp(-step / dev.profile.heat_time_constant_s)
        for k, (is_idle, target) in enumerate(zip(idle.tolist(), targets.tolist(), strict=True)):
            if is_idle:
                temp = target + (temp - target) * decay
            else:
                start = float(starts[k])
                temp = self._integrate(site, dev, start, start + step, temp, float(loads[k]))
        return temp

    def _integrate(
        self, site: SimSite, dev: _Device, t0: float, t1: float, temp: float, idle_u: float
    ) -> float:
        """Temperature at ``t1`` from ``temp`` at ``t0`` within one grid cell.

        One exponential step at the cell's mean utilization: 1 while work runs, ``idle_u``
        (the background load at the cell's middle) otherwise. Heat is a low-pass filter
        with a time constant of a minute or two, so a cell-long mean is what matters.
        """
        dt = t1 - t0
        busy = sum(max(0.0, min(t1, end) - max(t0, start)) for start, end, _ in dev.busy)
        share = min(1.0, busy / dt)
        u = share + (1.0 - share) * idle_u
        return thermal_step(dev.profile, temp, u, dt, site.ambient_offset_c)

    def _compute(
        self,
        site: SimSite,
        dev: _Device,
        start: float,
        temp: float,
        examples: float,
        headroom: float = 0.0,
    ) -> float:
        """Seconds to train on ``examples`` from ``start``, as load and temperature change."""
        t, left = start, examples
        while left > 1e-9:
            bg = dev.load.at(t)
            f = throttle_factor(dev.profile, temp)
            rate = training_rate(
                self.base_examples_per_s,
                dev.profile.relative_throughput,
                bg,
                f,
                self.min_share,
                headroom,
            )
            dt = min(self.step_s, left / rate)
            left -= rate * dt
            temp = thermal_step(dev.profile, temp, 1.0, dt, site.ambient_offset_c)
            t += dt
        return t - start

    def __repr__(self) -> str:
        return f"SimCluster({len(self._sites)} sites, seed={self.seed}, now={self._now:.1f})"


FAST = ("h100", "mi300x")
MID = ("a100", "mi250", "max1550")
TIMEZONES = (-8.0, -5.0, -3.0, 0.0, 1.0, 2.0, 5.5, 8.0, 9.0, 10.0)
"""UTC offsets the consortium's sites are drawn from (Americas, Europe, Asia, Oceania)."""


def heterogeneous_consortium(
    n_sites: int = 20, seed: int = 0, prefix: str = "bank"
) -> list[SimSite]:
    """A seeded consortium: few H100/MI300X sites, A100/MI250/Max sites, many T4 and CPU-only ones.

    Tiers: 10 % fast (H100 or MI300X, 2-4 devices; at least one site), 30 % mid (A100,
    MI250 or Max 1550, 1-4 devices, sometimes with a T4 beside them), 30 % T4 (1-4
    devices), the rest CPU-only. Fast and mid sites cycle through their device kinds, so
    every profile appears once there are enough sites. Data sizes are log-uniform over
    2,000-20,000 examples; time zones spread over :data:`TIMEZONES`; small sites have
    slower links and fail more often.

    Args:
        n_sites: How many sites (>= 1).
        seed: Seed of the draw.
        prefix: Site ids are ``f"{prefix}-{i:02d}"`` from 1.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1; found {n_sites}")
    rng = random.Random(derive_seed("consortium", seed, n_sites))
    n_fast = max(1, round(0.1 * n_sites))
    n_mid = min(round(0.3 * n_sites), n_sites - n_fast)
    n_t4 = min(round(0.3 * n_sites), n_sites - n_fast - n_mid)
    tiers = (
        [("fast", j) for j in range(n_fast)]
        + [("mid", j) for j in range(n_mid)]
        + [("t4", j) for j in range(n_t4)]
        + [("cpu", j) for j in range(n_sites - n_fast - n_mid - n_t4)]
    )
    rng.shuffle(tiers)
    sites = []
    for i, (tier, j) in enumerate(tiers):
        if tier == "fast":
            pool = [FAST[j % len(FAST)]] * rng.randint(2, 4)
        elif tier == "mid":
            pool = [MID[j % len(MID)]] * rng.randint(1, 3)
            if rng.random() < 0.4:
                pool.append("t4")
        elif tier == "t4":
            pool = ["t4"] * rng.randint(1, 4)
        else:
            pool = ["cpu"]
        big = tier in ("fast", "mid")
        load = LoadPattern(
            base_percent=rng.uniform(5.0, 20.0),
            peak_percent=rng.uniform(20.0, 50.0),
            bursts_per_hour=rng.uniform(0.2, 1.0),
            burst_mean_s=rng.uniform(300.0, 1800.0),
        )
        sites.append(
            SimSite(
                site_id=f"{prefix}-{i + 1:02d}",
                devices=tuple(pool),
                num_train_examples=int(round(2000 * 10 ** rng.uniform(0.0, 1.0))),
                tz_offset_h=rng.choice(TIMEZONES),
                failure_prob=rng.uniform(0.005, 0.02) if big else rng.uniform(0.02, 0.06),
                bandwidth_bytes_per_s=10
                ** (rng.uniform(8.0, 9.0) if big else rng.uniform(6.5, 8.0)),
                ambient_offset_c=rng.uniform(0.0, 8.0),
                load=load,
                cpu_count=64 if tier == "cpu" else rng.choice((32, 64, 96)),
                host_memory_mib=float(rng.choice((262_144, 524_288))),
            )
        )
    return sites
