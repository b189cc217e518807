"""CPU adapter: real readings of this machine, and the one thing that never touches a GPU: import."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from fedcore.devices import CpuAdapter, DeviceError
from fedcore.devices.base import _run_tool


def test_cpu_is_always_available() -> None:
    assert CpuAdapter.is_available() and CpuAdapter.unavailable_reason() is None
    (d,) = CpuAdapter.devices()
    assert d.vendor == "cpu" and d.name
    assert d.memory_total_mib == pytest.approx(psutil.virtual_memory().total / 2**20)
    assert CpuAdapter.torch_device() == "cpu"
    assert CpuAdapter.onnx_providers() == ["CPUExecutionProvider"]


def test_cpu_telemetry_is_real() -> None:
    (r,) = CpuAdapter.telemetry()
    assert r.vendor == "cpu" and r.index == 0
    assert r.utilization_percent is not None and 0.0 <= r.utilization_percent <= 100.0
    assert r.memory_total_mib is not None and 0 < (r.memory_used_mib or 0) < r.memory_total_mib
    assert r.power_w is None and r.power_limit_w is None
    assert set(r.metrics()) >= {"utilization_percent", "memory_used_mib", "memory_total_mib"}


def test_cpu_has_only_device_zero() -> None:
    with pytest.raises(DeviceError, match="cpu device 1 asked for, but this machine has 1"):
        CpuAdapter.torch_device(1)


def test_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="fedcore-no-such-smi not on PATH"):
        _run_tool(["fedcore-no-such-smi", "--json"])


def test_failing_tool_reports_exit_status() -> None:
    with pytest.raises(DeviceError, match="exited with 3: boom"):
        _run_tool([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])


def test_import_touches_no_gpu() -> None:
    # importing the adapters must not even import torch, let alone initialize CUDA
    code = "import sys, fedcore.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
