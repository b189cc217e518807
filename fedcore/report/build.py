"""A run directory's JSON documents -> one self-contained ``report.html`` (inline SVG, no scripts).

The page loads nothing: no script, stylesheet, font or image from anywhere, so it opens
offline and can be mailed. Every string from the run is escaped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcore.report.charts import esc
from fedcore.report.curves import read_curves_file
from fedcore.report.model import (
    Docs,
    Figure,
    Section,
    Table,
    as_map,
    fmt,
    is_imaging,
    numbered,
    pr_section,
    round_records,
    rounds_section,
    sites_section,
    unfinished_summary,
)
from fedcore.report.operations import exports_section, privacy_section, schedule_section

REPORT_FILE = "report.html"
"""The report's file name in a run directory, beside ``summary.json``."""

log = logging.getLogger(__name__)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1000px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}figure{margin:12px 0}figcaption{color:#555;font-size:13px}
svg{max-width:100%;height:auto;display:block}
ul.legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:4px 16px;
font-size:12px}.swatch{display:inline-block;width:18px;margin-right:6px;vertical-align:middle}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border-bottom:1px solid #e3e3e3;padding:3px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}
.stopped{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px}
dt{color:#555}dd{margin:0}.na{color:#777;font-style:italic}.note{color:#8a5a00}
"""


class ReportError(RuntimeError):
    """The run directory cannot be reported on; the message says what was expected and the fix."""


def _read(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when the file is absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    return doc


def read_docs(out_dir: Path) -> Docs:
    """A run directory's documents.

    A run that stopped early (no ``summary.json``) is reported from its ``federation.json``:
    the rounds it completed (:func:`~fedcore.report.model.unfinished_summary`).

    Raises:
        ReportError: neither document holds a run, or one is not a JSON object.
    """
    path = out_dir / "summary.json"
    try:
        summary = _read(path)
        federation = _read(out_dir / "federation.json")
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read the run's documents in {out_dir}: {exc}") from None
    if not summary and numbered(federation.get("rounds")):
        summary = unfinished_summary(federation)  # a run that stopped: what its rounds show
    if not summary:
        raise ReportError(
            f"expected a run in {out_dir} (its summary.json, or federation.json with rounds), "
            "found neither; fix: point at the --out directory of a `fedcore run`"
        )
    return Docs(summary, federation, read_curves_file(out_dir))


def build_sections(docs: Docs) -> list[Section]:
    """The report's sections in page order."""
    return [
        pr_section(docs),
        rounds_section(docs),
        sites_section(docs),
        privacy_section(docs),
        schedule_section(docs),
        exports_section(docs),
    ]


def _models_table(summary: Mapping[str, Any]) -> Table:
    """The final comparison (as ``fedcore run`` prints it): one row per model."""
    imaging = is_imaging(summary)
    cols = (
        [
            ("ROC-AUC", "roc_auc"),
            ("sensitivity", "sensitivity"),
            ("specificity", "specificity"),
            ("PR-AUC", "pr_auc"),
        ]
        if imaging
        else [("PR-AUC", "pr_auc"), ("ROC-AUC", "roc_auc"), ("F1", "f1"), ("FPR", "fpr")]
    )
    final = as_map(summary.get("final"))
    b = as_map(summary.get("baselines"))
    lo = as_map(b.get("local_only"))
    candidates = [
        ("federated, pooled", final),
        ("federated, site mean", final.get("mean_over_sites")),
        ("local-only, site mean", lo.get("mean")),
        ("local-only, each on all sites, mean", as_map(lo.get("across_sites")).get("mean")),
        ("centralized, pooled", b.get("centralized")),
        ("non-graph, pooled", b.get("non_graph")),
    ]
    rows = [
        [name, *(fmt(m.get(k)) for _, k in cols)]
        for name, m in candidates
        if isinstance(m, Mapping) and m
    ]
    return Table(["model", *(c for c, _ in cols)], rows)


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(f: Figure) -> str:
    if f.svg is None:
        return f'<p class="na" data-missing="{esc(f.chart)}">{esc(f.missing)}</p>'
    caption = f"<figcaption>{esc(f.caption)}</figcaption>" if f.caption else ""
    return f'<figure class="chart" id="chart-{esc(f.chart)}" data-chart="{esc(f.chart)}">{f.svg}{caption}</figure>'


def section_html(sec: Section) -> str:
    """One section: title, facts, figures (or their one-line absence), tables, notes."""
    parts = [
        f'<section id="{esc(sec.key)}" data-section="{esc(sec.key)}"><h2>{esc(sec.title)}</h2>'
    ]
    if sec.facts:
        items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in sec.facts)
        parts.append(f'<dl class="facts">{items}</dl>')
    parts.extend(_figure_html(f) for f in sec.figures)
    parts.extend(_table_html(t) for t in sec.tables)
    parts.extend(f'<p class="note">{esc(n)}</p>' for n in sec.notes)
    parts.append("</section>")
    return "".join(parts)


def render_html(docs: Docs) -> str:
    """The whole page for a run's documents."""
    s = docs.summary
    title = f"fedcore report: {s.get('scenario', 'run')}"
    wall = s.get("wall_seconds")
    meta = [
        f"task {s.get('task', '?')}",
        f"engine {s.get('engine', '?')}",
        f"{len(round_records(docs))} rounds",
        f"{len(s['sites']) if isinstance(s.get('sites'), list) else '?'} sites",
        f"privacy {as_map(s.get('privacy')).get('mode', '?')}",
        f"wall {wall:.1f}s" if isinstance(wall, int | float) else "",
        f"finished {s.get('finished_at')}" if s.get("finished_at") else "",
    ]
    status = str(s.get("status") or "completed")
    stopped = (
        f'<p class="stopped" data-status="{esc(status)}">This run did not finish (status '
        f"{esc(status)}, {len(round_records(docs))} of {esc(s.get('rounds_planned') or '?')} "
        f"rounds): {esc(s.get('error') or 'no reason recorded')}. The report shows the rounds "
        "it completed; the final evaluation and baselines were not run.</p>"
        if status != "completed"
        else ""
    )
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(" · ".join(m for m in meta if m))}</p>',
        stopped,
        '<section id="models" data-section="models"><h2>Test metrics per model</h2>',
        _table_html(_models_table(s)),
        "</section>",
        *(section_html(sec) for sec in build_sections(docs)),
        f'<p class="meta">From summary.json (fingerprint {esc(s.get("fingerprint", "?"))}). '
        "This page loads nothing from any network.</p>",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


def write_report(out_dir: Path) -> Path:
    """Write ``OUT/report.html`` from the run's documents; returns its path.

    Raises:
        ReportError: the run directory holds no finished run's ``summary.json``.
    """
    from fedcore.storage import atomic_write_text

    html = render_html(read_docs(out_dir))
    path = out_dir / REPORT_FILE
    atomic_write_text(path, html)
    return path


def try_write_report(out_dir: Path) -> Path | None:
    """:func:`write_report`, logging a warning instead of raising: a report never sinks a run."""
    try:
        return write_report(out_dir)
    except Exception as exc:  # the run's results are saved; only the page is missing
        log.warning(
            "could not write %s: %s; the run's results are in %s (run `fedcore report %s` to retry)",
            out_dir / REPORT_FILE,
            exc,
            out_dir / "summary.json",
            out_dir,
        )
        return None
