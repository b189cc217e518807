"""`fedcore run` on tables in the sites' own schemas: no ids, three timestamp formats, CSV and Parquet, a site left out by the data-quality gate."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = 1_700_000_000.0


def anonymized_rows(n: int, seed: int, fraud_rate: float = 0.05) -> dict[str, np.ndarray]:
    """Rows like a card table with PCA features only: fraud shifts three of six components."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < fraud_rate).astype(np.int64)
    x = rng.normal(size=(n, 6))
    x[:, :3] += 1.4 * label[:, None]
    t = START + np.sort(rng.uniform(0, 20 * 86_400, n))
    amount = np.round(np.exp(rng.normal(3.5 + 0.7 * label, 1.0)), 2)
    return {"t": t, "x": x, "amount": amount, "label": label}


def write_site(path: Path, rows: dict[str, np.ndarray], time_format: str) -> None:
    t = rows["t"]
    if time_format == "iso":
        times: list[object] = [
            datetime.fromtimestamp(v, timezone.utc).isoformat().replace("+00:00", "Z") for v in t
        ]
    elif time_format == "unix_ms":
        times = [int(round(v * 1000)) for v in t]
    else:  # offset_s from START
        times = [round(v - START, 3) for v in t]
    cols: dict[str, list[object]] = {"when": times, "amt": list(rows["amount"])}
    for j in range(rows["x"].shape[1]):
        cols[f"pc{j}"] = list(rows["x"][:, j])
    cols["fraud"] = ["yes" if v else "no" for v in rows["label"]]
    if path.suffix == ".parquet":
        pq.write_table(pa.table(cols), path)
        return
    lines = [",".join(cols)]
    lines += [",".join(str(c[i]) for c in cols.values()) for i in range(len(t))]
    path.write_text("\n".join(lines) + "\n")


def site_block(site: str, file: str, time_format: str) -> str:
    origin = f', origin: "{datetime.fromtimestamp(START, timezone.utc).isoformat()}"'
    ts = f"{{column: when, format: {time_format}{origin if time_format == 'offset_s' else ''}}}"
    features = ", ".join(f"v{j}: pc{j}" for j in range(6))
    return (
        f"  - id: {site}\n"
        f"    data:\n"
        f"      kind: table\n"
        f"      path: {file}\n"
        f"      columns:\n"
        f"        label: {{column: fraud, positive: [yes], negative: [no]}}\n"
        f"        timestamp: {ts}\n"
        f"        amount: amt\n"
        f"        features: {{{features}}}\n"
    )


SCENARIO = textwrap.dedent(
    """
    name: card-tiny
    seed: 3
    rounds: 3
    task:
      dataset: table
      model: row-mlp
      features: [v0, v1, v2, v3, v4, v5]
      hidden: 16
    training: {local_epochs: 5, lr: 0.02}
    scheduler: {min_sites: 2}
    export: {int8: false}
    baselines: {centralized: true, local_only: true}
    sites:
    """
)


def fedcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_scenario(tmp_path: Path, broken_site: bool = False) -> Path:
    blocks = []
    for k, (site, suffix, fmt) in enumerate(
        [
            ("bank-a", ".csv", "iso"),
            ("bank-b", ".parquet", "unix_ms"),
            ("bank-c", ".csv", "offset_s"),
        ]
    ):
        rows = anonymized_rows(1500, seed=k)
        if broken_site and site == "bank-c":
            rows["x"][::2, 0] = np.nan  # half the rows miss a value
        write_site(tmp_path / f"{site}{suffix}", rows, fmt)
        blocks.append(site_block(site, f"{site}{suffix}", fmt))
    text = SCENARIO + "".join(blocks)
    if broken_site:
        text += "data_quality: {max_missing_share: 0.2}\n"
    path = tmp_path / "card-tiny.yaml"
    path.write_text(text)
    return path


def test_no_id_tables_in_three_time_formats_run_end_to_end(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    res = fedcore("validate", str(scenario))
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "out"
    res = fedcore("run", str(scenario), "--out", str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final"]
    per_site = final["per_site"]
    assert set(per_site) == {"bank-a", "bank-b", "bank-c"}
    rate = sum(m["num_test_pos"] for m in per_site.values()) / final["num_test"]
    assert final["pr_auc"] > 3 * rate  # the shifted components are learnt, far above chance


def test_site_failing_the_quality_gate_is_left_out_with_the_reason(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, broken_site=True)
    out = tmp_path / "out"
    res = fedcore("run", str(scenario), "--out", str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    why = " ".join(rounds[0]["telemetry_problems"]["bank-c"])
    assert "missing_share" in why and "data_quality.max_missing_share" in why
    assert all("bank-c" not in r["sites"] for r in rounds)
    assert all(set(r["sites"]) == {"bank-a", "bank-b"} for r in rounds)
    # the coordinator shows every site's summary once, in the first round it arrives
    shown = rounds[0]["data_quality"]
    assert set(shown) == {"bank-a", "bank-b", "bank-c"}
    assert shown["bank-c"]["rows"] == 1500 and shown["bank-c"]["missing:v0"] == 750
    assert shown["bank-a"]["missing_share"] == 0.0
    assert all("data_quality" not in r for r in rounds[1:])  # unchanged: not repeated
