"""The scheduler's device choice within a site's pool: honoured, or refused with a reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from clients.runtime import SiteRuntime
from fedcore.config import SiteConfig, dump_site_config
from fedcore.devices import registry
from fedcore.devices.base import DeviceError
from fedcore.devices.nvidia import NvidiaAdapter
from fedcore.devices.registry import SelectedDevice

POOL = 2  # this fake site has cuda:0 and cuda:1


def fake_select(spec: str) -> SelectedDevice:
    text = spec.lower()
    index = int(text.split(":")[1]) if ":" in text else 0
    if index >= POOL:
        raise DeviceError(f"no NVIDIA device {index}; this machine has {POOL}")
    return SelectedDevice(NvidiaAdapter, index, f"cuda:{index}")


@pytest.fixture(autouse=True)
def fake_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "select", fake_select)


@pytest.fixture
def site(tmp_path: Path) -> object:
    """A runtime for a site whose config pins ``device`` (a fresh runtime each call)."""

    def make(device: str) -> SiteRuntime:
        path = tmp_path / f"site-{device.replace(':', '-')}.yaml"
        cfg = SiteConfig.model_validate(
            {"id": "bank-a", "device": device, "data": {"kind": "generated"}}
        )
        dump_site_config(cfg, path)
        ctx = Context(1, 1, {"site-config": str(path)}, RecordDict(), {})
        return SiteRuntime(ctx)

    return make


def test_the_site_choice_without_a_scheduler_pick(site) -> None:  # type: ignore[no-untyped-def]
    assert site("auto").training_device(-1).torch_device == "cuda:0"


def test_the_scheduler_moves_work_within_the_pool(site, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.INFO, logger="clients.runtime"):
        chosen = site("nvidia").training_device(1)
    assert chosen.torch_device == "cuda:1" and chosen.index == 1
    assert "the scheduler moved this round to cuda:1" in caplog.text


def test_a_device_the_site_lacks_falls_back_with_the_reason(  # type: ignore[no-untyped-def]
    site, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="clients.runtime"):
        chosen = site("auto").training_device(3)
    assert chosen.torch_device == "cuda:0"
    assert "asked for device 3 of its pool" in caplog.text
    assert "no NVIDIA device 3; this machine has 2" in caplog.text


def test_a_site_pin_wins(site, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.INFO, logger="clients.runtime"):
        chosen = site("cuda:1").training_device(0)
    assert chosen.torch_device == "cuda:1"
    assert "pins device cuda:1" in caplog.text
