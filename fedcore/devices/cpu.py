"""The host CPU: always available; telemetry through ``psutil``."""

from __future__ import annotations

import platform
from typing import ClassVar

import psutil

from fedcore.devices.base import DeviceAdapter, DeviceInfo, Reading

_MIB = 2**20
_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "acpitz")
"""``psutil.sensors_temperatures`` keys for the CPU package, most specific first."""


def _model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _temperature_c() -> float | None:
    read = getattr(psutil, "sensors_temperatures", None)  # absent on macOS and Windows
    if read is None:
        return None
    try:
        sensors = read()
    except Exception:
        return None
    for key in _SENSORS:
        if sensors.get(key):
            return float(max(s.current for s in sensors[key]))
    return None


class CpuAdapter(DeviceAdapter):
    """The host CPU as one device (torch ``cpu``); memory is host RAM."""

    name: ClassVar[str] = "cpu"
    torch_prefix: ClassVar[str] = "cpu"
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)

    @classmethod
    def _probe(cls) -> str | None:
        return None

    @classmethod
    def devices(cls) -> list[DeviceInfo]:
        """One device: the host CPU with the host's RAM."""
        return [DeviceInfo(0, _model(), cls.name, psutil.virtual_memory().total / _MIB)]

    @classmethod
    def telemetry(cls) -> list[Reading]:
        """Utilization since the previous call (first call: since import), RAM, package temperature."""
        mem = psutil.virtual_memory()
        return [
            Reading(
                index=0,
                vendor=cls.name,
                model=_model(),
                utilization_percent=float(psutil.cpu_percent(interval=None)),
                memory_used_mib=mem.used / _MIB,
                memory_total_mib=mem.total / _MIB,
                temperature_c=_temperature_c(),
            )
        ]

    @classmethod
    def _format_device(cls, index: int) -> str:
        return "cpu"
