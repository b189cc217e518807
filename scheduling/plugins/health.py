"""Hardware health filter: reject sites whose training device runs too hot, too close to its
power limit, or (optionally) with too little free memory."""

from __future__ import annotations

import math

from scheduling.base import Candidate
from scheduling.framework import FilterPlugin, FilterStatus, SchedulingContext

DEFAULT_MAX_TEMPERATURE_C = 85.0
DEFAULT_MAX_POWER_FRACTION = 0.98


def _reading(readings: dict[str, float], key: str) -> float | None:
    value = readings.get(key)
    return None if value is None else float(value)


class HealthFilter(FilterPlugin):
    """Reject a site whose device fails any health check; report every failed check.

    Each limit comes from the plugin argument when given, else from the scenario's
    threshold of the same name (:meth:`SchedulingContext.threshold`), else the default.
    A reading that is absent (a CPU-only site, a device without a power sensor) is not a
    rejection; a reading that is present but not a finite number is.

    Args:
        max_temperature_c: Reject at ``device_temperature_c >= max_temperature_c``
            (default 85.0 °C).
        max_power_fraction: Reject at ``device_power_w >= max_power_fraction *
            device_power_limit_w`` (default 0.98).
        min_free_memory_mib: Reject when ``device_memory_total_mib - device_memory_used_mib``
            is below it (default: not checked).
    """

    name = "health"

    def __init__(
        self,
        max_temperature_c: float | None = None,
        max_power_fraction: float | None = None,
        min_free_memory_mib: float | None = None,
    ) -> None:
        for arg, value in (
            ("max_temperature_c", max_temperature_c),
            ("max_power_fraction", max_power_fraction),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"health: {arg} must be a finite number > 0; found {value!r}")
        if min_free_memory_mib is not None and not (
            math.isfinite(min_free_memory_mib) and min_free_memory_mib >= 0
        ):
            raise ValueError(
                f"health: min_free_memory_mib must be a finite number >= 0; "
                f"found {min_free_memory_mib!r}"
            )
        self.max_temperature_c = max_temperature_c
        self.max_power_fraction = max_power_fraction
        self.min_free_memory_mib = min_free_memory_mib

    def filter(self, candidate: Candidate, ctx: SchedulingContext) -> FilterStatus:
        r = candidate.readings
        reasons = [
            f"reading {key} is {r[key]!r}; expected a finite number (check the site's telemetry)"
            for key in (
                "device_temperature_c",
                "device_power_w",
                "device_power_limit_w",
                "device_memory_used_mib",
                "device_memory_total_mib",
            )
            if key in r and not math.isfinite(r[key])
        ]
        if reasons:
            return FilterStatus(tuple(reasons))
        t_max = self._limit(self.max_temperature_c, "max_temperature_c", ctx)
        temp = _reading(r, "device_temperature_c")
        if temp is not None and temp >= t_max:
            reasons.append(f"GPU temperature {temp:.1f} °C >= limit {t_max:.1f} °C")
        frac = self._limit(self.max_power_fraction, "max_power_fraction", ctx)
        power = _reading(r, "device_power_w")
        cap = _reading(r, "device_power_limit_w")
        if power is not None and cap is not None and cap > 0 and power >= frac * cap:
            reasons.append(
                f"GPU power {power:.1f} W >= {frac * 100:g}% of limit {cap:.1f} W ({frac * cap:.1f} W)"
            )
        need = self.min_free_memory_mib
        if need is None and "min_free_memory_mib" in ctx.thresholds:
            need = ctx.threshold("min_free_memory_mib", 0.0)
        used = _reading(r, "device_memory_used_mib")
        total = _reading(r, "device_memory_total_mib")
        if need is not None and used is not None and total is not None and total - used < need:
            reasons.append(
                f"GPU memory free {total - used:.1f} MiB < headroom {need:.1f} MiB "
                f"(used {used:.1f} of {total:.1f} MiB)"
            )
        return FilterStatus(tuple(reasons))

    @staticmethod
    def _limit(own: float | None, key: str, ctx: SchedulingContext) -> float:
        if own is not None:
            return own
        default = (
            DEFAULT_MAX_TEMPERATURE_C if key == "max_temperature_c" else DEFAULT_MAX_POWER_FRACTION
        )
        return ctx.threshold(key, default)

    def __repr__(self) -> str:
        return (
            f"HealthFilter(max_temperature_c={self.max_temperature_c}, "
            f"max_power_fraction={self.max_power_fraction}, "
            f"min_free_memory_mib={self.min_free_memory_mib})"
        )
