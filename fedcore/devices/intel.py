"""Intel GPUs: compute through ``torch.xpu``, telemetry through the ``xpu-smi`` tool."""

from __future__ import annotations

import csv
import io
import logging
from typing import Any, ClassVar

from fedcore.devices import base
from fedcore.devices.base import DeviceAdapter, DeviceError, DeviceInfo, Reading

log = logging.getLogger(__name__)

_MIB = 2**20

XPU_SMI_METRICS = "0,1,3,18"
"""``xpu-smi dump`` metric ids: 0 utilization (%), 1 power (W), 3 core temperature (C), 18 memory used (MiB)."""

_COLUMNS = {
    "GPU Utilization (%)": "utilization_percent",
    "GPU Power (W)": "power_w",
    "GPU Core Temperature (Celsius Degree)": "temperature_c",
    "GPU Memory Used (MiB)": "memory_used_mib",
}


def xpu_smi_args(device_id: int) -> list[str]:
    """The ``xpu-smi`` call that samples device ``device_id`` once."""
    return ["xpu-smi", "dump", "-d", str(device_id), "-m", XPU_SMI_METRICS, "-n", "1"]


def parse_xpu_smi(text: str) -> dict[str, float | None]:
    """The last sample of ``xpu-smi dump`` CSV output, keyed by :class:`Reading` field name.

    Args:
        text: The tool's standard output: a ``Timestamp, DeviceId, ...`` header, then rows.

    Returns:
        ``utilization_percent``, ``power_w``, ``temperature_c``, ``memory_used_mib``;
        ``None`` where the tool printed ``N/A`` or left the column out.

    Raises:
        DeviceError: No header or no sample in the output.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("Timestamp")), None)
    if start is None or start + 1 >= len(lines):
        raise DeviceError(
            f"xpu-smi dump: expected a 'Timestamp, DeviceId, ...' header and one sample, found {text.strip()[:200]!r}"
        )
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:])), skipinitialspace=True))
    header, sample = [h.strip() for h in rows[0]], [v.strip() for v in rows[-1]]
    values = dict(zip(header, sample, strict=False))
    out: dict[str, float | None] = {}
    for column, field in _COLUMNS.items():
        try:
            out[field] = float(values[column])
        except (KeyError, ValueError):
            out[field] = None
    return out


class IntelAdapter(DeviceAdapter):
    """Intel GPUs (torch ``xpu:N``), read through ``xpu-smi`` where installed."""

    name: ClassVar[str] = "intel"
    torch_prefix: ClassVar[str] = "xpu"
    providers: ClassVar[tuple[str, ...]] = ("OpenVINOExecutionProvider", "CPUExecutionProvider")

    @classmethod
    def _xpu(cls) -> Any:
        import torch

        return getattr(torch, "xpu", None)

    @classmethod
    def _probe(cls) -> str | None:
        xpu = cls._xpu()
        if xpu is None:
            return "this PyTorch has no torch.xpu; install PyTorch 2.5 or later with XPU support"
        if not xpu.is_available():
            return "torch.xpu found no Intel GPU; install the Intel GPU driver (Level Zero) and check ZE_AFFINITY_MASK"
        if int(xpu.device_count()) == 0:
            return "torch.xpu reports no device"
        return None

    @classmethod
    def devices(cls) -> list[DeviceInfo]:
        """The Intel GPUs PyTorch can use, as ``torch.xpu`` names and sizes them."""
        if not cls.is_available():
            return []
        xpu = cls._xpu()
        return [
            DeviceInfo(
                index=i,
                name=str(xpu.get_device_name(i)),
                vendor=cls.name,
                memory_total_mib=xpu.get_device_properties(i).total_memory / _MIB,
            )
            for i in range(int(xpu.device_count()))
        ]

    @classmethod
    def telemetry(cls) -> list[Reading]:
        """``xpu-smi`` readings per GPU; only name and memory size when the tool is missing.

        The xpu-smi device id is taken to be the torch index (true unless ZE_AFFINITY_MASK
        hides devices).
        """
        try:
            devices = cls.devices()
        except Exception as exc:
            log.warning("Intel GPU telemetry failed: %s", exc)
            return []
        out = []
        for d in devices:
            sample: dict[str, float | None] = {}
            try:
                sample = parse_xpu_smi(base._run_tool(xpu_smi_args(d.index)))
            except DeviceError as exc:
                log.warning("no xpu-smi telemetry for xpu:%d: %s", d.index, exc)
            out.append(
                Reading(
                    index=d.index,
                    vendor=cls.name,
                    model=d.name,
                    memory_total_mib=d.memory_total_mib,
                    utilization_percent=sample.get("utilization_percent"),
                    memory_used_mib=sample.get("memory_used_mib"),
                    temperature_c=sample.get("temperature_c"),
                    power_w=sample.get("power_w"),
                )
            )
        return out
