"""Device adapters: which accelerators a site has, which torch device to use, and their telemetry."""

from __future__ import annotations

from fedcore.devices.amd import AmdAdapter
from fedcore.devices.base import DeviceAdapter, DeviceError, DeviceInfo, Reading
from fedcore.devices.cpu import CpuAdapter
from fedcore.devices.intel import IntelAdapter
from fedcore.devices.nvidia import NvidiaAdapter
from fedcore.devices.registry import ADAPTERS, SelectedDevice, get_adapter, select

__all__ = [
    "ADAPTERS",
    "AmdAdapter",
    "CpuAdapter",
    "DeviceAdapter",
    "DeviceError",
    "DeviceInfo",
    "IntelAdapter",
    "NvidiaAdapter",
    "Reading",
    "SelectedDevice",
    "get_adapter",
    "select",
]
