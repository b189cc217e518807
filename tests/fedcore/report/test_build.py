"""The report built from documents: sections that do not apply say so, data is escaped, errors."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcore.report import REPORT_FILE, ReportError, render_html, try_write_report, write_report
from fedcore.report.model import Docs

SITES = ["hospital-a", "hospital-b"]


def imaging_summary() -> dict[str, Any]:
    """An imaging run's summary.json, shaped as `fedcore run` writes it (secagg+, no DP, no export)."""
    site = {"pr_auc": 0.58, "roc_auc": 0.5, "num_test": 3.0, "num_test_pos": 2.0}
    return {
        "scenario": "hospital-nodules",
        "fingerprint": "f00",
        "task": "nodule-net",
        "engine": "inprocess",
        "privacy": {"mode": "secagg+", "authenticated": True, "bytes_up": 2048, "bytes_down": 4096},
        "sites": SITES,
        "rounds": [
            {
                "round": r,
                "sites": SITES,
                "pr_auc": 0.7 + 0.05 * r,
                "roc_auc": 0.6,
                "bytes_up": 1024,
                "bytes_down": 2048,
                "epsilon": None,
                "rejected": {},
                "schedule": {"policy": "random", "chosen": 2, "candidates": 2},
            }
            for r in (1, 2)
        ],
        "final": {
            "pr_auc": 0.83,
            "roc_auc": 0.66,
            "sensitivity": 0.25,
            "specificity": 0.66,
            "mean_over_sites": {"pr_auc": 0.86, "roc_auc": 0.5},
            "per_site": {"hospital-a": site, "hospital-b": {**site, "roc_auc": math.nan}},
        },
        "baselines": {"local_only": {"per_site": {"hospital-a": {"roc_auc": 0.4}}}},
        "schedule": [
            {"round": r, "chosen": SITES, "rejected": {}, "scores": {}, "measured_s": {}}
            for r in (1, 2)
        ],
        "exports": {},
        "wall_seconds": 16.9,
    }


def charts(html: str) -> set[str]:
    return set(re.findall(r'<figure class="chart" id="[^"]+" data-chart="([^"]+)"', html))


def missing(html: str) -> dict[str, str]:
    return dict(re.findall(r'<p class="na" data-missing="([^"]+)">([^<]*)</p>', html))


def test_imaging_run_charts_what_applies_and_says_what_does_not() -> None:
    html = render_html(Docs(imaging_summary()))
    assert charts(html) == {"pr-auc-rounds", "site-bars", "privacy-bytes", "schedule-sites"}
    gone = missing(html)
    assert set(gone) == {"pr-curves", "privacy-epsilon", "schedule-time", "exports-metric"}
    assert "differential privacy is off (mode secagg+)" in gone["privacy-epsilon"]
    assert "no model was exported" in gone["exports-metric"]
    assert "ROC-AUC per site: alone vs federated" in html  # imaging compares ROC-AUC per site
    assert "ROC-AUC undefined (one class only in the test split) at: hospital-b" in html


def test_strings_from_the_run_are_text_never_markup() -> None:
    s = imaging_summary()
    s["scenario"] = "<script>alert(1)</script>"
    s["sites"] = ["<b>x</b>", "hospital-b"]
    s["final"]["per_site"] = {"<b>x</b>": {"roc_auc": 0.5}}
    s["schedule"][0]["rejected"] = {"<b>x</b>": ['late "by" <i>10s</i>']}
    s["schedule"][0]["chosen"] = ["hospital-b"]
    s["exports"] = {"<b>x</b>": {"error": "<img src=x onerror=alert(1)>"}}
    html = render_html(Docs(s))
    assert "<script" not in html and "<b>" not in html and "<img" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "export at &lt;b&gt;x&lt;/b&gt; failed" in html


def test_curves_from_the_summary_and_dp_budget_are_drawn() -> None:
    s = imaging_summary()
    s["final"]["curve"] = {"hist_pos": [0, 1, 3], "hist_neg": [5, 2, 1]}
    s["baselines"]["centralized"] = {
        "pr_auc": 0.6,
        "curve": {"hist_pos": [1, 2, 1], "hist_neg": [4, 3, 1]},
    }
    s["privacy"] |= {"epsilon": 2.5, "delta": 1e-5, "rounds": 2}
    for r, eps in zip(s["rounds"], (1.5, 2.5), strict=True):
        r["epsilon"] = eps
    html = render_html(Docs(s))
    assert {"pr-curves", "privacy-epsilon"} <= charts(html)
    pr = re.search(r'data-chart="pr-curves">(.*?)</figure>', html, re.S)
    assert pr is not None
    names = re.findall(r'<path class="series" data-series="([^"]+)"', pr.group(1))
    assert names == [
        "federated: PR-AUC 0.830",
        "centralized: PR-AUC 0.600",
        "no skill (prevalence 0.333)",
    ]
    assert "(2.500, 1e-05)-DP after 2 rounds" in html


def test_write_report_needs_a_finished_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ReportError, match="expected a run in .* found neither; fix"):
        write_report(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING):
        assert try_write_report(tmp_path) is None  # logs, never raises
    assert "could not write" in caplog.text and "expected a JSON object, found list" in caplog.text
    (tmp_path / "summary.json").write_text(json.dumps(imaging_summary()))
    path = write_report(tmp_path)
    assert path == tmp_path / REPORT_FILE and path.read_text().startswith("<!DOCTYPE html>")


def test_report_command_refuses_a_directory_without_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.cli.main import app

    monkeypatch.setenv("COLUMNS", "300")
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert "cannot report on" in res.output and "expected a run in" in " ".join(res.output.split())
    assert not (tmp_path / REPORT_FILE).exists()


ODD = [None, "x", "<b>", [], {}, [1, "a"], {"a": "b"}, -1, 0, math.nan, math.inf, True, 10**12]
"""Values a damaged or foreign summary.json might hold where the report expects others."""


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def test_any_damaged_document_still_renders_a_page() -> None:
    rng = random.Random(11)
    base = imaging_summary()
    base["exports"] = {"hospital-a": {"path_taken": "onnx-static", "fp32_metric": 0.5}}
    paths = _paths(base)
    for _ in range(400):
        doc = copy.deepcopy(base)
        for path in rng.sample(paths, 3):  # three values replaced by odd ones
            node = doc
            try:
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = rng.choice(ODD)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier replacement removed this path
        html = render_html(Docs(doc))
        assert html.count("<section ") == 7, doc
        assert "<b>" not in html
