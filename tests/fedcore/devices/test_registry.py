"""Registry: adapters by name, and ``select`` over the site config's ``device`` field."""

from __future__ import annotations

import sys
import types

import pytest

from fedcore.devices import (
    ADAPTERS,
    AmdAdapter,
    CpuAdapter,
    DeviceAdapter,
    DeviceError,
    DeviceInfo,
    IntelAdapter,
    NvidiaAdapter,
    get_adapter,
    select,
)


def pretend(
    monkeypatch: pytest.MonkeyPatch,
    adapter: type[DeviceAdapter],
    reason: str | None,
    count: int = 1,
) -> None:
    """Make ``adapter`` available with ``count`` devices, or unavailable for ``reason``."""
    monkeypatch.setattr(adapter, "_probe", classmethod(lambda cls: reason))
    infos = [DeviceInfo(i, f"{adapter.name} gpu", adapter.name, 1024.0) for i in range(count)]
    monkeypatch.setattr(
        adapter, "devices", classmethod(lambda cls: infos if reason is None else [])
    )


@pytest.fixture
def none_present(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend(monkeypatch, NvidiaAdapter, "NVML found no GPU")
    pretend(monkeypatch, AmdAdapter, "this PyTorch is not a ROCm build")
    pretend(monkeypatch, IntelAdapter, "torch.xpu found no Intel GPU")


def test_registry_names() -> None:
    assert list(ADAPTERS) == ["nvidia", "amd", "intel", "cpu"]
    assert all(ADAPTERS[n].name == n for n in ADAPTERS)
    assert get_adapter("cuda") is NvidiaAdapter
    assert get_adapter("ROCm") is AmdAdapter
    assert get_adapter("xpu") is IntelAdapter


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match="unknown device vendor 'tpu'; expected one of: auto, nvidia, amd, intel, cpu, cuda, rocm, xpu",
    ):
        get_adapter("tpu")
    with pytest.raises(ValueError, match="unknown device vendor 'tpu'"):
        select("tpu:0")


@pytest.mark.parametrize("spec", ["cuda:", "cuda:-1", "nvidia:x", ":0", ""])
def test_malformed_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="expected 'auto' or VENDOR\\[:INDEX\\]"):
        select(spec)


# (available vendors, what auto picks): nvidia before amd before intel before cpu
@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ({"nvidia", "amd", "intel"}, ("nvidia", "cuda:0")),
        ({"amd", "intel"}, ("amd", "cuda:0")),
        ({"intel"}, ("intel", "xpu:0")),
        (set(), ("cpu", "cpu")),
    ],
)
def test_auto_order(
    monkeypatch: pytest.MonkeyPatch, present: set[str], expected: tuple[str, str]
) -> None:
    for adapter in (NvidiaAdapter, AmdAdapter, IntelAdapter):
        pretend(monkeypatch, adapter, None if adapter.name in present else "absent")
    chosen = select(" Auto ")
    assert (chosen.vendor, chosen.torch_device, chosen.index) == expected + (0,)


@pytest.mark.parametrize(
    ("spec", "adapter", "device"),
    [
        ("nvidia", NvidiaAdapter, "cuda:0"),
        ("nvidia:1", NvidiaAdapter, "cuda:1"),
        ("cuda", NvidiaAdapter, "cuda:0"),
        ("cuda:1", NvidiaAdapter, "cuda:1"),
        ("amd", AmdAdapter, "cuda:0"),
        ("rocm:1", AmdAdapter, "cuda:1"),
        ("intel", IntelAdapter, "xpu:0"),
        ("xpu:1", IntelAdapter, "xpu:1"),
        ("cpu", CpuAdapter, "cpu"),
    ],
)
def test_pinning(
    monkeypatch: pytest.MonkeyPatch, spec: str, adapter: type[DeviceAdapter], device: str
) -> None:
    for a in (NvidiaAdapter, AmdAdapter, IntelAdapter):
        pretend(monkeypatch, a, None, count=2)
    chosen = select(spec)
    assert chosen.adapter is adapter and chosen.torch_device == device
    assert chosen.index == int(device.split(":")[1]) if ":" in device else chosen.index == 0


def test_pinned_vendor_unavailable_says_why_and_what_exists(
    monkeypatch: pytest.MonkeyPatch, none_present: None
) -> None:
    pretend(monkeypatch, IntelAdapter, None, count=2)
    with pytest.raises(DeviceError) as info:
        select("cuda:0")
    msg = str(info.value)
    assert "device 'cuda:0' is not usable here: NVML found no GPU" in msg
    assert "Available on this machine: intel (2), cpu" in msg


def test_missing_pynvml_pinned(monkeypatch: pytest.MonkeyPatch, none_present: None) -> None:
    monkeypatch.undo()  # the real probe, without the library
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(DeviceError, match=r"pynvml not installed \(pip install nvidia-ml-py\)"):
        select("nvidia")


def test_auto_takes_no_index() -> None:
    with pytest.raises(ValueError, match="'auto' takes the first device"):
        select("auto:1")


def test_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend(monkeypatch, NvidiaAdapter, None, count=2)
    with pytest.raises(
        DeviceError, match=r"nvidia device 2 asked for, but this machine has 2 \(indices 0..1\)"
    ):
        select("cuda:2")


def test_selected_device_reading(fake_nvidia: types.ModuleType) -> None:
    chosen = select("nvidia:1")
    reading = chosen.reading()
    assert reading is not None and (reading.index, reading.temperature_c) == (1, 31.0)
    assert chosen.adapter.onnx_providers()[0] == "TensorrtExecutionProvider"


def test_cpu_selection_reads_real_cpu() -> None:
    chosen = select("cpu")
    reading = chosen.reading()
    assert reading is not None and reading.vendor == "cpu"
