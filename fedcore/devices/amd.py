"""AMD GPUs: compute through PyTorch for ROCm, telemetry through ``amdsmi`` or the ``rocm-smi`` tool."""

from __future__ import annotations

import importlib
import json
import logging
import re
from dataclasses import replace
from types import ModuleType
from typing import Any, ClassVar

from fedcore.devices import base
from fedcore.devices.base import DeviceAdapter, DeviceError, DeviceInfo, Reading, visible_indices

log = logging.getLogger(__name__)

_MIB = 2**20
_SENTINELS = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)  # amdsmi fills fields a GPU lacks with all ones

ROCM_SMI_ARGS = (
    "rocm-smi",
    "--showuse",
    "--showmeminfo",
    "vram",
    "--showtemp",
    "--showpower",
    "--showmaxpower",
    "--showproductname",
    "--json",
)
"""The ``rocm-smi`` call whose JSON :func:`parse_rocm_smi` reads."""


def _num(value: Any, *, sentinel: bool = False) -> float | None:
    """A reported number, or ``None`` for ``"N/A"``, empty (or, with ``sentinel``, all-ones) values."""
    if isinstance(value, dict):  # amdsmi 7 wraps some values as {"value": ..., "unit": ...}
        value = value.get("value")
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    if out != out or (sentinel and out in _SENTINELS):
        return None
    return out


def _field(card: dict[str, Any], *patterns: str) -> Any:
    """The first reported value whose key matches one of ``patterns`` (regex, any case), in order."""
    for pattern in patterns:
        for key, value in card.items():
            if re.fullmatch(pattern, key, re.IGNORECASE) and str(value).strip() not in ("", "N/A"):
                return value
    return None


