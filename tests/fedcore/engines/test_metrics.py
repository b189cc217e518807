"""The coordinator's metrics (round records -> Prometheus) and its /healthz, /readyz, /metrics endpoint."""

from __future__ import annotations

import http.client
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fedcore.engines.deployment import AddressInUseError, free_port
from fedcore.engines.deployment.health import HealthServer
from fedcore.engines.deployment.metrics import REJECT_REASONS, CoordinatorMetrics, reason_label
from tests.fedcore.engines.round_records import round_record
from tests.fedcore.engines.test_deployment import ProcessWatch, wait_for, write_scenario


def _record(rnd: int, **extra: Any) -> dict[str, Any]:
    return round_record(rnd, **extra)


RECORDS = [
    # round 1: 4 s, no rejection, epsilon 0.5
    _record(1, epsilon=0.5),
    # round 2: 40 s; bank-c timed out, bank-d's reply failed two checks of different kinds,
    # node 7's telemetry was malformed; the slowest site took 40 s > deadline 30 s: a miss
    _record(
        2,
        seconds=40.0,
        loss=0.25,
        sites=["bank-a"],
        bytes_up=500,
        bytes_down=1500,
        rejected={
            "bank-c": ["no reply within 120s"],
            "bank-d": [
                "reply is not signed (the site must run with its kit)",
                "training loss is nan",
            ],
            "node 7": ["telemetry: malformed telemetry: 'site_id'"],
        },
        schedule={"chosen": 4, "candidates": 4, "deadline_s": 30.0, "measured_max_s": 40.0},
        epsilon=1.25,
    ),
    # round 3: 700 s within its deadline; one site error; NaN PR-AUC (not evaluated)
    _record(
        3,
        seconds=700.0,
        pr_auc=float("nan"),
        rejected={"bank-b": ["site error: CUDA out of memory"]},
        schedule={"chosen": 3, "candidates": 3, "deadline_s": 800.0, "measured_max_s": 650.0},
        epsilon=2.0,
    ),
]


def _samples(metrics: CoordinatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back with prometheus_client's own parser."""
    text = generate_latest(metrics.registry).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert isinstance(sample, Sample)
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("no reply within 120s", "no_reply"),
        ("site error: CUDA out of memory", "site_error"),
        ("malformed reply: 'loss'", "malformed"),
        ("reply is not signed (the site must run with its kit)", "signature"),
        ("signature does not verify with site 'a''s registered node key", "signature"),
        ("reply names site 'b', sent to 'a'", "signature"),
        ("telemetry: claims site 'a': signature does not verify", "telemetry"),
        ("array 'w' holds 3 NaN/Inf value(s)", "invalid_update"),
        ("num_examples is 0; expected 1..10000000", "invalid_update"),
        ("not connected: no telemetry this round", "not_connected"),
        ("telemetry: not connected: no telemetry this round", "not_connected"),
        ("something new", "other"),
    ],
)
def test_reason_label(reason: str, label: str) -> None:
    assert reason_label(reason) == label
    assert label in REJECT_REASONS


def test_three_records_give_exact_metrics() -> None:
    metrics = CoordinatorMetrics()
    for record in RECORDS:
        metrics.observe(record)
    s = _samples(metrics)
    assert s[("fedcore_up", ())] == 1.0
    assert s[("fedcore_rounds_completed_total", ())] == 3.0
    assert s[("fedcore_last_round", ())] == 3.0
    # histogram: 4 s, 40 s, 700 s
    assert s[("fedcore_round_seconds_count", ())] == 3.0
    assert s[("fedcore_round_seconds_sum", ())] == 744.0
    assert s[("fedcore_round_seconds_bucket", (("le", "2.5"),))] == 0.0
    assert s[("fedcore_round_seconds_bucket", (("le", "5.0"),))] == 1.0
    assert s[("fedcore_round_seconds_bucket", (("le", "60.0"),))] == 2.0
    assert s[("fedcore_round_seconds_bucket", (("le", "600.0"),))] == 2.0
    assert s[("fedcore_round_seconds_bucket", (("le", "1800.0"),))] == 3.0
    assert s[("fedcore_round_seconds_bucket", (("le", "+Inf"),))] == 3.0
    # gauges show the last round
    assert s[("fedcore_sites_chosen", ())] == 3.0
    assert s[("fedcore_sites_candidates", ())] == 3.0
    assert s[("fedcore_sites_connected", ())] == 3.0
    assert s[("fedcore_sites_aggregated", ())] == 2.0
    assert s[("fedcore_round_loss", ())] == 0.5
    assert math.isnan(s[("fedcore_round_pr_auc", ())])
    assert s[("fedcore_privacy_epsilon", ())] == 2.0
    # counters add up: 1000 + 500 + 1000 up, 3000 + 1500 + 3000 down; one deadline miss
    assert s[("fedcore_bytes_up_total", ())] == 2500.0
    assert s[("fedcore_bytes_down_total", ())] == 7500.0
    assert s[("fedcore_deadline_misses_total", ())] == 1.0
    rejected = {
        dict(labels)["reason"]: value
        for (name, labels), value in s.items()
        if name == "fedcore_rejected_replies_total"
    }
    # every label of the fixed set is there; bank-d counts under signature and invalid_update
    assert rejected == {
        "site_error": 1.0,
        "no_reply": 1.0,
        "not_connected": 0.0,
        "malformed": 0.0,
        "signature": 1.0,
        "telemetry": 1.0,
        "invalid_update": 1.0,
        "other": 0.0,
    }
    # no site id and no free text ever becomes a label value
    values = {v for (_, labels) in s for _, v in labels}
    assert not {v for v in values if "bank" in v or "node" in v or " " in v}


