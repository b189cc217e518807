"""The report's operational sections: privacy (bytes, epsilon), the schedule's decisions, exports.

Pure functions of a run's documents, as in :mod:`fedcore.report.model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedcore.report import charts as C
from fedcore.report.model import (
    Docs,
    Figure,
    Section,
    Table,
    as_list,
    as_map,
    fmt,
    numbered,
    round_records,
)

STATES = {"trained": "#2ca02c", "left out": "#d62728", "not chosen": "#c7c7c7"}
"""Schedule grid states and their colours."""


def privacy_section(docs: Docs) -> Section:
    """Protection mode, bytes sent and received per round, and the DP budget spent per round."""
    s = docs.summary
    priv = as_map(s.get("privacy"))
    rounds = round_records(docs)
    sec = Section("privacy", "Privacy and traffic")
    mode = str(priv.get("mode", "unknown"))
    sec.facts.append(("protection", mode))
    if "authenticated" in priv:
        sec.facts.append(("sites authenticated", "yes" if priv.get("authenticated") else "no"))
    eps = C.finite(priv.get("epsilon"))
    if eps is not None:
        delta = C.finite(priv.get("delta"))
        spent = f"({eps:.3f}, {'?' if delta is None else f'{delta:g}'})-DP"
        sec.facts.append(("differential privacy", f"{spent} after {priv.get('rounds')} rounds"))
        for key in ("noise_multiplier", "clip_norm", "accountant"):
            if priv.get(key) is not None:
                sec.facts.append((key.replace("_", " "), str(priv[key])))
    else:
        sec.facts.append(("differential privacy", "off"))
    for key, label in (
        ("bytes_up", "sent by sites (total)"),
        ("bytes_down", "sent to sites (total)"),
    ):
        v = C.finite(priv.get(key))
        if v is not None:
            sec.facts.append((label, C.fmt_bytes(v)))
    if mode == "plaintext":
        sec.notes.append(
            "plaintext mode: the coordinator can read every site's update (tests and benchmarks only)"
        )
    cats = [str(r.get("round")) for r in rounds]
    up = [C.finite(r.get("bytes_up")) for r in rounds]
    down = [C.finite(r.get("bytes_down")) for r in rounds]
    if rounds and any(v is not None for v in (*up, *down)):
        kb = [
            C.BarGroup("sent by sites (up)", [None if v is None else v / 1024 for v in up]),
            C.BarGroup("sent to sites (down)", [None if v is None else v / 1024 for v in down]),
        ]
        svg = C.bar_chart(cats, kb, y_label="KB", x_label="round", value_format="{:.1f} KB")
        sec.figures.append(Figure("privacy-bytes", "Bytes on the wire per round.", svg))
    else:
        sec.figures.append(Figure("privacy-bytes", "", missing="no traffic was recorded per round"))
    pts = [(float(r.get("round") or 0), C.finite(r.get("epsilon"))) for r in rounds]
    eps_pts = [(x, y) for x, y in pts if y is not None]
    if eps_pts:
        svg = C.line_chart(
            [C.Series("epsilon spent", eps_pts, markers=True)],
            x_label="round",
            y_label="epsilon",
            y_domain=(0.0, max(y for _, y in eps_pts)),
            integer_x=True,
        )
        delta = C.finite(priv.get("delta"))
        caption = "Privacy budget spent after each round" + (
            f" (delta {delta:g})." if delta else "."
        )
        sec.figures.append(Figure("privacy-epsilon", caption, svg))
    else:
        sec.figures.append(
            Figure(
                "privacy-epsilon",
                "",
                missing=f"differential privacy is off (mode {mode}): no privacy budget to chart",
            )
        )
    return sec


def _reasons(reasons: object) -> str:
    return "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)


def schedule_grid(schedule: list[Mapping[str, Any]], sites: list[str]) -> str | None:
    """Sites x rounds: trained (with its epochs), left out (reasons in the tooltip), not chosen."""
    cells: dict[tuple[int, int], C.Cell] = {}
    index = {site: i for i, site in enumerate(sites)}
    for ci, entry in enumerate(schedule):
        chosen = [str(x) for x in as_list(entry.get("chosen"))]
        rejected = as_map(entry.get("rejected"))
        epochs = as_map(entry.get("epochs"))
        predicted, measured = as_map(entry.get("predicted_s")), as_map(entry.get("measured_s"))
        for site, ri in index.items():
            if site in chosen:
                tip = [f"{site}, round {entry.get('round')}: trained"]
                if site in epochs:
                    tip.append(f"{epochs[site]} epochs")
                if C.finite(predicted.get(site)) is not None:
                    tip.append(f"predicted {predicted[site]:.2f}s")
                if C.finite(measured.get(site)) is not None:
                    tip.append(f"measured {measured[site]:.2f}s")
                text = str(epochs[site]) if site in epochs else ""
                cells[(ri, ci)] = C.Cell("trained", text, ", ".join(tip))
            elif site in rejected:
                why = f"{site}, round {entry.get('round')}: left out: {_reasons(rejected[site])}"
                cells[(ri, ci)] = C.Cell("left out", "", why)
            else:
                cells[(ri, ci)] = C.Cell("not chosen")
    if not cells:
        return None
    cols = [str(e.get("round")) for e in schedule]
    return C.grid_chart(sites, cols, cells, STATES, x_label="round (cell text: local epochs)")


def schedule_section(docs: Docs) -> Section:
    """The scheduler's decision per round: which sites, their epochs, predicted vs measured time."""
    s = docs.summary
    schedule = numbered(s.get("schedule") or docs.federation.get("schedule"))
    rounds = round_records(docs)
    sec = Section("schedule", "The schedule's decisions")
    digests = [as_map(r.get("schedule")) for r in rounds]
    policy = next((str(d["policy"]) for d in digests if d.get("policy")), "")
    if policy:
        sec.facts.append(("policy", policy))
    sim = as_map(s.get("simulation"))
    for key in ("virtual_time_s", "deadline_misses", "dropouts", "mean_wait_s"):
        if C.finite(sim.get(key)) is not None:
            sec.facts.append((f"simulated {key.replace('_', ' ')}", f"{sim[key]:g}"))
    sites = [str(x) for x in as_list(s.get("sites"))]
    grid = schedule_grid(schedule, sites) if schedule and sites else None
    if grid:
        sec.figures.append(
            Figure(
                "schedule-sites",
                "Which sites trained in each round (hover for reasons and times).",
                grid,
            )
        )
    else:
        sec.figures.append(
            Figure("schedule-sites", "", missing="the run recorded no scheduling decisions")
        )
    xs: list[float] = []
    pred: list[float] = []
    meas: list[float] = []
    dead: list[float] = []
    by_round = {int(r.get("round") or 0): d for r, d in zip(rounds, digests, strict=True)}
    for entry in schedule:
        rnd = int(entry.get("round") or 0)
        p = [
            v
            for v in (C.finite(x) for x in as_map(entry.get("predicted_s")).values())
            if v is not None
        ]
        m = [
            v
            for v in (C.finite(x) for x in as_map(entry.get("measured_s")).values())
            if v is not None
        ]
        d = C.finite(entry.get("deadline_s"))
        if d is None:
            d = C.finite(by_round.get(rnd, {}).get("deadline_s"))
        xs.append(float(rnd))
        pred.append(max(p) if p else float("nan"))
        meas.append(max(m) if m else float("nan"))
        dead.append(d if d is not None else float("nan"))
    series = [
        C.Series(name, list(zip(xs, ys, strict=True)), dashed=name == "deadline", markers=True)
        for name, ys in (
            ("predicted (slowest chosen site)", pred),
            ("measured (slowest site)", meas),
            ("deadline", dead),
        )
        if any(C.finite(y) is not None for y in ys)
    ]
    if series:
        svg = C.line_chart(series, x_label="round", y_label="seconds", integer_x=True)
        sec.figures.append(
            Figure("schedule-time", "Predicted against measured training time per round.", svg)
        )
    else:
        sec.figures.append(
            Figure("schedule-time", "", missing="no training times were predicted or measured")
        )
    if not any(C.finite(y) is not None for y in pred) and series:
        sec.notes.append(f"policy {policy or 'unknown'} predicts no durations: measured times only")
    return sec