def parse_rocm_smi(text: str) -> list[Reading]:
    """Readings from ``rocm-smi ... --json`` output (``ROCM_SMI_ARGS``), one per ``cardN``.

    Power keys differ by generation: ``Average Graphics Package Power (W)`` up to MI200,
    ``Current Socket Graphics Package Power (W)`` on MI300. Temperature is the edge
    sensor, else the junction (hotspot) sensor.

    Args:
        text: The tool's standard output.

    Returns:
        Readings in card order, indexed from 0.

    Raises:
        DeviceError: The output is not the JSON object ``rocm-smi --json`` prints.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeviceError(
            f"rocm-smi printed no JSON ({exc}); run `{' '.join(ROCM_SMI_ARGS)}` by hand to see why"
        ) from exc
    if not isinstance(data, dict):
        raise DeviceError(
            f"rocm-smi JSON: expected an object of cards, found {type(data).__name__}"
        )
    cards = sorted(
        (int(k[4:]), v)
        for k, v in data.items()
        if re.fullmatch(r"card\d+", k) and isinstance(v, dict)
    )
    out = []
    for i, (_, card) in enumerate(cards):
        total_b = _num(_field(card, r"VRAM Total Memory \(B\)"))
        used_b = _num(_field(card, r"VRAM Total Used Memory \(B\)"))
        model = _field(card, r"Card series", r"Card SKU", r"Card model")
        out.append(
            Reading(
                index=i,
                vendor=AmdAdapter.name,
                model=str(model) if model is not None else "AMD GPU",
                utilization_percent=_num(_field(card, r"GPU use \(%\)")),
                memory_used_mib=None if used_b is None else used_b / _MIB,
                memory_total_mib=None if total_b is None else total_b / _MIB,
                temperature_c=_num(
                    _field(
                        card,
                        r"Temperature \(Sensor edge\) \(C\)",
                        r"Temperature \(Sensor junction\) \(C\)",
                    )
                ),
                power_w=_num(
                    _field(
                        card,
                        r"Current Socket Graphics Package Power \(W\)",
                        r"Average Graphics Package Power \(W\)",
                    )
                ),
                power_limit_w=_num(_field(card, r"Max Graphics Package Power \(W\)")),
            )
        )
    return out


def _amdsmi() -> ModuleType | None:
    try:
        return importlib.import_module("amdsmi")
    except ImportError:
        return None


def _call(fn: Any, *args: Any) -> Any:
    """An amdsmi query, or ``None`` where the GPU does not support it."""
    try:
        return fn(*args)
    except Exception as exc:
        log.debug("amdsmi %s not available: %s", getattr(fn, "__name__", fn), exc)
        return None


def read_amdsmi(smi: Any) -> list[Reading]:
    """Readings of every GPU through the ``amdsmi`` library (ROCm 6.x/7.x Python API).

    Units as the library reports them: VRAM in MiB, power and power limit in W,
    temperature in degrees Celsius.

    Args:
        smi: The imported ``amdsmi`` module.

    Returns:
        Readings in the library's processor order, indexed from 0.
    """
    smi.amdsmi_init()
    try:
        out = []
        for i, h in enumerate(smi.amdsmi_get_processor_handles()):
            asic = _call(smi.amdsmi_get_gpu_asic_info, h) or {}
            activity = _call(smi.amdsmi_get_gpu_activity, h) or {}
            vram = _call(smi.amdsmi_get_gpu_vram_usage, h) or {}
            power = _call(smi.amdsmi_get_power_info, h) or {}
            temp = None
            types = smi.AmdSmiTemperatureType
            for sensor in ("EDGE", "HOTSPOT", "JUNCTION"):
                if hasattr(types, sensor):
                    temp = _num(
                        _call(
                            smi.amdsmi_get_temp_metric,
                            h,
                            getattr(types, sensor),
                            smi.AmdSmiTemperatureMetric.CURRENT,
                        ),
                        sentinel=True,
                    )
                    if temp is not None:
                        break
            watts = next(
                (
                    w
                    for w in (
                        _num(power.get(k), sentinel=True)
                        for k in ("socket_power", "current_socket_power", "average_socket_power")
                    )
                    if w is not None
                ),
                None,
            )
            out.append(
                Reading(
                    index=i,
                    vendor=AmdAdapter.name,
                    model=str(asic.get("market_name") or "AMD GPU"),
                    utilization_percent=_num(activity.get("gfx_activity"), sentinel=True),
                    memory_used_mib=_num(vram.get("vram_used"), sentinel=True),
                    memory_total_mib=_num(vram.get("vram_total"), sentinel=True),
                    temperature_c=temp,
                    power_w=watts,
                    power_limit_w=_num(power.get("power_limit"), sentinel=True),
                )
            )
        return out
    finally:
        _call(smi.amdsmi_shut_down)


class AmdAdapter(DeviceAdapter):
    """AMD GPUs (torch ``cuda:N`` on a ROCm build), read through amdsmi or ``rocm-smi``."""

    name: ClassVar[str] = "amd"
    torch_prefix: ClassVar[str] = "cuda"
    providers: ClassVar[tuple[str, ...]] = (
        "MIGraphXExecutionProvider",
        "ROCMExecutionProvider",
        "CPUExecutionProvider",
    )

    @classmethod
    def _probe(cls) -> str | None:
        import torch

        if torch.version.hip is None:
            return "this PyTorch is not a ROCm build (torch.version.hip is None); install PyTorch for ROCm (https://pytorch.org, ROCm wheels)"
        if not torch.cuda.is_available():
            return "PyTorch for ROCm found no AMD GPU; check that the amdgpu driver is loaded, that this user may open /dev/kfd and /dev/dri, and HIP_VISIBLE_DEVICES"
        return None

    @classmethod
    def _vendor_readings(cls) -> list[Reading] | None:
        """Readings from amdsmi, else rocm-smi, in torch order; ``None`` (logged) if neither works."""
        why = []
        smi = _amdsmi()
        readings: list[Reading] | None = None
        if smi is None:
            why.append("amdsmi not installed (pip install amdsmi, matching the ROCm version)")
        else:
            try:
                readings = read_amdsmi(smi)
            except Exception as exc:
                why.append(f"amdsmi failed: {exc}")
        if readings is None:
            try:
                readings = parse_rocm_smi(base._run_tool(ROCM_SMI_ARGS))
            except DeviceError as exc:
                why.append(str(exc))
        if readings is None:
            log.warning("no AMD telemetry: %s", "; ".join(why))
            return None
        order = visible_indices("HIP_VISIBLE_DEVICES", len(readings))
        return [replace(readings[v], index=i) for i, v in enumerate(order)]

    @classmethod
    def _torch_devices(cls) -> list[DeviceInfo]:
        import torch

        return [
            DeviceInfo(
                index=i,
                name=torch.cuda.get_device_name(i),
                vendor=cls.name,
                memory_total_mib=torch.cuda.get_device_properties(i).total_memory / _MIB,
            )
            for i in range(torch.cuda.device_count())
        ]

    @classmethod
    def devices(cls) -> list[DeviceInfo]:
        """The AMD GPUs PyTorch can use, named by amdsmi / rocm-smi, else by PyTorch."""
        if not cls.is_available():
            return []
        readings = cls._vendor_readings()
        if readings is None:
            return cls._torch_devices()
        return [DeviceInfo(r.index, r.model, cls.name, r.memory_total_mib) for r in readings]

    @classmethod
    def telemetry(cls) -> list[Reading]:
        """amdsmi (or ``rocm-smi``) readings; only name and memory size when neither is present."""
        if not cls.is_available():
            return []
        readings = cls._vendor_readings()
        if readings is not None:
            return readings
        try:
            return [
                Reading(d.index, cls.name, d.name, memory_total_mib=d.memory_total_mib)
                for d in cls._torch_devices()
            ]
        except Exception as exc:
            log.warning("AMD telemetry failed: %s", exc)
            return []
