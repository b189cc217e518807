"""NVIDIA adapter: NVML readings replayed from a recorded A100 node, and one real-GPU check."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from fedcore.devices import DeviceAdapter, NvidiaAdapter
from fedcore.devices.base import Reading


def test_a100_reading_converts_units(fake_nvidia: types.ModuleType) -> None:
    busy, idle = NvidiaAdapter.telemetry()
    # 31994150912 B / 2**20 = 30512 MiB; 287300 mW / 1000 = 287.3 W
    assert busy == Reading(
        index=0,
        vendor="nvidia",
        model="NVIDIA A100-SXM4-40GB",
        utilization_percent=87.0,
        memory_used_mib=30512.0,
        memory_total_mib=40960.0,
        temperature_c=64.0,
        power_w=287.3,
        power_limit_w=400.0,
    )
    # the idle board has no power telemetry: None, not 0
    assert (idle.utilization_percent, idle.memory_used_mib, idle.temperature_c) == (0.0, 4.0, 31.0)
    assert idle.power_w is None and idle.power_limit_w is None
    assert "power_w" not in idle.metrics() and idle.metrics()["memory_total_mib"] == 40960.0


def test_devices_and_torch_strings(fake_nvidia: types.ModuleType) -> None:
    assert NvidiaAdapter.is_available()
    assert [(d.index, d.name, d.memory_total_mib) for d in NvidiaAdapter.devices()] == [
        (0, "NVIDIA A100-SXM4-40GB", 40960.0),
        (1, "NVIDIA A100-SXM4-40GB", 40960.0),
    ]
    assert NvidiaAdapter.torch_device() == "cuda:0"
    assert NvidiaAdapter.torch_device(1) == "cuda:1"
    assert NvidiaAdapter.onnx_providers() == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_cuda_visible_devices_maps_torch_index_to_nvml(
    fake_nvidia: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # torch's cuda:0 is NVML's GPU 1
    (only,) = NvidiaAdapter.telemetry()
    assert (only.index, only.temperature_c) == (0, 31.0)


def test_missing_pynvml_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert not NvidiaAdapter.is_available()
    assert NvidiaAdapter.unavailable_reason() == "pynvml not installed (pip install nvidia-ml-py)"
    assert NvidiaAdapter.devices() == [] and NvidiaAdapter.telemetry() == []


def test_nvml_without_gpus(fake_nvidia: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_nvidia, "nvmlDeviceGetCount", lambda: 0)
    assert NvidiaAdapter.unavailable_reason() == "NVML found no GPU"


def test_nvml_without_driver(
    fake_nvidia: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(fake_nvidia, "nvmlInit", fail)
    reason = NvidiaAdapter.unavailable_reason()
    assert reason is not None and "NVML Shared Library Not Found" in reason
    assert "nvidia-smi" in reason


def test_rocm_torch_is_not_nvidia(
    fake_nvidia: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    reason = NvidiaAdapter.unavailable_reason()
    assert reason is not None and "ROCm build" in reason and "'amd'" in reason


def test_cpu_only_torch_with_nvidia_driver(
    fake_nvidia: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = NvidiaAdapter.unavailable_reason()
    assert reason is not None and "NVML sees 2 GPU(s)" in reason and "CUDA build" in reason


def test_availability_is_cached_until_reset(fake_nvidia: types.ModuleType) -> None:
    calls = 0
    original = NvidiaAdapter._probe.__func__  # type: ignore[attr-defined]

    def counting(cls: type[NvidiaAdapter]) -> str | None:
        nonlocal calls
        calls += 1
        return original(cls)  # type: ignore[no-any-return]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NvidiaAdapter, "_probe", classmethod(counting))
        assert NvidiaAdapter.is_available() and NvidiaAdapter.is_available()
        assert calls == 1
        NvidiaAdapter.reset_cache()
        NvidiaAdapter.is_available()
        assert calls == 2
        DeviceAdapter.reset_cache()
        NvidiaAdapter.is_available()
        assert calls == 3


@pytest.mark.gpu
@pytest.mark.skipif(not NvidiaAdapter.is_available(), reason="no NVIDIA GPU usable by PyTorch here")
def test_real_nvidia_gpu() -> None:
    DeviceAdapter.reset_cache()
    devices = NvidiaAdapter.devices()
    assert devices and devices[0].name and (devices[0].memory_total_mib or 0) > 0
    readings = NvidiaAdapter.telemetry()
    assert len(readings) == len(devices)
    r = readings[0]
    assert r.vendor == "nvidia" and r.model == devices[0].name
    assert r.utilization_percent is not None and 0 <= r.utilization_percent <= 100
    assert r.memory_used_mib is not None and 0 <= r.memory_used_mib <= (r.memory_total_mib or 0)
    assert r.temperature_c is not None and 0 < r.temperature_c < 120
    if r.power_w is not None and r.power_limit_w is not None:
        assert 0 < r.power_w < 2 * r.power_limit_w  # watts, not milliwatts
    x = torch.ones(4, device=NvidiaAdapter.torch_device(0))
    assert float(x.sum()) == 4.0
