"""What the operator sees during a real run: ``/metrics``, ``/readyz``, ``/status.json``, the status
page in headless Chromium, and the audit log, from ``fed-coordinator start`` with real sites.

The endpoint's pieces are tested on their own in ``test_metrics.py`` and ``test_status_page.py``
(there, with a coordinator that waits for sites that never come); here two ``fed-client`` sites
join over TLS with node keys and the figures come from rounds that really ran.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedcore.engines.deployment import READY_MARK, free_port
from tests.fedcore.engines.services import (
    ServiceTree,
    client_argv,
    coordinator_argv,
    descendants,
    module,
    ps,
    ps_report,
    rounds_of,
    start,
    stop,
    text,
    wait_until,
)
from tests.fedcore.engines.test_deployment import ProcessWatch, provision_kits, write_scenario

SITES = ["bank-a", "bank-b"]
ROUNDS = 4  # rounds of about a second each: the 0.2 s scrapes see the counter between 0 and the end


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _metrics(port: int) -> dict[str, float]:
    """``/metrics`` parsed as Prometheus does: sample name (with labels) -> value."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(_get(port, "/metrics")[1]):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


class Scraper:
    """Scrapes ``/metrics``, ``/readyz`` and ``/status.json`` every 0.2 s, as Prometheus would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.metrics: list[dict[str, float]] = []
        self.readyz: list[int] = []
        self.status: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.metrics.append(_metrics(self.port))
                self.readyz.append(_get(self.port, "/readyz")[0])
                self.status.append(json.loads(_get(self.port, "/status.json")[1]))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@pytest.mark.slow
def test_operator_sees_a_real_run_in_metrics_status_and_audit(
    tmp_path: Path, watch: ProcessWatch
) -> None:
    kits = provision_kits(tmp_path / "kits", SITES, name="operator-test")
    scenario, sites = write_scenario(tmp_path, sites=2, rounds=ROUNDS, round_timeout=120)
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    port = free_port("127.0.0.1")
    out = tmp_path / "out"
    log = tmp_path / "coordinator.log"
    # no --exit-when-done: the service keeps serving its endpoint after the run, as in production
    coordinator = start(
        watch,
        log,
        coordinator_argv(
            scenario,
            kits / "coordinator",
            address,
            tmp_path / "state",
            out,
            "--metrics-listen",
            f"127.0.0.1:{port}",
        ),
        cwd=tmp_path,
    )
    tree = ServiceTree(coordinator.pid, "fed-coordinator")
    wait_until(
        lambda: READY_MARK in text(log) or coordinator.poll() is not None, 180, "the SuperLink", log
    )
    scraper = Scraper(port)
    site_logs = {s: tmp_path / f"fed-client-{s}.log" for s in sites}
    clients = {
        s: start(watch, site_logs[s], client_argv(sites[s], kits / s, address), cwd=tmp_path)
        for s in sites
    }
    try:
        wait_until(
            lambda: "run completed" in text(log) or coordinator.poll() is not None,
            600,
            "the run to complete",
            log,
            *site_logs.values(),
        )
        assert coordinator.poll() is None, text(log)
        time.sleep(1.0)  # a few scrapes of the finished run
        # idle sites after a run: their services reap what they started (no <defunct>)
        for site, client in clients.items():
            zombies = [r for r in descendants(ps(), client.pid) if r.zombie]
            assert zombies == [], f"fed-client {site}:\n{ps_report(zombies)}"
    finally:
        scraper.stop()

    # /metrics while it ran: rounds grew one by one, both sites connected, bytes flowed
    scrapes = scraper.metrics
    assert len(scrapes) > 5, scraper.errors
    completed = [m.get("fedcore_rounds_completed_total", 0.0) for m in scrapes]
    assert completed == sorted(completed), completed
    assert completed[0] == 0.0 and completed[-1] == ROUNDS
    assert 0 < len({c for c in completed if 0 < c < ROUNDS}) or ROUNDS == 1, completed
    running = [m for m in scrapes if m.get("fedcore_run_status{phase=running}") == 1.0]
    assert running, "no scrape saw the run running"
    assert all(m["fedcore_sites_connected"] == len(SITES) for m in running)
    last = scrapes[-1]
    assert last["fedcore_run_status{phase=completed}"] == 1.0
    assert last["fedcore_last_round"] == ROUNDS
    assert last["fedcore_bytes_up_total"] > 0 and last["fedcore_bytes_down_total"] > 0
    assert last["fedcore_round_seconds_count"] == ROUNDS
    assert last["fedcore_sites_aggregated"] == len(SITES)
    assert last["fedcore_up"] == 1.0

    # /readyz: 503 until the run was submitted, then 200 (to the end of the service)
    assert scraper.readyz[0] == 503 and scraper.readyz[-1] == 200, scraper.readyz
    first_ready = scraper.readyz.index(200)
    assert all(code == 200 for code in scraper.readyz[first_ready:]), scraper.readyz

    # /status.json: live rounds while it ran, and the finished run with both sites aggregated
    seen = sorted({s["rounds_completed"] for s in scraper.status})
    assert seen[0] == 0 and seen[-1] == ROUNDS, seen
    final = scraper.status[-1]
    assert final["phase"] == "completed" and final["ready"] is True
    assert final["connected"] == len(SITES)
    assert [r["round"] for r in final["rounds"]] == list(range(1, ROUNDS + 1))
    assert {s["id"]: s["state"] for s in final["sites"]} == dict.fromkeys(SITES, "aggregated")
    assert all(s["aggregated"] == ROUNDS and s["last_round"] == ROUNDS for s in final["sites"])
    assert [r["round"] for r in rounds_of(out)] == list(range(1, ROUNDS + 1))

    # the page an operator opens, rendered by a real browser, shows the finished run
    if shutil.which("chromium"):
        from tests.fedcore.engines.test_status_page import _chromium, _points

        dom = _chromium(tmp_path, f"http://127.0.0.1:{port}/", "--dump-dom").stdout
        assert f'id="rounds-count">{ROUNDS} / {ROUNDS}<' in dom, dom
        assert 'class="badge phase-completed">completed<' in dom
        assert _points(dom, "pr") == [str(r) for r in range(1, ROUNDS + 1)]
        for site in SITES:
            assert f'<tr class="site"><td>{site}</td><td class="state state-aggregated">' in dom

    # the audit log of the run verifies, and holds every round with both sites
    done = subprocess.run(
        [*_fedcore(), "audit", "verify", str(out / "audit.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"rounds 1..{ROUNDS}" in done.stdout + done.stderr, done.stdout + done.stderr

    # a normal stop: the endpoint goes away with the service, and nothing is left behind
    for site, client in clients.items():
        assert stop(client) == 130, text(site_logs[site])
    assert stop(coordinator) == 130, text(log)
    with pytest.raises(OSError):
        _get(port, "/healthz")
    assert tree.left_running(45) == []
    assert watch.survivors() == []


def _fedcore() -> list[str]:
    script = Path(sys.executable).parent / "fedcore"
    return [str(script)] if script.is_file() else module("fedcore.cli.main")
