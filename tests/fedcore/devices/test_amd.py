"""AMD adapter: amdsmi and rocm-smi readings replayed from recorded MI300X and MI250 nodes."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import pytest
import torch

from fedcore.devices import AmdAdapter, DeviceError
from fedcore.devices.amd import ROCM_SMI_ARGS, parse_rocm_smi
from fedcore.devices.base import Reading

Tools = Callable[[dict[str, str]], list[list[str]]]


def test_rocm_smi_mi250(recorded: Callable[[str], str]) -> None:
    gcd0, gcd1 = parse_rocm_smi(recorded("rocm_smi_mi250.json"))  # the "system" entry is skipped
    # 45097156608 B / 2**20 = 43008 MiB of 68702699520 B = 65520 MiB
    assert gcd0 == Reading(
        index=0,
        vendor="amd",
        model="AMD INSTINCT MI250 (MCM) OAM AC MBA",
        utilization_percent=93.0,
        memory_used_mib=43008.0,
        memory_total_mib=65520.0,
        temperature_c=45.0,  # edge sensor first
        power_w=212.0,
        power_limit_w=560.0,
    )
    # the second die of an MI250 reports no package power: N/A -> None
    assert (gcd1.memory_used_mib, gcd1.power_w, gcd1.power_limit_w) == (11.0, None, None)


def test_rocm_smi_mi300x_keys(recorded: Callable[[str], str]) -> None:
    (r,) = parse_rocm_smi(recorded("rocm_smi_mi300x.json"))
    # MI300: no edge sensor (junction instead), "Current Socket" power, "Card Series" capitalised
    assert (r.model, r.temperature_c, r.power_w, r.power_limit_w) == (
        "AMD Instinct MI300X OAM",
        68.0,
        598.0,
        750.0,
    )
    assert (r.memory_used_mib, r.memory_total_mib) == (166400.0, 196592.0)


def test_rocm_smi_garbage_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="rocm-smi printed no JSON"):
        parse_rocm_smi("ERROR: GPU[0] : Unable to open /dev/kfd")


def test_amdsmi_mi300x(rocm_torch: None, fake_amdsmi: types.ModuleType, tools: Tools) -> None:
    calls = tools({})
    (r,) = AmdAdapter.telemetry()
    assert r == Reading(
        index=0,
        vendor="amd",
        model="AMD Instinct MI300X",
        utilization_percent=76.0,
        memory_used_mib=120832.0,
        memory_total_mib=196592.0,
        temperature_c=71.0,  # edge raises NOT_SUPPORTED -> hotspot
        power_w=612.0,
        power_limit_w=750.0,
    )
    assert calls == []  # the library answered; no tool was run
    assert fake_amdsmi.shutdowns == 1


def test_falls_back_to_rocm_smi_without_amdsmi(
    rocm_torch: None, tools: Tools, recorded: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    calls = tools({"rocm-smi": recorded("rocm_smi_mi250.json")})
    readings = AmdAdapter.telemetry()
    assert calls == [list(ROCM_SMI_ARGS)]
    assert [r.utilization_percent for r in readings] == [93.0, 0.0]
    assert [d.name for d in AmdAdapter.devices()] == ["AMD INSTINCT MI250 (MCM) OAM AC MBA"] * 2
    assert AmdAdapter.torch_device(1) == "cuda:1"  # ROCm builds of PyTorch use "cuda"


def test_hip_visible_devices_reindexes(
    rocm_torch: None, tools: Tools, recorded: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    tools({"rocm-smi": recorded("rocm_smi_mi250.json")})
    (r,) = AmdAdapter.telemetry()
    assert (r.index, r.utilization_percent) == (0, 0.0)


def test_no_amdsmi_no_rocm_smi_still_reports_devices(
    rocm_torch: None,
    tools: Tools,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    tools({})
    readings = AmdAdapter.telemetry()
    assert [(r.model, r.memory_total_mib, r.utilization_percent) for r in readings] == [
        ("AMD Instinct MI250X/MI250", 65520.0, None)
    ] * 2
    assert "amdsmi not installed" in caplog.text and "rocm-smi not on PATH" in caplog.text


def test_cuda_torch_is_not_amd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    reason = AmdAdapter.unavailable_reason()
    assert reason is not None and "not a ROCm build" in reason
    assert AmdAdapter.telemetry() == []
    assert AmdAdapter.onnx_providers() == [
        "MIGraphXExecutionProvider",
        "ROCMExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_amdsmi_all_ones_means_not_reported(
    rocm_torch: None, fake_amdsmi: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an MI210 through amdsmi: no instantaneous power (0xFFFFFFFF), an average instead
    power = {"current_socket_power": 0xFFFFFFFF, "average_socket_power": 212, "power_limit": 300}
    monkeypatch.setattr(fake_amdsmi, "amdsmi_get_power_info", lambda h: power)
    (r,) = AmdAdapter.telemetry()
    assert (r.power_w, r.power_limit_w) == (212.0, 300.0)
