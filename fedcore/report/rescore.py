"""Score a finished simulation's final model again on every site's test split, for its PR curve.

For runs whose ``summary.json`` holds no curves: the final federated model and the sites'
data are still in the run directory (a simulation keeps both), so the exact test scores
can be computed again. The result is written to ``OUT/curves.json`` as score histograms.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedcore.report.build import ReportError, read_docs
from fedcore.report.curves import CURVES_FILE, read_curves_file

RESCORE_BINS = 1000
"""Score bins of a rescored curve: fine enough that the curve is exact for small test sets."""

log = logging.getLogger(__name__)


def _scenario_path(out_dir: Path, summary: dict[str, Any]) -> Path:
    raw = summary.get("scenario_file")
    if not raw:
        raise ReportError(f"{out_dir / 'summary.json'} names no scenario_file; cannot rescore")
    path = Path(str(raw))
    if path.is_file():
        return path
    raise ReportError(
        f"expected the run's scenario at {path}, found no file there; fix: run "
        f"`fedcore report` from the directory the run started in, or restore the file"
    )


def federated_curve(out_dir: Path) -> dict[str, Any]:
    """The final federated model's pooled test-score histograms over every site with data.

    Raises:
        ReportError: the scenario file changed since the run (another fingerprint), is gone,
            or no site's data could be loaded.
    """
    from safetensors.numpy import load_file

    from fedcore import tasks
    from fedcore.config import load_scenario, load_site_config
    from fedcore.metrics import score_histograms
    from fedcore.training import load_arrays

    summary = dict(read_docs(out_dir).summary)
    if summary.get("status", "completed") != "completed" or not summary.get("model"):
        raise ReportError(
            f"expected a finished run in {out_dir} to rescore its final model, found status "
            f"{summary.get('status', 'unknown')}; fix: finish the run (run it again to resume)"
        )
    sc = load_scenario(_scenario_path(out_dir, summary))
    if sc.fingerprint() != summary.get("fingerprint"):
        raise ReportError(
            f"expected the scenario of the run (fingerprint {summary.get('fingerprint')}), found "
            f"fingerprint {sc.fingerprint()} in {summary.get('scenario_file')}: it changed "
            "since the run; fix: restore it, or run the scenario again"
        )
    model = tasks.build(sc.task)
    load_arrays(model, load_file(str(summary["model"])))
    labels: list[int] = []
    scores: list[float] = []
    problems: dict[str, str] = {}
    for site in [str(s) for s in summary.get("sites") or []]:
        try:
            data = tasks.load_site(load_site_config(out_dir / "sites" / f"{site}.yaml"), sc.task)
        except Exception as exc:  # one site's unreadable data leaves it out, as the run did
            problems[site] = str(exc)
            log.warning("site %s left out of the rescored curve: %s", site, exc)
            continue
        ev = tasks.evaluate(model, data, sc.task)
        labels.extend(int(v) for v in ev.labels)
        scores.extend(float(v) for v in ev.scores)
    if not labels:
        raise ReportError(f"no site's test data could be loaded to rescore: {problems}")
    hist_pos, hist_neg = score_histograms(labels, scores, RESCORE_BINS)
    return {"hist_pos": hist_pos, "hist_neg": hist_neg, "source": "rescored", "left_out": problems}


def rescore(out_dir: Path) -> Path:
    """Write the federated model's curve into ``OUT/curves.json`` (other curves there kept)."""
    from fedcore.storage import atomic_write_json

    curves = read_curves_file(out_dir)
    curves["federated"] = federated_curve(out_dir)
    path = out_dir / CURVES_FILE
    atomic_write_json(path, curves)
    return path
