"""`fedcore run` writes report.html; `fedcore report --rescore` redraws it; headless Chromium renders it
with every chart's marks sized and no network request."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedcore.report.curves import CURVES_FILE, curve_points, step_area

TINY = textwrap.dedent(
    """
    name: report-tiny
    seed: 5
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 300, fraud_rate: 0.06}}
      - {id: bank-b, data: {kind: generated, transactions: 300, fraud_rate: 0.06}}
    task: {hidden: 8}
    training: {local_epochs: 1}
    scheduler: {min_sites: 2}
    privacy:
      mode: plaintext
      dp: {noise_multiplier: 1.0, clip_norm: 0.05, delta: 1.0e-5}
    """
)

RUN_CHARTS = {
    "pr-auc-rounds",
    "site-bars",
    "privacy-bytes",
    "privacy-epsilon",
    "schedule-sites",
    "schedule-time",
    "exports-metric",
    "exports-latency",
}
"""Charts a fraud run with DP, baselines and exports draws whatever else it recorded."""


def cli(*args: str) -> Result:
    from fedcore.cli.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def charts(html: str) -> set[str]:
    return set(re.findall(r'<figure class="chart" id="[^"]+" data-chart="([^"]+)"', html))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny fraud run (DP, baselines, INT8 exports), made once for the module."""
    root = tmp_path_factory.mktemp("report-run")
    scenario = root / "report-tiny.yaml"
    scenario.write_text(TINY)
    out = root / "out"
    res = cli("run", str(scenario), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"report: {out / 'report.html'}" in " ".join(res.output.split())
    return out


def test_run_writes_a_report_with_every_chart_that_applies(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text()
    assert RUN_CHARTS <= charts(html)
    summary = json.loads((run_dir / "summary.json").read_text())
    for site in summary["sites"]:
        assert f'data-category="{site}"' in html  # a bar per site
    eps = summary["privacy"]["epsilon"]
    assert f"({eps:.3f}, 1e-05)-DP after 2 rounds" in html
    # the PR curves: drawn when summary.json carries curves, else one line saying how to get them
    assert 'data-chart="pr-curves"' in html or 'data-missing="pr-curves"' in html


def test_rescore_draws_the_federated_models_pr_curve(run_dir: Path) -> None:
    res = cli("report", str(run_dir), "--rescore")
    assert res.exit_code == 0, res.output
    curves = json.loads((run_dir / CURVES_FILE).read_text())
    points = curve_points(curves["federated"])
    assert points is not None
    summary = json.loads((run_dir / "summary.json").read_text())
    n_test = summary["final"]["num_test"]
    assert sum(curves["federated"]["hist_pos"]) + sum(curves["federated"]["hist_neg"]) == n_test
    # 1000 score bins: ties within a bin move average precision a little from the exact figure
    assert step_area(points) == pytest.approx(summary["final"]["pr_auc"], abs=0.03)
    html = (run_dir / "report.html").read_text()
    assert RUN_CHARTS | {"pr-curves"} <= charts(html)


def test_a_run_that_stopped_is_reported_from_its_rounds(run_dir: Path, tmp_path: Path) -> None:
    federation = json.loads((run_dir / "federation.json").read_text())
    federation |= {
        "status": "failed",
        "error": "round 2: <bank-b> sent no update",
        "rounds_planned": 2,
        "rounds": federation["rounds"][:1],
        "schedule": federation["schedule"][:1],
        "model": None,
        "exports": {},
    }
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "federation.json").write_text(json.dumps(federation))
    res = cli("report", str(stopped))
    assert res.exit_code == 0, res.output
    html = (stopped / "report.html").read_text()
    said = " ".join(html.split())
    assert (
        'data-status="failed">This run did not finish (status failed, 1 of 2 rounds): '
        "round 2: &lt;bank-b&gt; sent no update." in said
    )
    assert {"pr-auc-rounds", "privacy-bytes", "privacy-epsilon", "schedule-sites"} <= charts(html)
    assert 'data-category="1"' in html  # round 1's traffic
    res = cli("report", str(stopped), "--rescore")  # no final model to score again
    assert res.exit_code == 2
    assert "found status failed" in " ".join(res.output.split())


def test_report_has_no_network_reference(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href|xlink:href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert "default-src 'none'" in html  # the page's own policy forbids any fetch


def test_a_report_that_fails_to_render_does_not_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import fedcore.report.build as build

    def broken(docs: Any) -> str:
        raise KeyError("an unexpected document shape")

    monkeypatch.setattr(build, "render_html", broken)
    scenario = tmp_path / "report-tiny.yaml"
    text = TINY.replace("rounds: 2", "rounds: 1").split("privacy:")[0]
    scenario.write_text(
        text + "baselines: {local_only: false, centralized: false, non_graph: false}\n"
        "export: {enabled: false}\n"
    )
    out = tmp_path / "out"
    res = cli("run", str(scenario), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()
    said = caplog.text
    assert "could not write" in said and "an unexpected document shape" in said
    assert f"run `fedcore report {out}` to retry" in said


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
)

PROBE = """<script>
const out = {};
for (const f of document.querySelectorAll('figure.chart')) {
  const svg = f.querySelector('svg');
  const marks = [...f.querySelectorAll('svg path.series, svg rect.bar, svg rect.cell')];
  const sized = marks.filter(m => {
    const b = m.getBoundingClientRect();
    return m.tagName === 'path' ? (b.width > 0 || b.height > 0) : (b.width > 0 && b.height > 0);
  });
  out[f.dataset.chart] = {marks: marks.length, sized: sized.length,
                          width: svg ? svg.getBoundingClientRect().width : 0};
}
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""
"""Appended to a copy of the page (its policy removed, as a test harness): measures every mark."""


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``, networking off; killed (with its helpers) by PID in any case."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        "--window-size=1100,1400",
        *args,
        url,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
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


@pytest.fixture
def rescored(run_dir: Path) -> Iterator[Path]:
    """The run's report with the federated PR curve drawn."""
    if "pr-curves" not in charts((run_dir / "report.html").read_text()):
        assert cli("report", str(run_dir), "--rescore").exit_code == 0
    yield run_dir / "report.html"


@needs_chromium
def test_every_chart_renders_with_sized_marks_in_headless_chromium(
    rescored: Path, tmp_path: Path
) -> None:
    html = rescored.read_text()
    policy = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', html)
    assert policy is not None
    page = tmp_path / "probe.html"
    page.write_text(html.replace(policy.group(0), "").replace("</body>", PROBE + "</body>"))
    done = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found is not None, done.stdout[-2000:]
    measured = json.loads(found.group(1).replace("&quot;", '"'))
    assert set(measured) == charts(html) and RUN_CHARTS | {"pr-curves"} <= set(measured)
    for chart, m in measured.items():
        assert m["marks"] > 0 and m["sized"] > 0, (chart, m)
        assert m["width"] > 100, (chart, m)


def page_requests(netlog: Path) -> set[str]:
    """URLs a page asked for, from Chromium's net log: requests with an initiator (a file page's
    is ``null``); the browser's own background requests say ``not an origin``."""
    log = json.loads(netlog.read_text(errors="replace"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return {
        str(e["params"]["url"])
        for e in log["events"]
        if e.get("type") == start
        and e.get("params", {}).get("initiator", "not an origin") != "not an origin"
    }


@needs_chromium
def test_the_page_requests_nothing_over_the_network(rescored: Path, tmp_path: Path) -> None:
    # the detector sees a page's requests: a page with two remote images makes two
    bad = tmp_path / "bad.html"
    bad.write_text('<img src="http://example.invalid/a.png"><img src="https://127.0.0.1:9/b.png">')
    done = chromium(tmp_path, bad.as_uri(), f"--log-net-log={tmp_path / 'bad.json'}", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    assert page_requests(tmp_path / "bad.json") == {
        "http://example.invalid/a.png",
        "https://127.0.0.1:9/b.png",
    }
    netlog = tmp_path / "netlog.json"
    png = tmp_path / "report.png"
    done = chromium(tmp_path, rescored.as_uri(), f"--log-net-log={netlog}", f"--screenshot={png}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000
    assert page_requests(netlog) == set()
