"""The site runtime: one state directory for everything, and the scheduler's device choice within the pool."""

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


def runtime_at(tmp_path: Path, state_dir: str | None, node_config: dict[str, str]) -> SiteRuntime:
    data: dict[str, object] = {"id": "bank-a", "data": {"kind": "generated", "transactions": 300}}
    if state_dir is not None:
        data["state_dir"] = state_dir
    path = tmp_path / "conf" / "bank-a.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_site_config(SiteConfig.model_validate(data), path)
    ctx = Context(1, 1, {"site-config": str(path), **node_config}, RecordDict(), {})
    return SiteRuntime(ctx)


def test_one_state_directory_for_data_cache_model_copy_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's --state (node config state-dir) wins; then the config's; then ./fedcore-site-ID."""
    from fedcore.config import TaskSpec

    monkeypatch.chdir(tmp_path)
    override = tmp_path / "service-state"
    rt = runtime_at(tmp_path, str(tmp_path / "own"), {"state-dir": str(override)})
    assert rt.state_dir == override and rt.site().state_dir == override
    assert rt.site(check_files=True).state_dir == override  # what the data loaders see
    assert rt.data_size(TaskSpec()) > 0
    assert (override / "data-size.json").exists()
    assert any((override / "cache").glob("graph-*.pt"))  # the loader's cache, same folder
    assert not (tmp_path / "own").exists()

    assert runtime_at(tmp_path, str(tmp_path / "own"), {}).state_dir == tmp_path / "own"
    assert runtime_at(tmp_path, None, {}).state_dir == tmp_path / "fedcore-site-bank-a"


def test_a_shipped_site_file_writes_nothing_into_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk-through's `fed-client start --site scenarios/sites/bank-a.yaml`: state in ./fedcore-site-ID."""
    from fedcore.config import TaskSpec

    shipped = Path(__file__).resolve().parents[2] / "scenarios" / "sites" / "bank-a.yaml"
    sites = tmp_path / "checkout" / "scenarios" / "sites"
    sites.mkdir(parents=True)
    text = shipped.read_text().replace("transactions: 6000", "transactions: 300")
    (sites / "bank-a.yaml").write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ctx = Context(1, 1, {"site-config": str(sites / "bank-a.yaml")}, RecordDict(), {})
    rt = SiteRuntime(ctx)
    assert rt.data_size(TaskSpec()) > 0
    assert sorted(p.name for p in sites.iterdir()) == ["bank-a.yaml"]
    assert sorted(p.name for p in (tmp_path / "checkout").rglob("*")) == [
        "bank-a.yaml",
        "scenarios",
        "sites",
    ]
    assert (work / "fedcore-site-bank-a" / "data-size.json").is_file()
    assert rt.data_size(TaskSpec()) > 0  # the remembered size, from the state directory