def test_no_epsilon_without_dp_and_bad_fields_are_skipped() -> None:
    metrics = CoordinatorMetrics()
    metrics.observe({"round": 1, "seconds": "slow", "bytes_up": -5, "rejected": {"a": "x"}})
    s = _samples(metrics)
    assert ("fedcore_privacy_epsilon", ()) not in s
    assert s[("fedcore_rounds_completed_total", ())] == 1.0
    assert s[("fedcore_round_seconds_count", ())] == 0.0
    assert s[("fedcore_bytes_up_total", ())] == 0.0
    assert s[("fedcore_rejected_replies_total", (("reason", "other"),))] == 1.0
    assert s[("fedcore_deadline_misses_total", ())] == 0.0


def test_phase_sets_status_and_readiness() -> None:
    metrics = CoordinatorMetrics()
    assert metrics.readiness() == (False, "the SuperLink is starting")
    metrics.set_phase("waiting_sites")
    assert metrics.readiness() == (False, "waiting for the sites to connect")
    metrics.set_phase("running")
    assert metrics.readiness() == (True, "run running")
    s = _samples(metrics)
    status = {
        dict(labels)["phase"]: value
        for (name, labels), value in s.items()
        if name == "fedcore_run_status"
    }
    assert status == {
        "starting": 0.0,
        "waiting_sites": 0.0,
        "submitting": 0.0,
        "running": 1.0,
        "completed": 0.0,
        "failed": 0.0,
    }
    with pytest.raises(ValueError, match="'done'"):
        metrics.set_phase("done")  # type: ignore[arg-type]


def test_registries_are_separate() -> None:
    a, b = CoordinatorMetrics(), CoordinatorMetrics()
    a.observe(RECORDS[0])
    assert _samples(b)[("fedcore_rounds_completed_total", ())] == 0.0


def _get(port: int, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def test_http_endpoint_on_loopback() -> None:
    metrics = CoordinatorMetrics()
    server = HealthServer(metrics, "127.0.0.1", free_port("127.0.0.1"))
    try:
        server.start()
        assert _get(server.port, "/healthz")[0] == 200
        code, _, body = _get(server.port, "/readyz")
        assert (code, body) == (503, "not ready: the SuperLink is starting\n")
        metrics.set_phase("running")
        assert _get(server.port, "/readyz")[:1] == (200,)
        metrics.observe(RECORDS[1])
        code, content_type, body = _get(server.port, "/metrics?x=1")
        assert code == 200
        assert content_type.startswith("text/plain; version=")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["fedcore_rounds_completed"].samples[0].value == 1.0
        assert families["fedcore_privacy_epsilon"].samples[0].value == 1.25
        assert _get(server.port, "/nope")[0] == 404
        # the same address again: the typed error the CLI turns into exit code 3
        with pytest.raises(AddressInUseError, match="--metrics-listen"):
            HealthServer(metrics, "127.0.0.1", server.port).start()
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(OSError):
        _get(server.port, "/healthz")


# --------------------------------------------------------------------------- fed-coordinator


def _coordinator(tmp_path: Path, scenario: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedcore.cli.coordinator_cmd",
        "start",
        "--scenario",
        str(scenario),
        "--insecure",
        "--state",
        str(tmp_path / "state"),
        *args,
    ]


def test_fed_coordinator_refuses_bad_or_taken_metrics_address(tmp_path: Path) -> None:
    scenario, _ = write_scenario(tmp_path)
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = _coordinator(tmp_path, scenario, "--listen", listen, *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    done = run("--metrics-listen", "nine")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--metrics-listen: expected HOST:PORT" in done.stdout
    done = run("--metrics-listen", listen)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot share a port" in done.stdout
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run("--metrics-listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "(metrics endpoint) is already in use" in done.stdout


@pytest.mark.slow
def test_fed_coordinator_serves_health_and_metrics(tmp_path: Path, watch: ProcessWatch) -> None:
    # no site ever connects: the SuperLink serves, the run is not submitted (not ready)
    scenario, _ = write_scenario(tmp_path)
    port = free_port("127.0.0.1")
    argv = _coordinator(
        tmp_path,
        scenario,
        "--listen",
        f"127.0.0.1:{free_port('127.0.0.1')}",
        "--metrics-listen",
        f"127.0.0.1:{port}",
    )
    log = (tmp_path / "coordinator.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    watch.roots.append(proc)

    def readyz() -> tuple[int, str, str]:
        try:
            return _get(port, "/readyz")
        except OSError:
            return 0, "", ""

    wait_for(
        lambda: "waiting for the sites" in readyz()[2] or proc.poll() is not None,
        180,
        "fed-coordinator waiting for the sites",
    )
    text = (tmp_path / "coordinator.log").read_text(errors="replace")
    assert proc.poll() is None, text
    assert f"metrics  http://127.0.0.1:{port}/metrics" in text
    assert _get(port, "/healthz")[0] == 200
    assert readyz()[0] == 503
    families = {f.name: f for f in text_string_to_metric_families(_get(port, "/metrics")[2])}
    assert families["fedcore_up"].samples[0].value == 1.0
    phases = {s.labels["phase"]: s.value for s in families["fedcore_run_status"].samples}
    assert phases["waiting_sites"] == 1.0 and sum(phases.values()) == 1.0
    assert families["fedcore_sites_connected"].samples[0].value == 0.0
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=240) == 130
    with pytest.raises(OSError):
        _get(port, "/healthz")  # the endpoint does not outlive the service
    assert watch.survivors() == []
