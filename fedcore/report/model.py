"""The report's model: sections of charts, facts and tables built from a run's JSON documents.

Pure functions of the documents (``summary.json``, ``federation.json``, curves): no I/O.
A section whose data a run lacks (no exports for imaging, no DP budget) carries one line
saying so in place of its chart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcore.report import charts as C
from fedcore.report.curves import curve_points, recorded_curves, step_area


@dataclass(frozen=True)
class Figure:
    """One chart: ``chart`` is its stable id (``data-chart``); ``svg`` its markup, or ``None``
    with ``missing`` saying in one line why the run has nothing to draw."""

    chart: str
    caption: str
    svg: str | None = None
    missing: str = ""


@dataclass(frozen=True)
class Table:
    """A plain table: header cells and rows of cells (text, escaped when rendered)."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Section:
    """A titled part of the report: facts (label, value), figures, tables and notes."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Docs:
    """A run's documents as read from its directory (absent ones empty)."""

    summary: Mapping[str, Any]
    federation: Mapping[str, Any] = field(default_factory=dict)
    curves: Mapping[str, Any] = field(default_factory=dict)


def fmt(value: object, digits: int = 4) -> str:
    """A metric for a table: ``0.1234``; ``—`` when missing or not finite."""
    v = C.finite(value)
    return "—" if v is None else f"{v:.{digits}f}"


def as_map(doc: object) -> Mapping[str, Any]:
    """``doc`` when it is a mapping, else an empty one (documents may lack any part)."""
    return doc if isinstance(doc, Mapping) else {}


def as_list(doc: object) -> list[Any]:
    """``doc`` when it is a list, else an empty one."""
    return doc if isinstance(doc, list) else []


def numbered(entries: object) -> list[Mapping[str, Any]]:
    """The mappings in ``entries`` (a list) whose ``round`` is a number; others are skipped."""
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, Mapping) and C.finite(e.get("round")) is not None]


def round_records(docs: Docs) -> list[Mapping[str, Any]]:
    """Round records: ``federation.json``'s (with per-site metrics) else ``summary.json``'s."""
    for doc in (docs.federation, docs.summary):
        rounds = numbered(doc.get("rounds"))
        if rounds:
            return rounds
    return []


def unfinished_summary(federation: Mapping[str, Any]) -> dict[str, Any]:
    """What a run that stopped early (``federation.json`` only) can show, shaped as a summary.

    Its rounds, schedule, privacy (with the bytes summed over the rounds) and status; the
    sites are those any round or decision names, in the order first seen.
    """
    rounds = numbered(federation.get("rounds"))
    sites: dict[str, None] = {}
    for r in rounds:
        for site in (
            *as_list(r.get("sites")),
            *as_map(r.get("per_site")),
            *as_map(r.get("rejected")),
        ):
            sites[str(site)] = None
    for entry in numbered(federation.get("schedule")):
        for site in (*as_list(entry.get("chosen")), *as_map(entry.get("rejected"))):
            sites[str(site)] = None
    bytes_sum = {
        key: sum(v for v in (C.finite(r.get(key)) for r in rounds) if v is not None)
        for key in ("bytes_up", "bytes_down")
    }
    return {
        "scenario": federation.get("scenario", "run"),
        "fingerprint": federation.get("fingerprint", "?"),
        "status": str(federation.get("status") or "unknown"),
        "error": federation.get("error"),
        "rounds_planned": federation.get("rounds_planned"),
        "sites": list(sites),
        "rounds": rounds,
        "schedule": numbered(federation.get("schedule")),
        "privacy": {**as_map(federation.get("privacy")), **bytes_sum},
        "exports": as_map(federation.get("exports")),
    }


def is_imaging(summary: Mapping[str, Any]) -> bool:
    """The run trained the imaging task (nodule patches), whose per-site metric is ROC-AUC."""
    return summary.get("task") == "nodule-net"


def site_key(summary: Mapping[str, Any]) -> tuple[str, str]:
    """The per-site metric the command line compares (key, label): ROC-AUC for imaging."""
    return ("roc_auc", "ROC-AUC") if is_imaging(summary) else ("pr_auc", "PR-AUC")


