"""The device adapter interface: availability, devices, torch device strings and telemetry per vendor."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 10.0
"""Seconds a vendor tool (``rocm-smi``, ``xpu-smi``) may take before it counts as failed."""


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or a vendor tool failed."""


@dataclass(frozen=True)
class DeviceInfo:
    """One device as the framework addresses it.

    Attributes:
        index: Index in the torch device namespace (``cuda:<index>``, ``xpu:<index>``).
        name: Model name as the vendor reports it, e.g. ``"NVIDIA A100-SXM4-40GB"``.
        vendor: Adapter name: ``"nvidia"``, ``"amd"``, ``"intel"`` or ``"cpu"``.
        memory_total_mib: Device memory (host memory for the CPU) in MiB; ``None`` if unknown.
    """

    index: int
    name: str
    vendor: str
    memory_total_mib: float | None


@dataclass(frozen=True)
class Reading:
    """One telemetry sample of one device; a field is ``None`` where the vendor does not report it.

    Attributes:
        index: Device index (as in :class:`DeviceInfo`).
        vendor: Adapter name.
        model: Model name.
        utilization_percent: Compute utilization, 0-100.
        memory_used_mib: Memory in use, MiB.
        memory_total_mib: Memory in total, MiB.
        temperature_c: Core (GPU die or CPU package) temperature, degrees Celsius.
        power_w: Power draw, watts.
        power_limit_w: Enforced power limit, watts.
    """

    index: int
    vendor: str
    model: str
    utilization_percent: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None

    def metrics(self) -> dict[str, float]:
        """The numeric fields that were reported, keyed by field name (for a metrics record)."""
        out: dict[str, float] = {}
        for key, value in asdict(self).items():
            if key in ("index", "vendor", "model") or value is None:
                continue
            out[key] = float(value)
        return out


def _run_tool(args: Sequence[str]) -> str:
    """Run a vendor command-line tool and return its standard output.

    Every adapter reaches vendor tools through this one function, so tests replace it
    with recorded output.

    Args:
        args: The command and its arguments, e.g. ``["rocm-smi", "--json"]``.

    Returns:
        The tool's standard output as text.

    Raises:
        DeviceError: The tool is not on ``PATH``, timed out, or exited with an error.
    """
    exe = shutil.which(args[0])
    if exe is None:
        raise DeviceError(f"{args[0]} not on PATH (install the vendor's tools or add them to PATH)")
    try:
        done = subprocess.run(
            [exe, *args[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"{' '.join(args)} did not answer within {TOOL_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeviceError(f"{' '.join(args)} exited with {done.returncode}: {detail[0]}")
    return done.stdout


def visible_indices(env_var: str, count: int) -> list[int]:
    """Map torch device indices to vendor-library indices under a visibility variable.

    Vendor libraries (NVML, amdsmi) enumerate every device, while torch sees only those
    listed in e.g. ``CUDA_VISIBLE_DEVICES``. Entry ``i`` of the result is the vendor
    index of torch device ``i``.

    Args:
        env_var: ``"CUDA_VISIBLE_DEVICES"``, ``"HIP_VISIBLE_DEVICES"``, ...
        count: Devices the vendor library found.

    Returns:
        Vendor indices in torch order; all of them when the variable is unset or names
        devices by UUID (then the order is assumed to agree).
    """
    raw = os.environ.get(env_var)
    if raw is None:
        return list(range(count))
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    out: list[int] = []
    for part in parts:
        if not part.isdigit():
            log.warning("%s=%s names devices by UUID; telemetry assumes vendor order", env_var, raw)
            return list(range(count))
        idx = int(part)
        if idx >= count:
            break  # torch stops at the first invalid entry too
        out.append(idx)
    return out


class DeviceAdapter(ABC):
    """One accelerator vendor: whether it is usable here, its devices and their readings.

    Subclasses set :attr:`name`, :attr:`torch_prefix` and :attr:`providers` and implement
    :meth:`_probe`, :meth:`devices` and :meth:`telemetry`. Every method is a classmethod:
    an adapter holds no per-instance state. Nothing here touches a GPU at import time; the
    first :meth:`is_available` call probes, and its answer is cached until
    :meth:`reset_cache`.
    """

    name: ClassVar[str]
    """Registry name: ``"nvidia"``, ``"amd"``, ``"intel"`` or ``"cpu"``."""
    torch_prefix: ClassVar[str]
    """Torch device type: ``"cuda"`` (NVIDIA and ROCm builds), ``"xpu"`` or ``"cpu"``."""
    providers: ClassVar[tuple[str, ...]]
    """ONNX Runtime execution providers, fastest first."""

    _reasons: ClassVar[dict[str, str | None]] = {}

    @classmethod
    @abstractmethod
    def _probe(cls) -> str | None:
        """Check the vendor library, driver and torch build.

        Returns:
            ``None`` when the vendor's devices are usable, else why not and how to fix it.
        """

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this vendor's devices cannot be used here (cached), or ``None`` if they can."""
        if cls.name not in DeviceAdapter._reasons:
            try:
                reason = cls._probe()
            except Exception as exc:  # a broken driver must not take the site down
                reason = f"{cls.name} probe failed: {type(exc).__name__}: {exc}"
            DeviceAdapter._reasons[cls.name] = reason
            if reason is not None:
                log.debug("%s devices unavailable: %s", cls.name, reason)
        return DeviceAdapter._reasons[cls.name]

    @classmethod
    def is_available(cls) -> bool:
        """Whether this vendor has at least one usable device here (cached)."""
        return cls.unavailable_reason() is None

    @classmethod
    def reset_cache(cls) -> None:
        """Forget cached availability: every adapter's from the base class, else this one's."""
        if cls is DeviceAdapter:
            DeviceAdapter._reasons.clear()
        else:
            DeviceAdapter._reasons.pop(cls.name, None)

    @classmethod
    @abstractmethod
    def devices(cls) -> list[DeviceInfo]:
        """The usable devices, in torch index order (empty when unavailable)."""

    @classmethod
    @abstractmethod
    def telemetry(cls) -> list[Reading]:
        """One reading per device; fields the vendor tool lacks are ``None``. Never raises."""

    @classmethod
    def torch_device(cls, index: int | None = None) -> str:
        """The torch device string for device ``index`` (default 0), e.g. ``"cuda:1"``.

        Raises:
            DeviceError: The vendor is unavailable or has no device ``index``.
        """
        reason = cls.unavailable_reason()
        if reason is not None:
            raise DeviceError(f"no {cls.name} device: {reason}")
        idx = 0 if index is None else index
        count = len(cls.devices())
        if not 0 <= idx < count:
            raise DeviceError(
                f"{cls.name} device {idx} asked for, but this machine has {count} "
                f"(indices 0..{count - 1}); pick one of those in the site config's 'device' field"
            )
        return cls._format_device(idx)

    @classmethod
    def _format_device(cls, index: int) -> str:
        return f"{cls.torch_prefix}:{index}"

    @classmethod
    def onnx_providers(cls) -> list[str]:
        """ONNX Runtime execution providers to try for this vendor, fastest first."""
        return list(cls.providers)
