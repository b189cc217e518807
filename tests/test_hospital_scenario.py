"""`fedcore run` on the hospital scenario (shrunk: fewer scans, two rounds), as a data scientist runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

SCENARIO = Path(__file__).parents[1] / "scenarios" / "hospital-nodules.yaml"


def test_hospital_run_reports_imaging_metrics_and_baselines(
    tmp_path: Path, scenario_file: Callable[..., Path]
) -> None:
    spec = yaml.safe_load(SCENARIO.read_text())
    for site in spec["sites"]:  # the scenario's hospitals, scanners and privacy; less data
        site["data"] |= {"scans": 4, "matrix": 96, "slices": 32}
    spec["rounds"] = 2
    spec["task"]["imaging"] |= {"patch_size": 16, "channels": [8, 16]}
    path = scenario_file(yaml.safe_dump(spec), name="hospitals.yaml", folder=tmp_path)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},  # the final table's rows on one line each
    )
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "nodule-net" and s["privacy"]["mode"] == spec["privacy"]["mode"]
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    assert all(r["sites"] == ["hospital-a", "hospital-b", "hospital-c"] for r in s["rounds"])
    final = s["final"]
    assert {"roc_auc", "sensitivity", "specificity", "num_test"} <= set(final)
    assert 0.0 <= final["sensitivity"] <= 1.0 and 0.0 <= final["specificity"] <= 1.0
    assert final["sensitivity"] == final["recall"] and final["specificity"] == 1.0 - final["fpr"]
    # every hospital flags at its own balanced threshold, chosen on its training patients
    assert final["operating_point"] == spec["task"]["operating_point"] == "balanced"
    thresholds = [m["threshold"] for m in final["per_site"].values()]
    assert len(thresholds) == 3 and all(0.0 < t < 1.0 for t in thresholds)
    local = s["baselines"]["local_only"]
    assert set(local["per_site"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert {"sensitivity", "specificity"} <= set(local["mean"])
    # cross_site: each hospital's own model judged on every hospital's held-out patients
    across = local["across_sites"]
    assert set(across["per_model"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert all(m["num_test"] == final["num_test"] for m in across["per_model"].values())
    assert across["mean"]["num_test"] == final["num_test"]
    assert 0.0 <= across["mean"]["sensitivity"] <= 1.0
    assert 0.0 <= across["mean"]["specificity"] <= 1.0
    assert {"sensitivity", "specificity", "roc_auc"} <= set(s["baselines"]["centralized"])
    assert "non_graph" not in s["baselines"]  # no graph to leave out
    for sid in ("hospital-a", "hospital-b", "hospital-c"):  # sites keep their de-id reports
        assert list((out / "sites" / sid / "imaging" / "deid").glob("*.deid-report.json"))
    assert "sensitivity" in res.stdout and "specificity" in res.stdout  # the final table
    assert "each on all sites" in res.stdout
