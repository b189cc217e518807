"""Health filter: every failed check reported with its values; absent readings pass."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins.health import HealthFilter

GPU = {
    "device_temperature_c": 70.0,
    "device_power_w": 200.0,
    "device_power_limit_w": 350.0,
    "device_memory_used_mib": 4096.0,
    "device_memory_total_mib": 16384.0,
}


def reasons(
    readings: dict[str, float], plugin: HealthFilter | None = None, **thresholds: float
) -> list[str]:
    ctx = SchedulingContext(round=1, thresholds=thresholds)
    status = (plugin or HealthFilter()).filter(Candidate("site", 1, 10, readings), ctx)
    assert status.passed == (not status.reasons)
    return list(status.reasons)


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        (GPU, []),  # 70 < 85 °C, 200 < 0.98 * 350 = 343 W
        ({**GPU, "device_temperature_c": 91.0}, ["GPU temperature 91.0 °C >= limit 85.0 °C"]),
        # at the limit is already too hot
        ({**GPU, "device_temperature_c": 85.0}, ["GPU temperature 85.0 °C >= limit 85.0 °C"]),
        ({**GPU, "device_temperature_c": 84.9}, []),
        # 0.98 * 350 = 343.0 W
        ({**GPU, "device_power_w": 343.0}, ["GPU power 343.0 W >= 98% of limit 350.0 W (343.0 W)"]),
        ({**GPU, "device_power_w": 342.9}, []),
        # both fail: both reported
        (
            {**GPU, "device_temperature_c": 95.5, "device_power_w": 350.0},
            [
                "GPU temperature 95.5 °C >= limit 85.0 °C",
                "GPU power 350.0 W >= 98% of limit 350.0 W (343.0 W)",
            ],
        ),
        # CPU-only site: no device readings, nothing to reject
        ({"cpu_util_percent": 99.0, "mem_used_mib": 1.0, "mem_total_mib": 2.0}, []),
        # a power draw without a known limit (or a limit of 0) cannot be judged
        ({"device_power_w": 500.0}, []),
        ({"device_power_w": 500.0, "device_power_limit_w": 0.0}, []),
        # memory headroom is off by default: 16000 of 16384 MiB used passes
        ({**GPU, "device_memory_used_mib": 16000.0}, []),
        # a broken sensor is a rejection, not a pass
        (
            {**GPU, "device_temperature_c": float("nan")},
            [
                "reading device_temperature_c is nan; expected a finite number (check the site's telemetry)"
            ],
        ),
    ],
)
def test_default_limits(readings: dict[str, float], expected: list[str]) -> None:
    assert reasons(readings) == expected


def test_every_failed_check_with_memory_headroom() -> None:
    # free = 16384 - 15000 = 1384 MiB < 2048 MiB; 88 >= 85 °C; 345 >= 343 W
    hot = {
        **GPU,
        "device_temperature_c": 88.0,
        "device_power_w": 345.0,
        "device_memory_used_mib": 15000.0,
    }
    assert reasons(hot, HealthFilter(min_free_memory_mib=2048.0)) == [
        "GPU temperature 88.0 °C >= limit 85.0 °C",
        "GPU power 345.0 W >= 98% of limit 350.0 W (343.0 W)",
        "GPU memory free 1384.0 MiB < headroom 2048.0 MiB (used 15000.0 of 16384.0 MiB)",
    ]
    # free = 16384 - 14336 = 2048 MiB: exactly the headroom passes
    assert (
        reasons(
            {**GPU, "device_memory_used_mib": 14336.0}, HealthFilter(min_free_memory_mib=2048.0)
        )
        == []
    )


def test_limits_from_the_scenario_and_from_the_plugin() -> None:
    warm = {**GPU, "device_temperature_c": 82.0, "device_power_w": 320.0}
    # scenario: 80 °C and 0.9 * 350 = 315 W
    assert reasons(warm, max_temperature_c=80.0, max_power_fraction=0.9) == [
        "GPU temperature 82.0 °C >= limit 80.0 °C",
        "GPU power 320.0 W >= 90% of limit 350.0 W (315.0 W)",
    ]
    # the plugin's own arguments win over the scenario's thresholds
    plugin = HealthFilter(max_temperature_c=90.0, max_power_fraction=0.955)
    assert reasons(warm, plugin, max_temperature_c=80.0, max_power_fraction=0.9) == []
    # 0.955 * 350 = 334.25 W
    assert reasons({**warm, "device_power_w": 340.0}, plugin) == [
        "GPU power 340.0 W >= 95.5% of limit 350.0 W (334.2 W)"
    ]
    # headroom from the scenario: free 16384 - 4096 = 12288 < 13000
    assert reasons(GPU, min_free_memory_mib=13000.0) == [
        "GPU memory free 12288.0 MiB < headroom 13000.0 MiB (used 4096.0 of 16384.0 MiB)"
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"max_temperature_c": 0.0},
            "health: max_temperature_c must be a finite number > 0; found 0.0",
        ),
        (
            {"max_power_fraction": -0.5},
            "health: max_power_fraction must be a finite number > 0; found -0.5",
        ),
        (
            {"min_free_memory_mib": float("nan")},
            "health: min_free_memory_mib must be a finite number >= 0; found nan",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HealthFilter(**kwargs)


def test_repr() -> None:
    assert repr(HealthFilter(max_temperature_c=80.0)) == (
        "HealthFilter(max_temperature_c=80.0, max_power_fraction=None, min_free_memory_mib=None)"
    )
