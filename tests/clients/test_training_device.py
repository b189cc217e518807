"""The scheduler's device choice within a site's pool: honoured, or refused with a reason."""

from __future__ import annotations

import logging

import pytest

import clients.app as client_app
from fedcore.config import SiteConfig
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
    monkeypatch.setattr(client_app, "_DEVICES", {})


def site(device: str) -> SiteConfig:
    return SiteConfig.model_validate(
        {"id": "bank-a", "device": device, "data": {"kind": "generated"}}
    )


def test_the_site_choice_without_a_scheduler_pick() -> None:
    assert client_app.training_device(site("auto"), -1).torch_device == "cuda:0"


def test_the_scheduler_moves_work_within_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="clients.app"):
        chosen = client_app.training_device(site("nvidia"), 1)
    assert chosen.torch_device == "cuda:1" and chosen.index == 1
    assert "the scheduler moved this round to cuda:1" in caplog.text


def test_a_device_the_site_lacks_falls_back_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="clients.app"):
        chosen = client_app.training_device(site("auto"), 3)
    assert chosen.torch_device == "cuda:0"
    assert "asked for device 3 of its pool" in caplog.text
    assert "no NVIDIA device 3; this machine has 2" in caplog.text


def test_a_site_pin_wins(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="clients.app"):
        chosen = client_app.training_device(site("cuda:1"), 0)
    assert chosen.torch_device == "cuda:1"
    assert "pins device cuda:1" in caplog.text
