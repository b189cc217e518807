"""Intel adapter: torch.xpu faked, xpu-smi output replayed from recorded Max 1550 and Flex 170 samples."""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest
import torch

from fedcore.devices import DeviceError, IntelAdapter
from fedcore.devices.intel import parse_xpu_smi, xpu_smi_args

Tools = Callable[[dict[str, str]], list[list[str]]]


def test_parse_max1550(recorded: Callable[[str], str]) -> None:
    assert parse_xpu_smi(recorded("xpu_smi_max1550.csv")) == {
        "utilization_percent": 98.73,
        "power_w": 386.52,
        "temperature_c": 62.0,
        "memory_used_mib": 88213.41,
    }


def test_parse_na_is_none(recorded: Callable[[str], str]) -> None:
    assert parse_xpu_smi(recorded("xpu_smi_flex170_na.csv"))["temperature_c"] is None


def test_parse_without_sample_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="expected a 'Timestamp, DeviceId"):
        parse_xpu_smi("Error: Level Zero Initialization Error\n")


def test_telemetry_and_devices(
    fake_xpu: types.SimpleNamespace, tools: Tools, recorded: Callable[[str], str]
) -> None:
    calls = tools({"xpu-smi": recorded("xpu_smi_max1550.csv")})
    (r,) = IntelAdapter.telemetry()
    assert (
        calls == [xpu_smi_args(0)] == [["xpu-smi", "dump", "-d", "0", "-m", "0,1,3,18", "-n", "1"]]
    )
    assert (r.model, r.utilization_percent, r.memory_used_mib, r.power_w, r.temperature_c) == (
        "Intel(R) Data Center GPU Max 1550",
        98.73,
        88213.41,
        386.52,
        62.0,
    )
    assert r.memory_total_mib == 65536.0  # 68719476736 B from torch.xpu
    assert r.power_limit_w is None  # xpu-smi dump does not report it
    assert IntelAdapter.torch_device() == "xpu:0"
    assert IntelAdapter.onnx_providers() == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]


def test_without_xpu_smi(fake_xpu: types.SimpleNamespace, tools: Tools) -> None:
    tools({})
    (r,) = IntelAdapter.telemetry()
    assert r.memory_total_mib == 65536.0 and r.utilization_percent is None


def test_torch_without_xpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "xpu", raising=False)
    reason = IntelAdapter.unavailable_reason()
    assert reason is not None and "no torch.xpu" in reason
    assert IntelAdapter.telemetry() == []


def test_xpu_without_gpu(fake_xpu: types.SimpleNamespace) -> None:
    fake_xpu.is_available = lambda: False
    reason = IntelAdapter.unavailable_reason()
    assert reason is not None and "found no Intel GPU" in reason
    with pytest.raises(DeviceError, match="no intel device"):
        IntelAdapter.torch_device(0)