def pr_section(docs: Docs) -> Section:
    """PR curves of the federated model and every baseline whose test scores were recorded."""
    s = docs.summary
    curves = recorded_curves(s, docs.curves)
    sec = Section("pr-curves", "Precision-recall curves (pooled test sets)")
    b = as_map(s.get("baselines"))
    recorded = {
        "federated": as_map(s.get("final")).get("pr_auc"),
        "local-only (pooled)": as_map(as_map(b.get("local_only")).get("pooled")).get("pr_auc"),
        "centralized": as_map(b.get("centralized")).get("pr_auc"),
        "non-graph": as_map(b.get("non_graph")).get("pr_auc"),
    }
    series: list[C.Series] = []
    prevalence: float | None = None
    for name, doc in curves.items():
        points = curve_points(doc)
        if not points:
            continue
        pr = C.finite(recorded.get(name))
        label = f"{name}: PR-AUC {fmt(pr if pr is not None else step_area(points), 3)}"
        series.append(C.Series(label, [(0.0, points[0][1]), *points], step=True))
        pos, neg = sum(doc["hist_pos"]), sum(doc["hist_neg"])
        prevalence = prevalence if prevalence is not None else pos / max(pos + neg, 1)
    if series:
        if prevalence is not None:
            series.append(
                C.Series(
                    f"no skill (prevalence {prevalence:.3f})",
                    [(0.0, prevalence), (1.0, prevalence)],
                    dashed=True,
                    width=1.0,
                )
            )
        svg = C.line_chart(
            series, x_label="recall", y_label="precision", x_domain=(0.0, 1.0), y_domain=(0.0, 1.0)
        )
        sec.figures.append(
            Figure("pr-curves", "Precision against recall, flagging at each score-bin edge.", svg)
        )
        without = [n for n, v in recorded.items() if n not in curves and C.finite(v) is not None]
        if without:
            sec.notes.append(
                "no test scores recorded for "
                + ", ".join(f"{n} (PR-AUC {fmt(recorded[n], 3)})" for n in without)
                + ": no curve drawn"
            )
    else:
        sec.figures.append(
            Figure(
                "pr-curves",
                "Precision against recall.",
                missing="this run recorded no score histograms (curves): run `fedcore report OUT --rescore` "
                "to draw the federated model's curve from its sites' test data",
            )
        )
    return sec


def rounds_section(docs: Docs) -> Section:
    """The pooled PR-AUC per round, each site's, and the baselines' final figures as references."""
    s = docs.summary
    rounds = round_records(docs)
    sec = Section("pr-auc-rounds", "PR-AUC per round")
    if not rounds:
        sec.figures.append(Figure("pr-auc-rounds", "", missing="no round was recorded"))
        return sec
    xs = [float(r.get("round") or 0) for r in rounds]
    series = [
        C.Series(
            "federated, pooled",
            [
                (x, C.finite(r.get("pr_auc")) or float("nan"))
                for x, r in zip(xs, rounds, strict=True)
            ],
            width=3.0,
            markers=True,
        )
    ]
    sites = [str(x) for x in as_list(s.get("sites"))]
    if len(sites) <= 12:
        for site in sites:
            pts = [
                (
                    x,
                    C.finite(as_map(as_map(r.get("per_site")).get(site)).get("pr_auc"))
                    or float("nan"),
                )
                for x, r in zip(xs, rounds, strict=True)
            ]
            if any(C.finite(y) is not None for _, y in pts):
                series.append(C.Series(f"site {site}", pts, width=1.0, markers=True))
    b = as_map(s.get("baselines"))
    refs = (
        ("local-only, site mean", as_map(as_map(b.get("local_only")).get("mean")).get("pr_auc")),
        ("centralized", as_map(b.get("centralized")).get("pr_auc")),
    )
    for name, value in refs:
        v = C.finite(value)
        if v is not None:
            series.append(
                C.Series(f"{name} (final)", [(min(xs), v), (max(xs), v)], dashed=True, width=1.5)
            )
    svg = C.line_chart(series, x_label="round", y_label="PR-AUC", integer_x=True)
    sec.figures.append(
        Figure(
            "pr-auc-rounds",
            "Each round's evaluation of the global model; dashed: baselines after training.",
            svg,
        )
    )
    return sec


def sites_section(docs: Docs) -> Section:
    """Each site's metric alone (local-only) against the federated model's, as bars."""
    s = docs.summary
    key, label = site_key(s)
    fed = as_map(as_map(s.get("final")).get("per_site"))
    b = as_map(s.get("baselines"))
    local = as_map(as_map(b.get("local_only")).get("per_site"))
    central = as_map(as_map(b.get("centralized")).get("per_site"))
    sec = Section("site-bars", f"{label} per site: alone vs federated")
    sites = [str(x) for x in fed] or [str(x) for x in as_list(s.get("sites"))]
    groups = []
    for name, per in (("local-only (alone)", local), ("federated", fed), ("centralized", central)):
        if per:
            groups.append(
                C.BarGroup(name, [C.finite(as_map(per.get(site)).get(key)) for site in sites])
            )
    if not sites or not any(v is not None for g in groups for v in g.values):
        sec.figures.append(Figure("site-bars", "", missing=f"no per-site {label} was recorded"))
        return sec
    svg = C.bar_chart(sites, groups, y_label=label, x_label="site")
    sec.figures.append(Figure("site-bars", f"{label} on each site's own test split.", svg))
    rows = [
        [
            site,
            fmt(as_map(fed.get(site)).get("num_test"), 0),
            fmt(as_map(fed.get(site)).get("num_test_pos"), 0),
            fmt(as_map(local.get(site)).get(key)),
            fmt(as_map(fed.get(site)).get(key)),
        ]
        for site in sites
    ]
    sec.tables.append(
        Table(["site", "test examples", "positives", "local-only", "federated"], rows)
    )
    undefined = [site for site in sites if C.finite(as_map(fed.get(site)).get(key)) is None]
    if undefined:
        sec.notes.append(
            f"{label} undefined (one class only in the test split) at: {', '.join(undefined)}"
        )
    return sec
