"""Device profiles of the simulated cluster (speed, memory, power, heat) and their thermal physics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VENDORS = ("nvidia", "amd", "intel", "cpu")
"""Vendors a profile may name, as the device adapters of ``fedcore.devices`` name them."""


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of training device.

    Temperatures are at the site's nominal room temperature; a site's
    ``ambient_offset_c`` shifts all of them.

    Attributes:
        name: Registry name, e.g. ``"a100"``.
        vendor: One of :data:`VENDORS`.
        model: Model name as the vendor's tools report it.
        relative_throughput: Training speed relative to an NVIDIA A100 (= 1.0).
        memory_mib: Device memory (host RAM for a CPU), MiB.
        power_limit_w: Board power limit (TDP for a CPU), watts.
        idle_power_w: Power at 0 % utilization, watts.
        idle_temp_c: Steady temperature at 0 % utilization, degrees Celsius.
        load_temp_c: Steady temperature at 100 % utilization without throttling.
        throttle_temp_c: Temperature above which the device lowers its clocks.
        heat_time_constant_s: Time constant of the exponential approach to the steady
            temperature, seconds.
        throttle_per_c: Share of speed lost per degree above ``throttle_temp_c``.
        min_throttle: Lowest throttle factor (speed share) the device falls to.
        reports_power: Whether telemetry carries power figures (a CPU adapter has none).
    """

    name: str
    vendor: str
    model: str
    relative_throughput: float
    memory_mib: float
    power_limit_w: float
    idle_power_w: float
    idle_temp_c: float
    load_temp_c: float
    throttle_temp_c: float
    heat_time_constant_s: float
    throttle_per_c: float = 0.05
    min_throttle: float = 0.3
    reports_power: bool = True

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(
                f"profile {self.name!r}: vendor must be one of {', '.join(VENDORS)}; found {self.vendor!r}"
            )
        positive = {
            "relative_throughput": self.relative_throughput,
            "memory_mib": self.memory_mib,
            "power_limit_w": self.power_limit_w,
            "heat_time_constant_s": self.heat_time_constant_s,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"profile {self.name!r}: {key} must be > 0; found {value!r}")
        if not 0 <= self.idle_power_w <= self.power_limit_w:
            raise ValueError(
                f"profile {self.name!r}: idle_power_w must be in [0, power_limit_w={self.power_limit_w}]; "
                f"found {self.idle_power_w!r}"
            )
        if not self.idle_temp_c < self.load_temp_c:
            raise ValueError(
                f"profile {self.name!r}: load_temp_c ({self.load_temp_c}) must exceed idle_temp_c "
                f"({self.idle_temp_c})"
            )
        if not self.idle_temp_c < self.throttle_temp_c:
            raise ValueError(
                f"profile {self.name!r}: throttle_temp_c ({self.throttle_temp_c}) must exceed "
                f"idle_temp_c ({self.idle_temp_c})"
            )
        if not 0 < self.min_throttle <= 1 or self.throttle_per_c < 0:
            raise ValueError(
                f"profile {self.name!r}: need 0 < min_throttle <= 1 and throttle_per_c >= 0; "
                f"found {self.min_throttle!r} and {self.throttle_per_c!r}"
            )


# Relative throughputs: FP32/TF32 training of small and medium models, A100 = 1.0.
# Basis: vendor peak dense TF32/FP32-matrix figures discounted to what published
# training benchmarks reach (MLPerf Training, vendor blogs): H100 SXM ~2.5-3x A100;
# MI300X ~2x; MI250 (both dies) about an A100; Data Center GPU Max 1550 ~0.9x;
# T4 (8.1 TFLOPS FP32, no TF32 cores) ~0.2x; a dual-socket server CPU ~0.03x.
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "h100", "nvidia", "NVIDIA H100 80GB HBM3", 2.7, 81_559, 700, 70, 33, 76, 87, 90
        ),
        DeviceProfile(
            "a100", "nvidia", "NVIDIA A100-SXM4-40GB", 1.0, 40_960, 400, 55, 32, 72, 88, 90
        ),
        DeviceProfile("t4", "nvidia", "Tesla T4", 0.2, 15_360, 70, 10, 38, 80, 85, 60),
        DeviceProfile("mi250", "amd", "AMD Instinct MI250", 1.0, 131_072, 500, 90, 35, 82, 95, 100),
        DeviceProfile(
            "mi300x", "amd", "AMD Instinct MI300X", 2.0, 196_608, 750, 140, 38, 85, 100, 120
        ),
        DeviceProfile(
            "max1550",
            "intel",
            "Intel(R) Data Center GPU Max 1550",
            0.9,
            131_072,
            600,
            100,
            35,
            80,
            95,
            100,
        ),
        DeviceProfile(
            "cpu",
            "cpu",
            "Intel(R) Xeon(R) Platinum 8480+ (2 sockets)",
            0.03,
            262_144,
            350,
            90,
            40,
            78,
            95,
            45,
            reports_power=False,
        ),
    )
}
"""Device profiles by name: ``h100``, ``a100``, ``t4``, ``mi250``, ``mi300x``, ``max1550``, ``cpu``."""


