"""What a forecaster sees of a round: work size, seconds per example, context features, EWMA, MAPE."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from scheduling.history import Observation

STEP_FEATURES = ("log_example_seconds", "log_example_seconds_change")
"""Per past round, besides its context: log seconds per example, and the same minus the
newest round's (so the model sees the shape of the series apart from its level)."""

CONTEXT_FEATURES = (
    "utilization",
    "background_load",
    "temperature_c",
    "power_fraction",
    "memory_fraction",
    "log_relative_throughput",
    "log_num_devices",
    "log_net_bytes",
    "log_examples",
    "log_steps",
)
"""What is known about a round before it runs (see :func:`context_features`)."""


def work_size(work: Mapping[str, float]) -> float:
    """Units of work in a round: ``examples`` if > 0, else ``steps`` if > 0, else 1 (the round).

    >>> work_size({"steps": 50, "examples": 3200})
    3200.0
    """
    for key in ("examples", "steps"):
        value = work.get(key, 0.0)
        if value > 0:
            return float(value)
    return 1.0


def example_seconds(obs: Observation) -> float | None:
    """Seconds per unit of work of a measured round (``duration_s / work_size``), else ``None``."""
    if obs.duration_s is None or obs.duration_s <= 0:
        return None
    return obs.duration_s / work_size(obs.work)


def ewma(values: Sequence[float], alpha: float) -> float:
    """Exponentially weighted moving average, oldest value first.

    ``s_1 = x_1`` and ``s_i = alpha * x_i + (1 - alpha) * s_(i-1)``; returns ``s_n``.

    >>> ewma([10.0, 20.0], 0.3)
    13.0

    Raises:
        ValueError: On no values or ``alpha`` outside (0, 1].
    """
    if not values:
        raise ValueError("ewma needs at least one value, found none")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    s = float(values[0])
    for x in values[1:]:
        s = alpha * float(x) + (1.0 - alpha) * s
    return s


def mape(actual: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean absolute percentage error, ``100 * mean(|a - p| / |a|)``, in percent.

    Pairs whose actual value is 0 are left out (their percentage error is undefined); a
    duration of 0 means nothing was measured, so it has nothing to score against.

    >>> mape([100.0, 200.0, 0.0], [110.0, 150.0, 5.0])  # (10% + 25%) / 2; the 0 is left out
    17.5

    Raises:
        ValueError: On sequences of different lengths, non-finite values, or no pair left.
    """
    if len(actual) != len(predicted):
        raise ValueError(
            f"mape needs as many predictions as actual values; found {len(predicted)} "
            f"predictions for {len(actual)} actual values"
        )
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(p).all()):
        raise ValueError("mape needs finite values; found NaN or infinity")
    keep = a != 0
    if not keep.any():
        raise ValueError(
            f"mape needs at least one actual value != 0; found none among {len(actual)}"
        )
    return float(100.0 * np.mean(np.abs(a[keep] - p[keep]) / np.abs(a[keep])))


def context_features(readings: Mapping[str, float], work: Mapping[str, float]) -> np.ndarray:
    """A round's known context as :data:`CONTEXT_FEATURES`, ``float64 [C]``, NaN where unknown.

    ``utilization`` is ``device_utilization_percent / 100`` (``cpu_util_percent`` on a site
    without a device), ``background_load`` is ``background_load_percent / 100``,
    ``power_fraction`` is ``device_power_w / device_power_limit_w``, ``memory_fraction`` is
    device memory used / total (host memory without a device), then the logs of
    ``relative_throughput``, ``num_devices``, ``1 + net_bytes`` and the work's ``examples``
    and ``steps``.
    """

    def get(key: str) -> float:
        value = readings.get(key)
        return float(value) if value is not None and math.isfinite(value) else math.nan

    def ratio(num: str, den: str) -> float:
        d = get(den)
        return get(num) / d if d > 0 else math.nan

    def log_of(value: float | None) -> float:
        return math.log(value) if value is not None and value > 0 else math.nan

    util = get("device_utilization_percent")
    if math.isnan(util):
        util = get("cpu_util_percent")
    memory = ratio("device_memory_used_mib", "device_memory_total_mib")
    if math.isnan(memory):
        memory = ratio("mem_used_mib", "mem_total_mib")
    net = get("net_bytes")
    return np.array(
        [
            util / 100.0,
            get("background_load_percent") / 100.0,
            get("device_temperature_c"),
            ratio("device_power_w", "device_power_limit_w"),
            memory,
            log_of(get("relative_throughput")),
            log_of(get("num_devices")),
            math.log1p(net) if net >= 0 else math.nan,
            log_of(work.get("examples")),
            log_of(work.get("steps")),
        ],
        dtype=np.float64,
    )
