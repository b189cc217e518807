"""Device adapters by name, and the choice of a site's device from its config's ``device`` field."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedcore.devices.amd import AmdAdapter
from fedcore.devices.base import DeviceAdapter, DeviceError, Reading
from fedcore.devices.cpu import CpuAdapter
from fedcore.devices.intel import IntelAdapter
from fedcore.devices.nvidia import NvidiaAdapter

ADAPTERS: dict[str, type[DeviceAdapter]] = {
    a.name: a for a in (NvidiaAdapter, AmdAdapter, IntelAdapter, CpuAdapter)
}
"""Every adapter by its name."""

ALIASES: dict[str, str] = {"cuda": "nvidia", "rocm": "amd", "xpu": "intel"}
"""Other names a site config may use: the torch or toolkit name of a vendor."""

AUTO_ORDER: tuple[str, ...] = ("nvidia", "amd", "intel")
"""What ``auto`` tries, in order, before falling back to the CPU."""

_SPEC = re.compile(r"(?P<name>[a-z]+)(?::(?P<index>\d+))?")


def _valid_names() -> str:
    return ", ".join(["auto", *ADAPTERS, *ALIASES])


def get_adapter(name: str) -> type[DeviceAdapter]:
    """The adapter class registered under ``name`` or one of its aliases.

    Raises:
        ValueError: ``name`` is not a known vendor; the message lists the valid names.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ADAPTERS:
        raise ValueError(f"unknown device vendor {name!r}; expected one of: {_valid_names()}")
    return ADAPTERS[key]


@dataclass(frozen=True)
class SelectedDevice:
    """The device a site trains on.

    Attributes:
        adapter: The vendor's adapter class.
        index: Device index within that vendor (0 for the CPU).
        torch_device: What to pass to ``torch``: ``"cuda:0"``, ``"xpu:1"``, ``"cpu"``.
    """

    adapter: type[DeviceAdapter]
    index: int
    torch_device: str

    @property
    def vendor(self) -> str:
        """The adapter's name: ``"nvidia"``, ``"amd"``, ``"intel"`` or ``"cpu"``."""
        return self.adapter.name

    def reading(self) -> Reading | None:
        """A telemetry reading of this device, or ``None`` if its vendor reports none."""
        return next((r for r in self.adapter.telemetry() if r.index == self.index), None)


def _available_summary() -> str:
    found = [
        f"{a.name} ({len(a.devices())})"
        for a in (ADAPTERS[n] for n in AUTO_ORDER)
        if a.is_available()
    ]
    return ", ".join([*found, "cpu"])


def select(spec: str) -> SelectedDevice:
    """Choose the device named by a site config's ``device`` field.

    Args:
        spec: ``"auto"`` (the first available of nvidia, amd, intel, else the CPU),
            ``"cpu"``, or a vendor with an optional index: ``"nvidia"``, ``"nvidia:1"``,
            ``"cuda:1"``, ``"amd"``, ``"rocm:0"``, ``"intel"``, ``"xpu:0"``.

    Returns:
        The adapter, device index and torch device string.

    Raises:
        ValueError: ``spec`` is not of the form ``vendor[:index]`` or names no known vendor.
        DeviceError: The pinned vendor is unavailable here, or has no such index; the
            message gives the adapter's reason and what this machine does have.
    """
    text = spec.strip().lower()
    if text == "auto":
        for name in AUTO_ORDER:
            adapter = ADAPTERS[name]
            if adapter.is_available():
                return SelectedDevice(adapter, 0, adapter.torch_device(0))
        return SelectedDevice(CpuAdapter, 0, CpuAdapter.torch_device(0))
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(
            f"device {spec!r}: expected 'auto' or VENDOR[:INDEX] such as 'cuda:1', with VENDOR one of: {_valid_names()}"
        )
    if match["name"] == "auto":
        raise ValueError(
            f"device {spec!r}: 'auto' takes the first device of the first available vendor and no index; pin one instead, e.g. 'cuda:1'"
        )
    adapter = get_adapter(match["name"])
    index = int(match["index"] or 0)
    reason = adapter.unavailable_reason()
    if reason is not None:
        raise DeviceError(
            f"device {spec!r} is not usable here: {reason}. "
            f"Available on this machine: {_available_summary()}; set the site config's 'device' to one of those or to 'auto'"
        )
    try:
        return SelectedDevice(adapter, index, adapter.torch_device(index))
    except DeviceError as exc:
        raise DeviceError(f"device {spec!r}: {exc}") from exc
