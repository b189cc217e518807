"""A consortium on simulated devices and a virtual clock, through `fedcore run`: real training, simulated time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fedcore.config import Scenario
from scheduling.sim.grid import build_cluster

SCENARIO = textwrap.dedent(
    """
    name: sim-tiny
    seed: 3
    rounds: 3
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 600, fraud_rate: 0.03}}
      - {id: bank-b, data: {kind: generated, transactions: 400, fraud_rate: 0.03}}
      - {id: bank-c, data: {kind: generated, transactions: 500, fraud_rate: 0.03}}
      - {id: bank-d, data: {kind: generated, transactions: 500, fraud_rate: 0.03}}
    task: {hidden: 8}
    training: {local_epochs: 2}
    export: {enabled: false}
    baselines: {local_only: false, centralized: false, non_graph: false}
    scheduler:
      policy: fedcore
      min_sites: 2
      predictor: {kind: ewma}
      scaling: {policy: hold}
    simulator:
      seed: 5
      examples_per_second: 20
      pools: {bank-a: [h100, h100], bank-b: [cpu], bank-c: [t4, a100], bank-d: [mi250]}
    """
)


def run(tmp_path: Path, name: str) -> dict[str, Any]:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / name
    res = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "virtual clock" in res.stdout  # the progress display shows the simulated time
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def test_pools_come_from_the_scenario() -> None:
    scenario = Scenario.model_validate(
        __import__("yaml").safe_load(SCENARIO) | {"engine": {"name": "inprocess"}}
    )
    cluster = build_cluster(scenario)
    assert cluster.site_ids == ["bank-a", "bank-b", "bank-c", "bank-d"]
    assert cluster.site("bank-c").devices == ("t4", "a100")
    cpu = cluster.telemetry("bank-b")
    assert "device_power_w" not in cpu and cpu["relative_throughput"] == pytest.approx(0.03)


def test_simulated_rounds_take_virtual_time_and_repeat_exactly(tmp_path: Path) -> None:
    first, second = run(tmp_path, "one"), run(tmp_path, "two")
    clock = [r["virtual_time_s"] for r in first["rounds"]]
    assert clock == sorted(clock) and clock[0] > 0
    for entry in first["schedule"]:
        # sites report the simulator's seconds: 400-600 transactions x 70 % train x 2 epochs
        # at 20 examples/s x throughput, far longer than the real training took
        assert all(s > 5.0 for s in entry["measured_s"].values())
    # the CPU-only site (0.03 x an A100) cannot make any deadline once one is set
    late = [e for e in first["schedule"][1:] if "bank-b" in e["chosen"]]
    assert not late or all("bank-b" not in e["measured_s"] for e in late)
    # same scenario, same seeds: the same decisions, durations and clock
    assert first["schedule"] == second["schedule"]
    assert clock == [r["virtual_time_s"] for r in second["rounds"]]
