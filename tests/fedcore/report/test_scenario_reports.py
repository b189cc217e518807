"""Imaging and table scenarios get a report too: charts for what applies, one line for the rest."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

HOSPITALS = Path(__file__).parents[3] / "scenarios" / "hospital-nodules.yaml"


def run(scenario: Path, out: Path) -> str:
    from fedcore.cli.main import app

    res = CliRunner().invoke(app, ["run", str(scenario), "--out", str(out)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    return (out / "report.html").read_text()


def charts(html: str) -> set[str]:
    return set(re.findall(r'data-chart="([^"]+)"', html))


def missing(html: str) -> dict[str, str]:
    return dict(re.findall(r'<p class="na" data-missing="([^"]+)">([^<]*)</p>', html))


def test_imaging_run_reports_roc_auc_per_hospital_and_says_nothing_was_exported(
    tmp_path: Path,
) -> None:
    spec = yaml.safe_load(HOSPITALS.read_text())
    for site in spec["sites"]:  # the scenario's hospitals and privacy; far less data
        site["data"] |= {"scans": 3, "matrix": 96, "slices": 32}
    spec["rounds"] = 1
    spec["task"]["imaging"] |= {"patch_size": 16, "channels": [8, 16]}
    scenario = tmp_path / "hospitals.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    html = run(scenario, tmp_path / "out")
    assert {"pr-auc-rounds", "site-bars", "privacy-bytes", "schedule-sites"} <= charts(html)
    gone = missing(html)
    assert "no model was exported" in gone["exports-metric"]
    assert (
        f"differential privacy is off (mode {spec['privacy']['mode']})" in gone["privacy-epsilon"]
    )
    assert "ROC-AUC per site: alone vs federated" in html
    for site in spec["sites"]:
        assert f"<td>{site['id']}</td>" in html


def test_table_run_reports_its_rows_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    blocks = []
    for site in ("bank-a", "bank-b"):
        n = 800
        label = (rng.random(n) < 0.06).astype(int)
        x = rng.normal(size=(n, 3)) + 1.2 * label[:, None]
        t = np.sort(rng.uniform(0, 20 * 86_400, n)).round(3)
        lines = ["when,amt,pc0,pc1,pc2,fraud"] + [
            f"{t[i]},{10 + i % 50},{x[i, 0]:.4f},{x[i, 1]:.4f},{x[i, 2]:.4f},{label[i]}"
            for i in range(n)
        ]
        (tmp_path / f"{site}.csv").write_text("\n".join(lines) + "\n")
        blocks.append(
            f"  - id: {site}\n    data:\n      kind: table\n      path: {site}.csv\n"
            "      columns:\n        label: {column: fraud}\n"
            '        timestamp: {column: when, format: offset_s, origin: "2024-01-01T00:00:00+00:00"}\n'
            "        amount: amt\n        features: {v0: pc0, v1: pc1, v2: pc2}\n"
        )
    scenario = tmp_path / "card.yaml"
    scenario.write_text(
        "name: card-report\nseed: 3\nrounds: 2\n"
        "task: {dataset: table, model: row-mlp, features: [v0, v1, v2], hidden: 8}\n"
        "training: {local_epochs: 2, lr: 0.02}\nscheduler: {min_sites: 2}\n"
        "baselines: {centralized: true, local_only: true}\nexport: {int8: false}\nsites:\n"
        + "".join(blocks)
    )
    html = run(scenario, tmp_path / "out")
    expected = {"pr-auc-rounds", "site-bars", "privacy-bytes", "schedule-sites"}
    assert expected <= charts(html)
    assert "task row-mlp" in html
    assert "PR-AUC per site: alone vs federated" in html
    # no INT8 export for tables yet: the section says so in one line
    assert "no model was exported" in missing(html)["exports-metric"]