def exports_section(docs: Docs) -> Section:
    """Each site's exported model: path taken, provider, FP32 vs INT8 metric, latency, size."""
    s = docs.summary
    exports = {str(k): as_map(v) for k, v in as_map(s.get("exports")).items()}
    sec = Section("exports", "Exported models per site")
    if not exports:
        sec.figures.append(
            Figure(
                "exports-metric",
                "",
                missing="no model was exported in this run (export disabled or not offered for this task)",
            )
        )
        return sec
    rows, failed = [], []
    for site, m in exports.items():
        if "error" in m:
            failed.append(f"export at {site} failed: {m['error']}")
            rows.append([site, "failed", "—", "—", "—", "—", "—"])
            continue
        size = C.finite(m.get("size_bytes"))
        path = str(m.get("path_taken")) + (" (INT8 refused)" if m.get("refused") else "")
        rows.append(
            [
                site,
                path,
                str(m.get("provider") or "—").removesuffix("ExecutionProvider"),
                fmt(m.get("fp32_metric")),
                fmt(m.get("int8_metric")),
                fmt(m.get("latency_ms"), 2),
                "—" if size is None else f"{size / 1024:.1f}",
            ]
        )
    metric = next((str(m["metric"]) for m in exports.values() if m.get("metric")), "metric")
    label = {"pr_auc": "PR-AUC", "roc_auc": "ROC-AUC"}.get(metric, metric)
    sec.tables.append(
        Table(
            ["site", "path", "provider", f"FP32 {label}", f"INT8 {label}", "latency ms", "KB"], rows
        )
    )
    sec.notes.extend(failed)
    ok = [site for site, m in exports.items() if "error" not in m]
    groups = [
        C.BarGroup("FP32", [C.finite(exports[x].get("fp32_metric")) for x in ok]),
        C.BarGroup("INT8", [C.finite(exports[x].get("int8_metric")) for x in ok]),
    ]
    if ok and any(v is not None for g in groups for v in g.values):
        svg = C.bar_chart(ok, groups, y_label=label, x_label="site")
        sec.figures.append(
            Figure(
                "exports-metric",
                f"{label} of the FP32 and INT8 models on each site's test split.",
                svg,
            )
        )
    else:
        sec.figures.append(
            Figure("exports-metric", "", missing="no export was checked against its FP32 model")
        )
    lat = [C.finite(exports[x].get("latency_ms")) for x in ok]
    if ok and any(v is not None for v in lat):
        svg = C.bar_chart(
            ok,
            [C.BarGroup("latency", lat)],
            y_label="ms per batch",
            x_label="site",
            value_format="{:.2f} ms",
        )
        sec.figures.append(
            Figure("exports-latency", "Inference latency of the served model at each site.", svg)
        )
    return sec
