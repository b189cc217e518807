"""Device profiles: the required kinds, their speed order, and the thermal and power formulas."""

from __future__ import annotations

import numpy as np
import pytest

from scheduling.sim.profiles import (
    PROFILES,
    VENDORS,
    DeviceProfile,
    equilibrium_temperature,
    equilibrium_temperatures,
    get_profile,
    power_draw,
    thermal_step,
    throttle_factor,
)

T4 = PROFILES["t4"]  # idle 38 C, load 80 C, throttle 85 C, 5 % per degree, floor 0.3, tau 60 s


def test_required_profiles_and_vendors() -> None:
    assert {"h100", "a100", "t4", "mi250", "mi300x", "max1550", "cpu"} <= set(PROFILES)
    assert {p.vendor for p in PROFILES.values()} == set(VENDORS)
    assert PROFILES["mi300x"].vendor == "amd" and PROFILES["max1550"].vendor == "intel"
    assert PROFILES["a100"].relative_throughput == 1.0  # the reference
    assert all(name == p.name for name, p in PROFILES.items())


def test_speed_order() -> None:
    speed = {name: p.relative_throughput for name, p in PROFILES.items()}
    assert speed["h100"] > speed["mi300x"] > speed["a100"] > speed["max1550"] > speed["t4"]
    assert speed["t4"] > speed["cpu"]
    assert 2.5 <= speed["h100"] <= 3.0 and speed["cpu"] == pytest.approx(0.03)


def test_only_the_cpu_omits_power() -> None:
    assert [n for n, p in PROFILES.items() if not p.reports_power] == ["cpu"]


def test_unknown_profile_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown device profile 'v100'; valid: a100, cpu, h100"):
        get_profile("v100")
    assert get_profile("t4") is T4


def test_bad_profile_is_refused() -> None:
    with pytest.raises(
        ValueError, match="vendor must be one of nvidia, amd, intel, cpu; found 'tpu'"
    ):
        DeviceProfile("x", "tpu", "X", 1.0, 1024, 100, 10, 30, 70, 85, 60)
    with pytest.raises(ValueError, match="load_temp_c .* must exceed idle_temp_c"):
        DeviceProfile("x", "nvidia", "X", 1.0, 1024, 100, 10, 30, 30, 85, 60)
    with pytest.raises(ValueError, match="relative_throughput must be > 0"):
        DeviceProfile("x", "nvidia", "X", 0.0, 1024, 100, 10, 30, 70, 85, 60)


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (60.0, 1.0),  # cool
        (85.0, 1.0),  # at the throttle point
        (87.0, 0.9),  # 1 - 0.05 * 2
        (95.0, 0.5),  # 1 - 0.05 * 10
        (120.0, 0.3),  # 1 - 0.05 * 35 < 0.3: the floor
    ],
)
def test_throttle_factor(temperature: float, expected: float) -> None:
    assert throttle_factor(T4, temperature) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("utilization", "ambient", "expected"),
    [
        (0.0, 0.0, 38.0),  # idle
        (0.5, 0.0, 59.0),  # 38 + 42 * 0.5
        (1.0, 0.0, 80.0),  # 38 + 42: below 85, no throttling
        (1.0, 25.0, 91.4516129),  # A = 63, B = 42: (63 + 42 + 42 * 0.05 * 85) / (1 + 42 * 0.05)
        (1.0, 60.0, 110.6),  # T* = 102.7 gives f = 0.11 < 0.3: floor, 98 + 42 * 0.3
        (2.0, 0.0, 80.0),  # utilization clipped to 1
    ],
)
def test_equilibrium_temperature(utilization: float, ambient: float, expected: float) -> None:
    assert equilibrium_temperature(T4, utilization, ambient) == pytest.approx(expected)
    vector = equilibrium_temperatures(T4, np.array([utilization]), ambient)
    assert vector[0] == pytest.approx(expected)


def test_throttled_equilibrium_is_a_fixed_point() -> None:
    t_star = equilibrium_temperature(T4, 1.0, 25.0)
    f = throttle_factor(T4, t_star)  # 1 - 0.05 * (91.45 - 85) = 0.677
    assert f == pytest.approx(0.6774, abs=1e-4)
    assert 63.0 + 42.0 * f == pytest.approx(t_star)  # heat scales with the throttle factor


def test_thermal_step_heats_and_cools_exponentially() -> None:
    # from 38 C at full load: 80 + (38 - 80) * exp(-60 / 60) = 80 - 42 / e
    assert thermal_step(T4, 38.0, 1.0, 60.0) == pytest.approx(80.0 - 42.0 / np.e)
    # from 80 C idle: 38 + 42 / e
    assert thermal_step(T4, 80.0, 0.0, 60.0) == pytest.approx(38.0 + 42.0 / np.e)
    assert thermal_step(T4, 50.0, 1.0, 0.0) == 50.0
    assert thermal_step(T4, 50.0, 1.0, 1e6) == pytest.approx(80.0)


@pytest.mark.parametrize(
    ("name", "utilization", "throttle", "expected"),
    [
        ("a100", 0.0, 1.0, 55.0),  # idle power
        ("a100", 0.5, 1.0, 227.5),  # 55 + 345 * 0.5
        ("a100", 1.0, 1.0, 400.0),  # the limit
        ("t4", 1.0, 0.5, 40.0),  # throttled: 10 + 60 * 1 * 0.5
    ],
)
def test_power_draw(name: str, utilization: float, throttle: float, expected: float) -> None:
    assert power_draw(PROFILES[name], utilization, throttle) == pytest.approx(expected)