def get_profile(name: str) -> DeviceProfile:
    """The profile called ``name``.

    Raises:
        ValueError: No such profile; the message lists the valid names.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown device profile {name!r}; valid: {', '.join(sorted(PROFILES))}"
        ) from None


def throttle_factor(profile: DeviceProfile, temperature_c: float) -> float:
    """Share of full speed the device runs at, given its temperature.

    1 at or below ``throttle_temp_c`` (a property of the silicon: it does not move with
    the room), then ``throttle_per_c`` less per degree above it, never below
    ``min_throttle``.

    >>> round(throttle_factor(PROFILES["t4"], 87.0), 6)  # 1 - 0.05 * (87 - 85)
    0.9
    """
    excess = temperature_c - profile.throttle_temp_c
    if excess <= 0:
        return 1.0
    return max(profile.min_throttle, 1.0 - profile.throttle_per_c * excess)


def equilibrium_temperature(
    profile: DeviceProfile, utilization: float, ambient_offset_c: float = 0.0
) -> float:
    """Temperature the device settles at under constant ``utilization`` (0-1), throttling included.

    Unthrottled, the steady temperature is ``A + B`` with ``A = idle_temp_c + ambient``
    and ``B = (load_temp_c - idle_temp_c) * utilization``. Heat scales with the throttle
    factor ``f(T) = 1 - k (T - T_thr)``, so above the throttle point the fixed point of
    ``T = A + B f(T)`` is ``T* = (A + B + B k T_thr) / (1 + B k)``, floored by
    ``f = min_throttle`` (then ``T* = A + B min_throttle``).

    Args:
        profile: The device.
        utilization: Busy share, clipped to [0, 1].
        ambient_offset_c: Room temperature above nominal, degrees.
    """
    u = min(1.0, max(0.0, utilization))
    a = profile.idle_temp_c + ambient_offset_c
    b = (profile.load_temp_c - profile.idle_temp_c) * u
    if a + b <= profile.throttle_temp_c:
        return a + b
    k = profile.throttle_per_c
    t_star = (a + b + b * k * profile.throttle_temp_c) / (1.0 + b * k)
    if 1.0 - k * (t_star - profile.throttle_temp_c) < profile.min_throttle:
        return a + b * profile.min_throttle
    return t_star


def equilibrium_temperatures(
    profile: DeviceProfile, utilization: np.ndarray, ambient_offset_c: float = 0.0
) -> np.ndarray:
    """:func:`equilibrium_temperature` of every utilization at once, ``float64``."""
    u = np.clip(np.asarray(utilization, dtype=np.float64), 0.0, 1.0)
    a = profile.idle_temp_c + ambient_offset_c
    b = (profile.load_temp_c - profile.idle_temp_c) * u
    k = profile.throttle_per_c
    t_star = (a + b + b * k * profile.throttle_temp_c) / (1.0 + b * k)
    floored = np.where(
        1.0 - k * (t_star - profile.throttle_temp_c) < profile.min_throttle,
        a + b * profile.min_throttle,
        t_star,
    )
    out: np.ndarray = np.where(a + b <= profile.throttle_temp_c, a + b, floored)
    return out


def thermal_step(
    profile: DeviceProfile,
    temperature_c: float,
    utilization: float,
    dt_s: float,
    ambient_offset_c: float = 0.0,
) -> float:
    """Temperature after ``dt_s`` seconds at constant utilization: exponential approach to equilibrium.

    ``T(dt) = T* + (T - T*) exp(-dt / tau)`` with ``T*`` from
    :func:`equilibrium_temperature`; heats under load, cools when idle.
    """
    target = equilibrium_temperature(profile, utilization, ambient_offset_c)
    return target + (temperature_c - target) * math.exp(
        -max(0.0, dt_s) / profile.heat_time_constant_s
    )


def power_draw(profile: DeviceProfile, utilization: float, throttle: float = 1.0) -> float:
    """Power at ``utilization`` (0-1) and throttle factor: idle + (limit - idle) * u * f, watts.

    >>> power_draw(PROFILES["a100"], 0.5)  # 55 + (400 - 55) * 0.5
    227.5
    """
    u = min(1.0, max(0.0, utilization))
    return profile.idle_power_w + (profile.power_limit_w - profile.idle_power_w) * u * throttle
