"""The coordinator's status board (round records -> snapshot), ``/status.json`` and ``/`` over
HTTP, and the page rendered by a real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcore.engines.deployment import free_port
from fedcore.engines.deployment.health import HealthServer
from fedcore.engines.deployment.metrics import CoordinatorMetrics
from fedcore.engines.deployment.status import MAX_EXTRA_SITES, STATUS_PAGE, StatusBoard
from tests.fedcore.engines.round_records import round_record
from tests.fedcore.engines.test_deployment import ProcessWatch, wait_for, write_scenario

SITES = ["bank-a", "bank-b", "<b>x</b>", "bank-z"]


def _record(rnd: int, **extra: Any) -> dict[str, Any]:
    return round_record(rnd, **({"per_site": {"bank-a": {"pr_auc": 0.7, "loss": 0.3}}} | extra))


RECORDS = [
    # round 1: bank-a and bank-b aggregated; DP spent 0.5
    _record(1, epsilon=0.5),
    # round 2: bank-b refused for two reasons, "<b>x</b>" evaluated only; NaN loss
    _record(
        2,
        sites=["bank-a"],
        loss=float("nan"),
        pr_auc=0.6,
        seconds=10.0,
        rejected={"bank-b": ["no reply within 120s", "training loss is nan"]},
        per_site={"bank-a": {"pr_auc": 0.75}, "<b>x</b>": {"pr_auc": 0.5}},
        schedule={"policy": "deadline", "chosen": 3, "candidates": 3, "deadline_s": 30.0},
        epsilon=1.25,
    ),
    # round 3: "<b>x</b>" aggregated with bank-a; bank-b not chosen (idle); bank-z never seen
    _record(
        3,
        sites=["<b>x</b>", "bank-a"],
        pr_auc=0.9,
        seconds=6.0,
        schedule={"policy": "deadline", "chosen": 2, "candidates": 2, "scaling": "hold"},
        epsilon=2.0,
    ),
]


def _board(**kwargs: Any) -> StatusBoard:
    board = StatusBoard(
        "bank-fraud-3", SITES, privacy_mode="ckks", delta=1e-5, planned_rounds=5, **kwargs
    )
    for record in RECORDS:
        board.observe(record)
    return board


# --------------------------------------------------------------------------- the board


def test_snapshot_of_three_records() -> None:
    snap = _board().snapshot()
    json.dumps(snap, allow_nan=False)  # plain JSON, no NaN
    assert snap["scenario"] == "bank-fraud-3"
    assert snap["rounds_completed"] == 3
    assert snap["planned_rounds"] == 5
    assert snap["connected"] == 2  # the last round's telemetry answers (candidates)
    assert snap["rounds"] == [
        {"round": 1, "loss": 0.5, "pr_auc": 0.8, "roc_auc": 0.9, "seconds": 4.0,
         "epsilon": 0.5, "aggregated": 2, "rejected": 0},
        {"round": 2, "loss": None, "pr_auc": 0.6, "roc_auc": 0.9, "seconds": 10.0,
         "epsilon": 1.25, "aggregated": 1, "rejected": 1},
        {"round": 3, "loss": 0.5, "pr_auc": 0.9, "roc_auc": 0.9, "seconds": 6.0,
         "epsilon": 2.0, "aggregated": 2, "rejected": 0},
    ]  # fmt: skip
    sites = {s["id"]: s for s in snap["sites"]}
    assert [s["id"] for s in snap["sites"]] == SITES
    assert sites["bank-a"] == {
        "id": "bank-a",
        "state": "aggregated",
        "in_scenario": True,
        "last_round": 3,
        "aggregated": 3,
        "rejected": 0,
        "reasons": [],
        "metrics": {"pr_auc": 0.7, "loss": 0.3},  # round 3's own metrics
    }
    assert sites["bank-b"] == {
        "id": "bank-b",
        "state": "idle",  # refused in round 2, not chosen in round 3
        "in_scenario": True,
        "last_round": 2,
        "aggregated": 1,
        "rejected": 1,
        "reasons": [],
        "metrics": {},
    }
    assert sites["<b>x</b>"]["state"] == "aggregated"
    assert sites["<b>x</b>"]["metrics"] == {"pr_auc": 0.5}  # from round 2, its last evaluation
    assert sites["bank-z"]["state"] == "not_seen"
    assert sites["bank-z"]["last_round"] is None
    assert snap["schedule"] == {
        "round": 3,
        "policy": "deadline",
        "chosen": 2,
        "candidates": 2,
        "scaling": "hold",
        "aggregated": ["<b>x</b>", "bank-a"],
        "rejected": {},
    }
    assert snap["privacy"] == {"mode": "ckks", "dp": True, "epsilon": 2.0, "delta": 1e-5}


def test_snapshot_after_two_records_shows_the_rejection_and_its_reasons() -> None:
    board = StatusBoard("s", ["bank-a", "bank-b"])
    board.set_connected(2)
    assert board.snapshot()["connected"] == 2
    assert board.snapshot()["schedule"] is None
    board.observe(RECORDS[0])
    board.observe(RECORDS[1])
    snap = board.snapshot()
    bank_b = next(s for s in snap["sites"] if s["id"] == "bank-b")
    assert bank_b["state"] == "rejected"
    assert bank_b["reasons"] == ["no reply within 120s", "training loss is nan"]
    evaluated = next(s for s in snap["sites"] if s["id"] == "<b>x</b>")
    assert (evaluated["state"], evaluated["in_scenario"]) == ("evaluated", False)
    assert snap["schedule"]["rejected"] == {
        "bank-b": ["no reply within 120s", "training loss is nan"]
    }
    assert snap["schedule"]["deadline_s"] == 30.0
    assert snap["privacy"] == {"mode": "plaintext", "dp": False, "epsilon": 1.25, "delta": None}


def test_memory_is_bounded_and_bad_fields_are_skipped() -> None:
    board = StatusBoard("s", ["bank-a"], max_rounds=2)
    for rnd in range(1, 6):
        board.observe(_record(rnd, rejected={f"node {rnd}": ["telemetry: malformed"]}))
    board.observe({"round": "six", "sites": "bank-a", "rejected": [1], "schedule": 3})
    snap = board.snapshot()
    assert snap["rounds_completed"] == 6
    assert [r["round"] for r in snap["rounds"]] == [5, 6]  # "six": its position
    assert snap["rounds"][1]["pr_auc"] is None
    for rnd in range(7, 8 + MAX_EXTRA_SITES):
        board.observe(_record(rnd, rejected={f"node {rnd}": ["no reply"]}))
    ids = [s["id"] for s in board.snapshot()["sites"]]
    # bank-a (the scenario's) and MAX_EXTRA_SITES others: bank-b (seen every round) and the
    # nodes seen last
    assert len(ids) == 1 + MAX_EXTRA_SITES
    assert {"bank-a", "bank-b", f"node {7 + MAX_EXTRA_SITES}"} <= set(ids)
    assert "node 1" not in ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rounds": 0}, "max_rounds must be at least 1; found 0"),
        ({"planned_rounds": -1}, "planned_rounds must be 0"),
        ({"delta": 1.5}, r"delta must be in \(0, 1\); found 1.5"),
    ],
)
def test_bad_arguments_say_what_was_found(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StatusBoard("s", **kwargs)


def test_page_is_self_contained() -> None:
    # no external URL, font or script: the page needs no network but its own endpoint
    assert not re.search(
        r"(https?:)?//[a-z0-9]",
        STATUS_PAGE.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
            '"http://www.w3.org/2000/svg"', ""
        ),
    )
    assert "<script src" not in STATUS_PAGE and "@import" not in STATUS_PAGE
    assert "innerHTML" not in STATUS_PAGE and "insertAdjacentHTML" not in STATUS_PAGE  # fmt: skip


# --------------------------------------------------------------------------- over HTTP


def _get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_status_json_and_page_over_http() -> None:
    metrics = CoordinatorMetrics()
    board = _board()
    server = HealthServer(metrics, "127.0.0.1", free_port("127.0.0.1"), board=board)
    try:
        server.start()
        code, headers, body = _get(server.port, "/status.json")
        assert code == 200 and headers["Content-Type"] == "application/json"
        snap = json.loads(body)
        assert snap == board.snapshot() | {
            "phase": "starting",
            "ready": False,
            "readiness": "the SuperLink is starting",
        }
        metrics.set_phase("running")
        snap = json.loads(_get(server.port, "/status.json?t=1")[2])
        assert (snap["phase"], snap["ready"], snap["readiness"]) == ("running", True, "run running")
        for path in ("/", "/status"):
            code, headers, body = _get(server.port, path)
            assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
            assert body == STATUS_PAGE
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert "connect-src 'self'" in headers["Content-Security-Policy"]
        assert _get(server.port, "/nope")[0] == 404
    finally:
        server.stop()
    # without a board: an empty one
    server = HealthServer(metrics, "127.0.0.1", free_port("127.0.0.1"))
    try:
        server.start()
        snap = json.loads(_get(server.port, "/status.json")[2])
        assert (snap["rounds_completed"], snap["sites"], snap["scenario"]) == (0, [], "")
    finally:
        server.stop()


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url``; kill it (and its helpers) by PID in any case."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: its helpers die with it
    )
    try:
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers left in its group
            except ProcessLookupError:
                pass


def _points(dom: str, cls: str) -> list[str]:
    return re.findall(rf'<circle class="pt {cls}"[^>]*data-round="(\d+)"', dom)


@needs_chromium
def test_status_page_renders_live_data_in_headless_chromium(tmp_path: Path) -> None:
    metrics = CoordinatorMetrics()
    metrics.set_phase("running")
    board = _board()
    server = HealthServer(metrics, "127.0.0.1", free_port("127.0.0.1"), board=board)
    try:
        server.start()
        url = f"http://127.0.0.1:{server.port}/"
        done = _chromium(tmp_path, url, "--dump-dom")
        dom = done.stdout
        assert done.returncode == 0, done.stderr[-3000:]
        # the JS ran: the rows, the counts, the privacy, the chart come from /status.json
        assert 'id="rounds-count">3 / 5<' in dom, dom
        assert 'id="scenario">— bank-fraud-3<' in dom
        assert '<span id="phase" class="badge phase-running">running</span>' in dom
        assert 'id="privacy-mode">ckks<' in dom
        assert "epsilon 2.000 spent, delta 0.00001" in dom
        assert dom.count('<tr class="site">') == len(SITES)
        for site in ("bank-a", "bank-b", "bank-z"):
            assert f'<tr class="site"><td>{site}</td>' in dom
        assert '<td class="state state-not_seen">not seen</td>' in dom
        assert re.search(r'<svg id="chart"[^>]*>.*</svg>', dom, re.S)
        assert _points(dom, "pr") == ["1", "2", "3"]
        assert _points(dom, "sec") == ["1", "2", "3"]
        # a site id that looks like markup is text, not an element
        assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in dom
        assert "<b>x</b>" not in dom and "<b>" not in dom
        assert 'id="error"></div>' in dom  # it reached the endpoint

        # live data: a 4th round shows up in the next rendering
        board.observe(_record(4, pr_auc=0.95, seconds=5.0, epsilon=2.5))
        dom = _chromium(tmp_path, url, "--dump-dom").stdout
        assert 'id="rounds-count">4 / 5<' in dom, dom
        assert _points(dom, "pr") == ["1", "2", "3", "4"]
        assert "epsilon 2.500 spent" in dom

        png = tmp_path / "status.png"
        done = _chromium(tmp_path, url, f"--screenshot={png}", "--window-size=1000,1200")
        assert done.returncode == 0, done.stderr[-3000:]
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    finally:
        server.stop()


@needs_chromium
@pytest.mark.slow
def test_real_fed_coordinator_status_page_in_headless_chromium(
    tmp_path: Path, watch: ProcessWatch
) -> None:
    # a running fed-coordinator that waits for its sites: the page shows its scenario and sites
    scenario, _ = write_scenario(tmp_path)
    port = free_port("127.0.0.1")
    argv = [
        sys.executable,
        "-m",
        "fedcore.cli.coordinator_cmd",
        "start",
        "--scenario",
        str(scenario),
        "--insecure",
        "--state",
        str(tmp_path / "state"),
        "--listen",
        f"127.0.0.1:{free_port('127.0.0.1')}",
        "--metrics-listen",
        f"127.0.0.1:{port}",
    ]
    log = (tmp_path / "coordinator.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    watch.roots.append(proc)

    def phase() -> str:
        try:
            return str(json.loads(_get(port, "/status.json")[2])["phase"])
        except (OSError, ValueError):
            return ""

    wait_for(
        lambda: phase() == "waiting_sites" or proc.poll() is not None,
        180,
        "fed-coordinator waiting for the sites",
    )
    text = (tmp_path / "coordinator.log").read_text(errors="replace")
    assert proc.poll() is None, text
    assert f"status   http://127.0.0.1:{port}/" in text
    dom = _chromium(tmp_path, f"http://127.0.0.1:{port}/", "--dump-dom").stdout
    assert 'id="scenario">— tiny-deployment<' in dom, dom
    assert 'class="badge phase-waiting_sites">waiting_sites<' in dom
    assert 'id="rounds-count">0 / 1<' in dom
    assert 'id="privacy-mode">plaintext<' in dom
    for site in ("bank-a", "bank-b"):
        assert f'<tr class="site"><td>{site}</td><td class="state state-not_seen">' in dom
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=240) == 130
    assert watch.survivors() == []
