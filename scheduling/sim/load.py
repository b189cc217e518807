"""Seeded background load of a site's devices: a business-hours daily pattern plus Poisson bursts."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np

HOUR_S = 3600.0
_MASK64 = (1 << 64) - 1


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python versions.

    ``hash()`` is salted per process; this is not, so the same parts always give the
    same seed.

    >>> derive_seed(7, "bank-01") == derive_seed(7, "bank-01")
    True
    """
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def unit_hash(key: int, index: int) -> float:
    """A uniform number in [0, 1) from ``(key, index)`` (SplitMix64 finalizer): cheap, stateless."""
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z / 2.0**64


def unit_hash_many(key: int, indices: np.ndarray) -> np.ndarray:
    """:func:`unit_hash` of every index at once (the same numbers), ``float64``."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (indices.astype(np.int64) + 1).astype(np.uint64) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    out: np.ndarray = z.astype(np.float64) / 2.0**64
    return out


@dataclass(frozen=True)
class LoadPattern:
    """Shape of a site's own workloads on its devices, in percent of a device.

    Attributes:
        base_percent: Load outside business hours.
        peak_percent: Load added at the middle of business hours.
        open_hour: Local hour business starts (the daily bump begins).
        close_hour: Local hour business ends.
        bursts_per_hour: Mean rate of bursts (Poisson arrivals).
        burst_mean_s: Mean burst length (exponential), seconds.
        burst_max_s: Longest burst; longer draws are cut to this.
        burst_min_percent: Smallest load a burst adds.
        burst_max_percent: Largest load a burst adds.
        noise_percent: Half-width of the uniform jitter, held for ``noise_period_s``.
        noise_period_s: Seconds one jitter value holds.
    """

    base_percent: float = 10.0
    peak_percent: float = 40.0
    open_hour: float = 8.0
    close_hour: float = 20.0
    bursts_per_hour: float = 0.5
    burst_mean_s: float = 900.0
    burst_max_s: float = 4 * HOUR_S
    burst_min_percent: float = 30.0
    burst_max_percent: float = 70.0
    noise_percent: float = 3.0
    noise_period_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.open_hour < self.close_hour <= 24:
            raise ValueError(
                f"LoadPattern needs 0 <= open_hour < close_hour <= 24; found {self.open_hour} and {self.close_hour}"
            )
        if min(self.base_percent, self.peak_percent, self.bursts_per_hour, self.noise_percent) < 0:
            raise ValueError(
                "LoadPattern: base_percent, peak_percent, bursts_per_hour and noise_percent must be >= 0; "
                f"found {self.base_percent}, {self.peak_percent}, {self.bursts_per_hour}, {self.noise_percent}"
            )
        if not 0 < self.burst_mean_s <= self.burst_max_s or self.noise_period_s <= 0:
            raise ValueError(
                "LoadPattern needs 0 < burst_mean_s <= burst_max_s and noise_period_s > 0; found "
                f"{self.burst_mean_s}, {self.burst_max_s}, {self.noise_period_s}"
            )
        if not 0 <= self.burst_min_percent <= self.burst_max_percent:
            raise ValueError(
                "LoadPattern needs 0 <= burst_min_percent <= burst_max_percent; found "
                f"{self.burst_min_percent} and {self.burst_max_percent}"
            )


def local_hour(t_s: float, start_hour: float, tz_offset_h: float) -> float:
    """Local hour of day in [0, 24) at virtual time ``t_s``.

    Virtual time 0 is ``start_hour`` UTC; the site's clock is ``tz_offset_h`` ahead of UTC.

    >>> local_hour(7200.0, 9.0, -5.0)  # 9 + 2 - 5
    6.0
    """
    return (start_hour + tz_offset_h + t_s / HOUR_S) % 24.0


def daily_load(hour: float, pattern: LoadPattern) -> float:
    """Daily load at local ``hour``: base, plus a raised-cosine bump over business hours.

    ``base + peak * (1 - cos(2 pi (h - open) / (close - open))) / 2`` inside
    ``[open, close)``, ``base`` outside; the peak falls mid-way (14:00 for 8-20).
    """
    if not pattern.open_hour <= hour < pattern.close_hour:
        return pattern.base_percent
    phase = (hour - pattern.open_hour) / (pattern.close_hour - pattern.open_hour)
    return pattern.base_percent + pattern.peak_percent * 0.5 * (
        1.0 - math.cos(2.0 * math.pi * phase)
    )


Burst = tuple[float, float, float]
"""One burst: (start s, end s, added load %)."""


class BackgroundLoad:
    """The background load of one device, a pure function of (seed, site, device, virtual time).

    Bursts arrive as a Poisson process: each virtual hour draws its own arrivals from a
    generator seeded by (seed, site, device, hour), so any instant can be evaluated without
    replaying the past. A burst can outlast its hour; evaluation looks back as many hours
    as the longest burst lasts.

    Args:
        pattern: The load's shape.
        seed: Cluster seed.
        site_id: The site.
        device: Index of the device in the site's pool.
        tz_offset_h: Site clock minus UTC, hours.
        start_hour: UTC hour at virtual time 0.
    """

    def __init__(
        self,
        pattern: LoadPattern,
        seed: int,
        site_id: str,
        device: int,
        tz_offset_h: float = 0.0,
        start_hour: float = 0.0,
    ) -> None:
        self.pattern = pattern
        self.tz_offset_h = tz_offset_h
        self.start_hour = start_hour
        self._key = derive_seed("load", seed, site_id, device)
        self._lookback = math.ceil(pattern.burst_max_s / HOUR_S)
        self._bursts: dict[int, tuple[Burst, ...]] = {}
        self._overlap: dict[int, tuple[Burst, ...]] = {}
        self._last: tuple[float, float] = (
            math.nan,
            0.0,
        )  # the latest (t, value): telemetry asks twice

    def bursts_in_hour(self, hour_index: int) -> tuple[Burst, ...]:
        """The bursts that start in virtual hour ``hour_index`` (``[h * 3600, (h + 1) * 3600)``)."""
        cached = self._bursts.get(hour_index)
        if cached is not None:
            return cached
        p = self.pattern
        out: list[Burst] = []
        if p.bursts_per_hour > 0:
            rng = random.Random(derive_seed(self._key, "bursts", hour_index))
            rate = p.bursts_per_hour / HOUR_S
            t = hour_index * HOUR_S + rng.expovariate(rate)
            while t < (hour_index + 1) * HOUR_S:
                length = min(rng.expovariate(1.0 / p.burst_mean_s), p.burst_max_s)
                height = rng.uniform(p.burst_min_percent, p.burst_max_percent)
                out.append((t, t + length, height))
                t += rng.expovariate(rate)
        if len(self._bursts) > 4096:
            self._bursts.clear()
        result = self._bursts[hour_index] = tuple(out)
        return result

    def active_bursts(self, t_s: float) -> list[Burst]:
        """The bursts under way at ``t_s``."""
        return [b for b in self._overlapping(math.floor(t_s / HOUR_S)) if b[0] <= t_s < b[1]]

    def _overlapping(self, hour_index: int) -> tuple[Burst, ...]:
        """Bursts under way at some point of virtual hour ``hour_index`` (cached)."""
        cached = self._overlap.get(hour_index)
        if cached is not None:
            return cached
        lo = hour_index * HOUR_S
        found = tuple(
            b
            for h in range(hour_index - self._lookback, hour_index + 1)
            for b in self.bursts_in_hour(h)
            if b[1] > lo
        )
        if len(self._overlap) > 4096:
            self._overlap.clear()
        self._overlap[hour_index] = found
        return found

    def at(self, t_s: float) -> float:
        """Background load at virtual time ``t_s``, percent in [0, 100]."""
        if self._last[0] == t_s:
            return self._last[1]
        p = self.pattern
        value = daily_load(local_hour(t_s, self.start_hour, self.tz_offset_h), p)
        for start, end, height in self._overlapping(math.floor(t_s / HOUR_S)):
            if start <= t_s < end:
                value += height
        if p.noise_percent > 0:
            u = unit_hash(self._key, math.floor(t_s / p.noise_period_s))
            value += (2.0 * u - 1.0) * p.noise_percent
        value = min(100.0, max(0.0, value))
        self._last = (t_s, value)
        return value

    def at_many(self, times_s: np.ndarray) -> np.ndarray:
        """:meth:`at` for many instants at once (the same values), ``float64``."""
        t = np.asarray(times_s, dtype=np.float64)
        p = self.pattern
        hour = (self.start_hour + self.tz_offset_h + t / HOUR_S) % 24.0
        inside = (hour >= p.open_hour) & (hour < p.close_hour)
        phase = (hour - p.open_hour) / (p.close_hour - p.open_hour)
        bump = p.peak_percent * 0.5 * (1.0 - np.cos(2.0 * math.pi * phase))
        value = np.where(inside, p.base_percent + bump, p.base_percent)
        if t.size:
            lo, hi = math.floor(float(t.min()) / HOUR_S), math.floor(float(t.max()) / HOUR_S)
            bursts = {b for h in range(lo, hi + 1) for b in self._overlapping(h)}
            for start, end, height in sorted(bursts):
                value = value + np.where((t >= start) & (t < end), height, 0.0)
        if p.noise_percent > 0:
            u = unit_hash_many(self._key, np.floor(t / p.noise_period_s))
            value = value + (2.0 * u - 1.0) * p.noise_percent
        out: np.ndarray = np.clip(value, 0.0, 100.0)
        return out

    def next_below(self, t_s: float, threshold: float, max_wait_s: float) -> float:
        """First time from ``t_s`` on when the load is below ``threshold``; ``t_s + max_wait_s`` at the latest.

        The load drops only when a burst ends, when the jitter changes, or as the daily
        pattern moves; those instants (and a scan every jitter period) are checked in order.
        """
        if self.at(t_s) < threshold:
            return t_s
        end = t_s + max_wait_s
        period = self.pattern.noise_period_s
        times = {
            b[1]
            for h in range(math.floor(t_s / HOUR_S), math.floor(end / HOUR_S) + 1)
            for b in self._overlapping(h)
            if t_s < b[1] <= end
        }
        k = math.floor(t_s / period) + 1
        while k * period <= end:
            times.add(k * period)
            k += 1
        for t in sorted(times):
            if self.at(t) < threshold:
                return t
        return end

    def __repr__(self) -> str:
        return f"BackgroundLoad({self.pattern!r}, tz_offset_h={self.tz_offset_h})"
