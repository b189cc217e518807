"""NVIDIA GPUs: availability and telemetry through NVML (``pynvml``), compute through CUDA PyTorch."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, ClassVar

from fedcore.devices.base import DeviceAdapter, DeviceInfo, Reading, visible_indices

log = logging.getLogger(__name__)

_MIB = 2**20


def _nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


@contextmanager
def _session(nvml: Any) -> Iterator[Any]:
    """``nvmlInit`` ... ``nvmlShutdown`` (NVML counts these, so nesting is safe)."""
    nvml.nvmlInit()
    try:
        yield nvml
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutdown failing leaves nothing to clean
            pass


def _optional(fn: Any, *args: Any) -> Any:
    """An NVML query, or ``None`` where the GPU does not support it (``NVMLError_NotSupported``)."""
    try:
        return fn(*args)
    except Exception as exc:
        log.debug("NVML %s not available: %s", getattr(fn, "__name__", fn), exc)
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvidiaAdapter(DeviceAdapter):
    """NVIDIA GPUs (torch ``cuda:N``), read through NVML."""

    name: ClassVar[str] = "nvidia"
    torch_prefix: ClassVar[str] = "cuda"
    providers: ClassVar[tuple[str, ...]] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )

    @classmethod
    def _probe(cls) -> str | None:
        nvml = _nvml()
        if nvml is None:
            return "pynvml not installed (pip install nvidia-ml-py)"
        try:
            with _session(nvml):
                count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            return f"NVML did not start ({exc}); is the NVIDIA driver installed? `nvidia-smi` should list the GPUs"
        if count == 0:
            return "NVML found no GPU"
        import torch

        if torch.version.hip is not None:
            return "this PyTorch is a ROCm build (torch.version.hip is set); use device 'amd', or install a CUDA build of PyTorch"
        if not torch.cuda.is_available():
            return (
                f"NVML sees {count} GPU(s) but PyTorch cannot use them "
                f"(torch.version.cuda={torch.version.cuda}); install a CUDA build of PyTorch "
                "that matches the driver, and check CUDA_VISIBLE_DEVICES"
            )
        return None

    @classmethod
    def _handles(cls, nvml: Any) -> list[Any]:
        count = int(nvml.nvmlDeviceGetCount())
        return [
            nvml.nvmlDeviceGetHandleByIndex(i)
            for i in visible_indices("CUDA_VISIBLE_DEVICES", count)
        ]

    @classmethod
    def devices(cls) -> list[DeviceInfo]:
        """The GPUs PyTorch can use, named and sized by NVML."""
        nvml = _nvml()
        if nvml is None or not cls.is_available():
            return []
        with _session(nvml):
            return [
                DeviceInfo(
                    index=i,
                    name=_text(nvml.nvmlDeviceGetName(h)),
                    vendor=cls.name,
                    memory_total_mib=nvml.nvmlDeviceGetMemoryInfo(h).total / _MIB,
                )
                for i, h in enumerate(cls._handles(nvml))
            ]

    @classmethod
    def telemetry(cls) -> list[Reading]:
        """NVML readings per GPU: utilization, memory (bytes to MiB), temperature, power (mW to W)."""
        nvml = _nvml()
        if nvml is None or not cls.is_available():
            return []
        try:
            with _session(nvml):
                return [cls._read(nvml, i, h) for i, h in enumerate(cls._handles(nvml))]
        except Exception as exc:  # the driver went away mid-run: report nothing, say why
            log.warning("NVML telemetry failed: %s", exc)
            return []

    @classmethod
    def _read(cls, nvml: Any, index: int, handle: Any) -> Reading:
        util = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = _optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        temp = _optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        power_mw = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = _optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return Reading(
            index=index,
            vendor=cls.name,
            model=_text(nvml.nvmlDeviceGetName(handle)),
            utilization_percent=None if util is None else float(util.gpu),
            memory_used_mib=None if mem is None else mem.used / _MIB,
            memory_total_mib=None if mem is None else mem.total / _MIB,
            temperature_c=None if temp is None else float(temp),
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
        )
