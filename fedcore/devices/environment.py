"""What a site reads from its own machine (host and device readings, its clock); a simulator substitutes its own."""

from __future__ import annotations

from typing import Protocol

from fedcore.devices.registry import SelectedDevice


class SiteEnvironment(Protocol):
    """Where a site's telemetry readings and training time come from.

    Production sites use :class:`HostEnvironment`. A simulated consortium
    (``scheduling.sim``) hands each site an environment of its own, so that the site
    reports its simulated device's readings and time while the handlers stay the same.
    """

    def readings(self, device: SelectedDevice) -> dict[str, float]:
        """The readings the site reports, units in the names (``cpu_util_percent``...)."""
        ...

    def train_seconds(self, measured: float) -> float:
        """The seconds the site reports for a round of training that took ``measured``."""
        ...


class HostEnvironment:
    """The real machine: host CPU and memory from ``psutil``, the device from its adapter."""

    def readings(self, device: SelectedDevice) -> dict[str, float]:
        """Host load and memory, plus the training device's own readings as ``device_*``."""
        import psutil

        mem = psutil.virtual_memory()
        out = {
            "cpu_util_percent": float(psutil.cpu_percent(interval=None)),
            "mem_used_mib": float(mem.used / 2**20),
            "mem_total_mib": float(mem.total / 2**20),
            "cpu_count": float(psutil.cpu_count() or 1),
        }
        reading = device.reading()
        if reading is not None:  # the training device's own readings, units in the names
            out.update({f"device_{k}": float(v) for k, v in reading.metrics().items()})
        return out

    def train_seconds(self, measured: float) -> float:
        """The wall seconds measured."""
        return measured
