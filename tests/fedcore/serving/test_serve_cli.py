"""`fed-client serve` as a process on loopback (it scores over real HTTP, stops cleanly on SIGTERM with its history written, refuses a damaged model, raises the drift alarm), and its service in process on a real export."""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import socket
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedcore.config import HistorySpec
from fedcore.serving.api import build_app
from fedcore.serving.context import ContextScorer
from fedcore.serving.history import history_path
from fedcore.serving.service import ScoringService, ServiceOptions

with warnings.catch_warnings():  # starlette's TestClient warns about its own httpx and anyio use
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _history_ids(state: Path) -> set[str]:
    with sqlite3.connect(history_path(state, HistorySpec())) as conn:
        return {r[0] for r in conn.execute("SELECT tx_id FROM transactions")}


def _labels(state: Path) -> dict[str, int]:
    with sqlite3.connect(history_path(state, HistorySpec())) as conn:
        rows = conn.execute("SELECT tx_id, label FROM transactions WHERE label IS NOT NULL")
        return {r[0]: int(r[1]) for r in rows}


def test_serve_scores_over_http_and_stops_cleanly(
    site_state: Any, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    state = site_state.copy(tmp_path / "served")
    reference = site_state.copy(tmp_path / "reference")
    service = start_service("--state", str(state))
    assert service.url.startswith("http://127.0.0.1:"), service.output()
    printed = service.output()
    sha = site_state.export_dir.joinpath("manifest.json").read_text()
    assert "serving model.int8.onnx (sha256 " in printed and "onnx-dynamic" in printed
    assert "history: 400 transactions in the window" in printed
    assert "threshold " in printed and sha  # the manifest is there to compare against
    rows = site_state.stream[:30]
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        assert client.get("/readyz").status_code == 200
        one = client.post("/v1/score", json=rows[0])
        assert one.status_code == 200, one.text
        batch = client.post("/v1/score", json={"transactions": rows[1:]})
        assert batch.status_code == 200, batch.text
        served = [one.json()] + batch.json()["results"]
        fed = client.post(
            "/v1/feedback",
            json={"labels": [{"tx_id": r["tx_id"], "label": 1} for r in rows[:5]]},
        )
        assert fed.json() == {"recorded": 5, "unknown": 0}
        status = client.get("/v1/status").json()
        metrics = client.get("/metrics").text
    assert [s["tx_id"] for s in served] == [r["tx_id"] for r in rows]
    assert status["history_rows"] == 430 and status["scored"] == 30
    assert status["model"]["sha256"][:12] == one.json()["model"]
    assert "fedcore_serving_transactions_scored_total 30.0" in metrics
    # the same calls in process score the same
    scorer = ContextScorer.open(site_state.export_dir, reference)
    try:
        expected = np.concatenate([scorer.score([rows[0]]).score, scorer.score(rows[1:]).score])
    finally:
        scorer.close()
    assert np.allclose([s["score"] for s in served], expected, atol=1e-6)
    code, out = service.stop()
    assert code == 0, out
    assert "stopped: scored 30 transactions" in out and "(430 transactions in the window)" in out
    assert {r["tx_id"] for r in rows} <= _history_ids(state)
    assert all(_labels(state)[r["tx_id"]] == 1 for r in rows[:5])
    assert (state / "serving" / "monitor.json").is_file()


def test_ctrl_c_also_stops_cleanly(
    site_state: Any, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    state = site_state.copy(tmp_path)
    service = start_service(
        "--state", str(state), "--model", str(state / "export" / "run-1"), "--no-coalesce"
    )
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        assert client.post("/v1/score", json=site_state.stream[0]).status_code == 200
    service.proc.send_signal(signal.SIGINT)
    assert service.proc.wait(timeout=60) == 0, service.output()
    assert site_state.stream[0]["tx_id"] in _history_ids(state)


def test_a_model_that_differs_from_its_manifest_is_refused_at_start(
    site_state: Any, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    state = site_state.copy(tmp_path)
    model = state / "export" / "run-1" / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    service = start_service("--state", str(state))
    assert service.proc.wait(timeout=60) == 1
    out = service.output()
    assert "model refused" in out and "does not match its manifest" in out, out
    assert "Traceback" not in out


def test_nothing_to_serve_and_a_taken_port_say_so(
    start_service: Callable[..., Any], tmp_path: Path, site_state: Any
) -> None:
    service = start_service("--state", str(tmp_path / "empty"))
    assert service.proc.wait(timeout=60) == 2
    assert "no export to serve" in service.output()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        state = site_state.copy(tmp_path)
        service = start_service("--state", str(state), "--port", str(port))
        assert service.proc.wait(timeout=60) == 3
    assert f"cannot listen on 127.0.0.1:{port}" in service.output()


@pytest.mark.parametrize(("shift", "alarm"), [(0.0, False), (1.0, True)])
def test_a_shifted_population_raises_the_drift_alarm_and_a_steady_one_does_not(
    trained_site: Any,
    start_service: Callable[..., Any],
    tmp_path: Path,
    shift: float,
    alarm: bool,
) -> None:
    state = trained_site.copy(tmp_path)
    window = 1000
    service = start_service(
        "--state",
        str(state),
        "--psi-bound",
        "0.1",
        "--score-window",
        str(window),
        "--min-scores",
        "500",
        "--log-file",
        str(tmp_path / "serve.log"),
    )
    rows = trained_site.stream(shift, window)
    with httpx.Client(base_url=service.url, timeout=60.0) as client:
        for i in range(0, window, 50):
            res = client.post("/v1/score", json={"transactions": rows[i : i + 50]})
            assert res.status_code == 200, res.text
        status = client.get("/v1/status").json()
        metrics = client.get("/metrics").text
    monitor = status["monitor"]
    assert monitor["window_scores"] == window
    assert (status["alarms"] == ["psi"]) is alarm, monitor
    assert (monitor["psi"] > 0.1) is alarm
    assert f'fedcore_serving_alarm{{alarm="psi"}} {1.0 if alarm else 0.0}' in metrics
    code, out = service.stop()
    assert code == 0
    assert ("alarm raised: psi" in out) is alarm, out
    logged = (tmp_path / "serve.log").read_text()
    assert "INFO" in logged and ("alarm raised: psi" in logged) is alarm, logged
    written = json.loads((state / "serving" / "monitor.json").read_text())
    assert written["retrain"] is alarm and len(written["alarms"]) == int(alarm)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("localhost", True),
        (str(ipaddress.IPv4Address(0)), False),  # every interface (a string: nothing binds)
        ("10.0.0.5", False),
        ("::", False),
        ("bank.example", False),
    ],
)
def test_only_loopback_hosts_pass_without_a_warning(host: str, loopback: bool) -> None:
    from fedcore.cli.serve_cmd import _loopback

    assert _loopback(host) is loopback


@dataclass
class Real:
    client: TestClient
    service: ScoringService
    state: Path


# -- the service in process, on a real export -------------------------------------------


@pytest.fixture
def real(site_state: Any, tmp_path: Path) -> Iterator[Real]:
    """The service around a ContextScorer on a copy of a site's state, with its real monitor."""
    from fedcore.serving.context import ContextScorer
    from fedcore.serving.monitor import Monitor, MonitorSpec, Reference, write_status

    state = site_state.copy(tmp_path)
    export = state / "export" / "run-1"
    scorer = ContextScorer.open(export, state)
    spec = MonitorSpec(min_scores=10, score_window=50)
    service = ScoringService(
        scorer,
        export,
        monitor_factory=lambda m: Monitor(spec, Reference.from_manifest(m)),
        state_dir=state,
        options=ServiceOptions(refresh_every_s=0.0, status_path=state / "serving" / "monitor.json"),
        status_writer=write_status,
    )
    with TestClient(build_app(service)) as client:
        yield Real(client, service, state)


def test_the_real_scorer_scores_appends_and_reports_its_monitor(
    real: Real, site_state: Any
) -> None:
    rows = site_state.stream[:20]
    res = real.client.post("/v1/score", json={"transactions": rows})
    assert res.status_code == 200, res.text
    assert [r["tx_id"] for r in res.json()["results"]] == [r["tx_id"] for r in rows]
    assert real.service.scorer.history_size == 420
    status = real.client.get("/v1/status").json()
    assert status["monitor"]["n_scored"] == 20 and status["monitor"]["window_scores"] == 20
    assert status["monitor"]["psi"] is not None
    bad = real.client.post("/v1/score", json=rows[0] | {"amount": -1})
    assert bad.status_code == 422 and "amount" in bad.json()["error"]
    text = real.client.get("/metrics").text
    assert 'fedcore_serving_alarm{alarm="psi"}' in text and "fedcore_serving_psi " in text


def test_the_real_scorer_refuses_a_damaged_export_and_takes_a_good_one(
    real: Real, site_state: Any
) -> None:
    time.sleep(0.01)
    damaged = real.state / "export" / "run-2"
    shutil.copytree(real.state / "export" / "run-1", damaged)
    (damaged / "manifest.json").touch()  # written after the served one, as a new export is
    model = damaged / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    res = real.client.post("/v1/reload")
    assert res.status_code == 409 and "does not match its manifest" in res.json()["error"]
    assert real.client.post("/v1/score", json=site_state.stream[0]).json()["run"] == "run-1"
    time.sleep(0.01)
    good = real.state / "export" / "run-3"
    shutil.copytree(real.state / "export" / "run-1", good)
    (good / "manifest.json").touch()
    res = real.client.post("/v1/reload")
    assert res.status_code == 200 and res.json()["model"]["run"] == "run-3"
    scored = real.client.post("/v1/score", json=site_state.stream[1]).json()
    assert scored["run"] == "run-3" and real.service.scorer.history_size == 402
