"""Fakes that replay recorded vendor readings: a ``pynvml``, an ``amdsmi``, a ``torch.xpu`` and tool output."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from fedcore.devices import base
from fedcore.devices.base import DeviceAdapter, DeviceError

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_text(name: str) -> str:
    """A recorded reading from ``fixtures/``."""
    return (FIXTURES / name).read_text()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    DeviceAdapter.reset_cache()
    yield
    DeviceAdapter.reset_cache()


class NVMLError(Exception):
    """Stands in for ``pynvml.NVMLError``."""


def make_pynvml(gpus: list[dict[str, Any]], *, init_error: str | None = None) -> types.ModuleType:
    """A ``pynvml`` module answering from ``gpus`` (recorded NVML values, fixture layout)."""
    m = types.ModuleType("pynvml")
    m.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.init_calls = 0  # type: ignore[attr-defined]

    def init() -> None:
        if init_error is not None:
            raise NVMLError(init_error)
        m.init_calls += 1  # type: ignore[attr-defined]

    def supported(key: str) -> Callable[[int], Any]:
        def query(h: int) -> Any:
            value = gpus[h][key]
            if value is None:
                raise NVMLError("Not Supported")
            return value

        return query

    def memory(h: int) -> Any:
        g = gpus[h]
        total, used = g["memory_total_b"], g["memory_used_b"]
        return types.SimpleNamespace(total=total, used=used, free=total - used)

    def temperature(h: int, sensor: int) -> int:
        assert sensor == 0
        return int(gpus[h]["temperature_gpu_c"])

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: gpus[h]["name"]  # type: ignore[attr-defined]
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=gpus[h]["utilization_gpu"], memory=gpus[h]["utilization_memory"]
    )
    m.nvmlDeviceGetMemoryInfo = memory  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = temperature  # type: ignore[attr-defined]
    m.nvmlDeviceGetPowerUsage = supported("power_usage_mw")  # type: ignore[attr-defined]
    m.nvmlDeviceGetEnforcedPowerLimit = supported("enforced_power_limit_mw")  # type: ignore[attr-defined]
    return m


def make_amdsmi(gpus: list[dict[str, Any]]) -> types.ModuleType:
    """An ``amdsmi`` module answering from ``gpus`` (recorded amdsmi dicts, fixture layout)."""
    m = types.ModuleType("amdsmi")

    class AmdSmiLibraryException(Exception):
        pass

    m.AmdSmiTemperatureType = types.SimpleNamespace(  # type: ignore[attr-defined]
        EDGE="EDGE", HOTSPOT="HOTSPOT", JUNCTION="HOTSPOT", VRAM="VRAM"
    )
    m.AmdSmiTemperatureMetric = types.SimpleNamespace(CURRENT="CURRENT")  # type: ignore[attr-defined]
    m.shutdowns = 0  # type: ignore[attr-defined]

    def temp(h: int, sensor: str, metric: str) -> int:
        assert metric == "CURRENT"
        value = gpus[h]["temperature_c"].get(sensor)
        if value is None:
            raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")
        return int(value)

    def shut_down() -> None:
        m.shutdowns += 1  # type: ignore[attr-defined]

    m.amdsmi_init = lambda *flags: None  # type: ignore[attr-defined]
    m.amdsmi_shut_down = shut_down  # type: ignore[attr-defined]
    m.amdsmi_get_processor_handles = lambda: list(range(len(gpus)))  # type: ignore[attr-defined]
    m.amdsmi_get_gpu_asic_info = lambda h: gpus[h]["asic_info"]  # type: ignore[attr-defined]
    m.amdsmi_get_gpu_activity = lambda h: gpus[h]["activity"]  # type: ignore[attr-defined]
    m.amdsmi_get_gpu_vram_usage = lambda h: gpus[h]["vram"]  # type: ignore[attr-defined]
    m.amdsmi_get_power_info = lambda h: gpus[h]["power"]  # type: ignore[attr-defined]
    m.amdsmi_get_temp_metric = temp  # type: ignore[attr-defined]
    return m


@pytest.fixture
def fake_nvidia(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The recorded 2x A100 node: fake ``pynvml`` and a CUDA PyTorch that sees both GPUs."""
    gpus = json.loads(fixture_text("nvml_a100.json"))["gpus"]
    nvml = make_pynvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return nvml


@pytest.fixture
def rocm_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyTorch-for-ROCm build that sees two GPUs (names as PyTorch reports them)."""
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "AMD Instinct MI250X/MI250")
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(total_memory=68702699520),
    )
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def fake_xpu(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A ``torch.xpu`` with one Intel Data Center GPU Max 1550."""
    xpu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        get_device_name=lambda i: "Intel(R) Data Center GPU Max 1550",
        get_device_properties=lambda i: types.SimpleNamespace(total_memory=68719476736),
    )
    monkeypatch.setattr(torch, "xpu", xpu, raising=False)
    return xpu


ToolAnswers = dict[str, str]


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> Callable[[ToolAnswers], list[list[str]]]:
    """Replace ``_run_tool``: each tool name answers with its recorded output, others are absent.

    Returns a function taking ``{tool: output}`` and returning the list of calls made.
    """

    def install(answers: ToolAnswers) -> list[list[str]]:
        calls: list[list[str]] = []

        def run(args: Sequence[str]) -> str:
            calls.append(list(args))
            if args[0] not in answers:
                raise DeviceError(
                    f"{args[0]} not on PATH (install the vendor's tools or add them to PATH)"
                )
            return answers[args[0]]

        monkeypatch.setattr(base, "_run_tool", run)
        return calls

    return install


@pytest.fixture
def recorded() -> Callable[[str], str]:
    """Read a recorded reading from ``fixtures/`` by file name."""
    return fixture_text


@pytest.fixture
def fake_amdsmi(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The recorded MI300X answers through a fake ``amdsmi`` module."""
    smi = make_amdsmi(json.loads(fixture_text("amdsmi_mi300x.json"))["gpus"])
    monkeypatch.setitem(sys.modules, "amdsmi", smi)
    return smi
