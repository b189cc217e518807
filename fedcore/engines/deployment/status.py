"""The coordinator's status board: round records (``OUT/rounds.jsonl`` rows) in, a JSON snapshot out.

:class:`StatusBoard` is fed the same round records as :class:`~.metrics.CoordinatorMetrics`
(:meth:`StatusBoard.observe`); :meth:`StatusBoard.snapshot` gives what the status page (:mod:`.health`, ``/`` and
``/status.json``) shows: the sites with their state and last metrics, the rounds (PR-AUC, loss,
seconds), the last scheduling decision with the reasons sites were left out, and the privacy
mode and budget. Nothing here does I/O; memory is bounded (:data:`MAX_ROUNDS` rounds,
:data:`MAX_EXTRA_SITES` sites beyond the scenario's).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "MAX_EXTRA_SITES",
    "MAX_ROUNDS",
    "REFRESH_SECONDS",
    "SITE_STATES",
    "STATUS_PAGE",
    "SiteState",
    "StatusBoard",
    "serving_alarm",
]

MAX_ROUNDS: Final[int] = 500
"""Rounds a board keeps by default (the oldest are dropped; the count goes on)."""

MAX_EXTRA_SITES: Final[int] = 200
"""Sites outside the scenario (e.g. an unknown node that was refused) a board keeps at most."""

SiteState = Literal["aggregated", "rejected", "evaluated", "idle", "not_seen"]
"""A site's state in the last round: its update entered the aggregate; it was left out (with
reasons); it only evaluated; it took no part (not chosen); no round record named it yet."""

SITE_STATES: Final[tuple[SiteState, ...]] = (
    "aggregated",
    "rejected",
    "evaluated",
    "idle",
    "not_seen",
)

_ROUND_KEYS: Final[tuple[str, ...]] = ("loss", "pr_auc", "roc_auc", "seconds", "epsilon")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    """``value`` made JSON-safe: non-finite numbers become ``None``, keys become text."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def serving_alarm(summary: Mapping[str, float]) -> str:
    """One line on a site's serving alarms from its serving summary, or ``""`` when none.

    E.g. ``score drift: PSI 0.31 > 0.2; pr_auc 0.52 < 0.57 (0.60 at export); retrain: start
    a new federated run``.
    """
    parts = []
    if summary.get("alarm_psi"):
        parts.append(
            f"score drift: PSI {summary.get('psi', math.nan):.3g} > {summary.get('psi_bound', math.nan):g}"
        )
    if summary.get("alarm_metric"):
        metric = next(
            (k for k in summary if f"reference_{k}" in summary and k != "flagged_rate"), "metric"
        )
        ref = summary.get(f"reference_{metric}", math.nan)
        bound = ref * (1.0 - summary.get("max_drop", math.nan))
        parts.append(
            f"{metric} {summary.get(metric, math.nan):.3g} < {bound:.3g} ({ref:.3g} at export)"
        )
    if not parts and not summary.get("retrain"):
        return ""
    return "; ".join([*parts, "retrain: start a new federated run"])


def _reasons(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


@dataclass
class _Site:
    state: SiteState = "not_seen"
    last_round: int | None = None
    """The last round that named this site (aggregated, rejected or evaluated)."""
    aggregated: int = 0
    """Rounds whose aggregate took this site's update."""
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    """The site's own metrics from the last round it evaluated in."""
    serving: dict[str, float] = field(default_factory=dict)
    """The last serving summary the site's telemetry carried (its scoring service's monitor)."""


class StatusBoard:
    """What the coordinator's status page shows, built from round records.

    Args:
        scenario: The scenario's name.
        sites: The scenario's site ids (listed as ``not_seen`` until a record names them).
        privacy_mode: ``plaintext``, ``ckks`` or ``secagg+`` (the scenario's ``privacy.mode``).
        dp: Whether the run adds differential privacy (``privacy.dp`` is set).
        delta: The delta of (epsilon, delta)-DP, when known (``privacy.dp.delta``).
        planned_rounds: Rounds the run is to take (0: unknown).
        max_rounds: Rounds kept (default :data:`MAX_ROUNDS`); older ones are dropped.

    Thread-safe: the service feeds it while the HTTP server reads it.

    Raises:
        ValueError: ``max_rounds`` or ``planned_rounds`` is out of range, or ``delta`` is not
            in (0, 1).
    """

    def __init__(
        self,
        scenario: str = "",
        sites: Sequence[str] = (),
        *,
        privacy_mode: str = "plaintext",
        dp: bool = False,
        delta: float | None = None,
        planned_rounds: int = 0,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1; found {max_rounds}")
        if planned_rounds < 0:
            raise ValueError(f"planned_rounds must be 0 (unknown) or more; found {planned_rounds}")
        if delta is not None and not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1); found {delta}")
        self.scenario = scenario
        self.privacy_mode = privacy_mode
        self.dp = dp or delta is not None
        self.delta = delta
        self.planned_rounds = planned_rounds
        self.max_rounds = max_rounds
        self._lock = threading.Lock()
        self._connected: int | None = None
        self._scenario_sites = tuple(dict.fromkeys(sites))
        self._sites: OrderedDict[str, _Site] = OrderedDict(
            (s, _Site()) for s in self._scenario_sites
        )
        self._rounds: deque[dict[str, Any]] = deque(maxlen=max_rounds)
        self._count = 0
        self._epsilon: float | None = None
        self._schedule: dict[str, Any] | None = None

    # ------------------------------------------------------------------ sites online

    def set_connected(self, sites: int) -> None:
        """The number of sites connected while the service waits for them (then each round's
        telemetry answers, ``schedule.candidates``, replace it)."""
        with self._lock:
            self._connected = max(0, int(sites))

    # ------------------------------------------------------------------ round records

    def observe(self, record: Mapping[str, Any]) -> None:
        """Account one round record (:class:`~fedcore.records.RoundRecord`).

        Missing or malformed fields are skipped, as :meth:`.CoordinatorMetrics.observe` does.
        """
        with self._lock:
            self._count += 1
            number = _number(record.get("round"))
            round_no = int(number) if number is not None else self._count
            row: dict[str, Any] = {"round": round_no}
            for key in _ROUND_KEYS:
                row[key] = _number(record.get(key))
            sites = record.get("sites")
            aggregated = [str(s) for s in sites] if isinstance(sites, list) else []
            rejected_in = record.get("rejected")
            rejected = (
                {str(k): _reasons(v) for k, v in rejected_in.items()}
                if isinstance(rejected_in, Mapping)
                else {}
            )
            per_site_in = record.get("per_site")
            per_site = (
                {str(k): _plain(v) for k, v in per_site_in.items() if isinstance(v, Mapping)}
                if isinstance(per_site_in, Mapping)
                else {}
            )
            row["aggregated"] = len(aggregated)
            row["rejected"] = len(rejected)
            self._rounds.append(row)
            if row["epsilon"] is not None:
                self._epsilon = row["epsilon"]
            schedule = record.get("schedule")
            decision: dict[str, Any] = {"round": round_no}
            if isinstance(schedule, Mapping):
                candidates = _number(schedule.get("candidates"))
                if candidates is not None:
                    self._connected = int(candidates)
                decision.update({str(k): _plain(v) for k, v in schedule.items()})
            decision["aggregated"] = aggregated
            decision["rejected"] = {k: list(v) for k, v in rejected.items()}
            self._schedule = decision
            self._update_sites(round_no, aggregated, rejected, per_site)
            serving = record.get("serving")
            if isinstance(serving, Mapping):
                for name, summary in serving.items():
                    if isinstance(summary, Mapping):
                        self._site(str(name)).serving = {
                            str(k): n
                            for k, n in ((k, _number(v)) for k, v in summary.items())
                            if n is not None
                        }

    def _update_sites(
        self,
        round_no: int,
        aggregated: list[str],
        rejected: Mapping[str, list[str]],
        per_site: Mapping[str, dict[str, Any]],
    ) -> None:
        for site in self._sites.values():
            if site.state != "not_seen":
                site.state = "idle"
            site.reasons = []
        for name in sorted({*aggregated, *rejected, *per_site}):
            site = self._site(name)
            site.last_round = round_no
            if name in rejected:
                site.state = "rejected"
                site.rejected += 1
                site.reasons = list(rejected[name])
            elif name in aggregated:
                site.state = "aggregated"
            else:
                site.state = "evaluated"
            if name in aggregated:
                site.aggregated += 1
            if name in per_site:
                site.metrics = dict(per_site[name])

    def _site(self, name: str) -> _Site:
        site = self._sites.get(name)
        if site is None:
            site = self._sites[name] = _Site()
            extra = [n for n in self._sites if n not in self._scenario_sites]
            for old in extra[: max(0, len(extra) - MAX_EXTRA_SITES)]:
                del self._sites[old]
        elif name not in self._scenario_sites:
            self._sites.move_to_end(name)  # recently seen: dropped last
        return site

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """What the status page shows, as plain JSON-serializable data (NaN becomes ``None``).

        Keys: ``scenario``, ``connected`` (sites online, ``None`` until known),
        ``rounds_completed`` (every record seen),
        ``planned_rounds``, ``rounds`` (the kept rows: ``round``, ``loss``, ``pr_auc``,
        ``roc_auc``, ``seconds``, ``epsilon``, ``aggregated``, ``rejected`` counts),
        ``sites`` (``id``, ``state``, ``in_scenario``, ``last_round``, ``aggregated``,
        ``rejected``, ``reasons``, ``metrics``, and ``serving``, the last serving summary its
        telemetry carried, for a site that sent one), ``serving_alarms`` (``site`` and ``alarm``, the
        :func:`serving_alarm` line, for each site whose scoring service raises an alarm),
        ``schedule`` (the last round's decision:
        its ``schedule`` fields plus ``round``, ``aggregated`` and ``rejected`` with reasons;
        ``None`` before the first round) and ``privacy`` (``mode``, ``dp``, ``epsilon``,
        ``delta``).
        """
        with self._lock:
            return {
                "scenario": self.scenario,
                "connected": self._connected,
                "rounds_completed": self._count,
                "planned_rounds": self.planned_rounds,
                "rounds": [dict(row) for row in self._rounds],
                "sites": [
                    {
                        "id": name,
                        "state": site.state,
                        "in_scenario": name in self._scenario_sites,
                        "last_round": site.last_round,
                        "aggregated": site.aggregated,
                        "rejected": site.rejected,
                        "reasons": list(site.reasons),
                        "metrics": dict(site.metrics),
                        **({"serving": dict(site.serving)} if site.serving else {}),
                    }
                    for name, site in self._sites.items()
                ],
                "serving_alarms": [
                    {"site": name, "alarm": line}
                    for name, site in self._sites.items()
                    if (line := serving_alarm(site.serving))
                ],
                "schedule": _plain(self._schedule),
                "privacy": {
                    "mode": self.privacy_mode,
                    "dp": self.dp,
                    "epsilon": self._epsilon,
                    "delta": self.delta,
                },
            }


#: The status page: one self-contained document (inline CSS and JS, the chart drawn as inline
#: SVG) that fetches ``status.json`` every :data:`REFRESH_SECONDS` and redraws. Data enters the
#: DOM through ``textContent`` and ``setAttribute`` only, never as markup.
REFRESH_SECONDS: Final[int] = 3

STATUS_PAGE: Final[str] = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedcore coordinator</title>
<link rel="icon" href="data:,">
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em;
       color: #1d232a; background: #fafbfc; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d6dbe0; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
.badge { display: inline-block; padding: .05em .5em; border-radius: .6em; background: #e3e7eb; }
.state-aggregated, .ready-true { background: #d3f1dc; }
.state-rejected, .phase-failed, .serving-alarm { background: #f8d7d7; }
.state-not_seen { color: #7b858f; }
#error { color: #b00020; min-height: 1.4em; }
svg { background: #fff; border: 1px solid #d6dbe0; }
.axis { stroke: #9aa4ad; stroke-width: 1; }
.label { font-size: 11px; fill: #4a545e; }
.line-pr { fill: none; stroke: #1f6feb; stroke-width: 2; }
.line-sec { fill: none; stroke: #e36209; stroke-width: 1.5; stroke-dasharray: 4 3; }
.pr, .legend-pr { fill: #1f6feb; }
.sec, .legend-sec { fill: #e36209; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: 0; }
dt { color: #4a545e; }
dd { margin: 0; }
</style>
</head>
<body>
<h1>fedcore coordinator <span id="scenario"></span></h1>
<div>phase <span id="phase" class="badge">loading</span>
 <span id="readiness"></span> &middot; rounds <span id="rounds-count">0</span>
 &middot; updated <span id="updated">never</span></div>
<div id="error"></div>

<h2>Privacy</h2>
<dl>
<dt>mode</dt><dd id="privacy-mode"></dd>
<dt>differential privacy</dt><dd id="privacy-budget"></dd>
</dl>

<h2>Rounds: PR-AUC and seconds</h2>
<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="680" height="240"
 viewBox="0 0 680 240" role="img" aria-label="PR-AUC and round seconds per round"></svg>

<h2>Last schedule decision</h2>
<dl id="schedule"></dl>

<h2>Serving alarms</h2>
<ul id="serving-alarms"></ul>

<h2>Sites</h2>
<table>
<thead><tr><th>site</th><th>state</th><th>last round</th><th>aggregated</th>
<th>rejected</th><th>reasons</th><th>last metrics</th></tr></thead>
<tbody id="sites"></tbody>
</table>

<script>
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const REFRESH_MS = __REFRESH_MS__;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function fmt(v, digits) {
  if (v === null || v === undefined) return "\\u2013";
  if (typeof v === "number") {
    return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 4 : digits);
  }
  if (Array.isArray(v)) return v.map(x => fmt(x, digits)).join("\\u2013");
  return String(v);
}
function setText(id, text) { document.getElementById(id).textContent = text; }
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function drawChart(rounds) {
  const chart = clear(document.getElementById("chart"));
  const W = 680, H = 240, L = 48, R = 56, T = 16, B = 34;
  const w = W - L - R, h = H - T - B;
  const secs = rounds.map(r => r.seconds).filter(v => v !== null);
  const maxS = Math.max(1, ...secs);
  const n = rounds.length;
  const x = i => L + (n <= 1 ? w / 2 : (i * w) / (n - 1));
  const yPr = v => T + h - v * h;
  const yS = v => T + h - (v / maxS) * h;
  chart.appendChild(svg("line", {x1: L, y1: T + h, x2: L + w, y2: T + h, class: "axis"}));
  chart.appendChild(svg("line", {x1: L, y1: T, x2: L, y2: T + h, class: "axis"}));
  chart.appendChild(svg("line", {x1: L + w, y1: T, x2: L + w, y2: T + h, class: "axis"}));
  for (const v of [0, 0.5, 1]) {
    chart.appendChild(svg("text", {x: L - 6, y: yPr(v) + 4, "text-anchor": "end",
                                   class: "label"}, v.toFixed(1)));
    chart.appendChild(svg("text", {x: L + w + 6, y: yS(v * maxS) + 4, class: "label"},
                          fmt(v * maxS, 1) + " s"));
  }
  chart.appendChild(svg("text", {x: L, y: 11, class: "label legend-pr"}, "\\u25cf PR-AUC (left)"));
  chart.appendChild(svg("text", {x: L + w, y: 11, "text-anchor": "end", class: "label legend-sec"},
                        "\\u25cf round seconds (right)"));
  if (n === 0) {
    chart.appendChild(svg("text", {x: L + w / 2, y: T + h / 2, "text-anchor": "middle",
                                   class: "label"}, "no round yet"));
    return;
  }
  const step = Math.max(1, Math.ceil(n / 10));
  rounds.forEach((r, i) => {
    if (i % step === 0 || i === n - 1) {
      chart.appendChild(svg("text", {x: x(i), y: T + h + 16, "text-anchor": "middle",
                                     class: "label"}, r.round));
    }
  });
  chart.appendChild(svg("text", {x: L + w / 2, y: H - 4, "text-anchor": "middle",
                                 class: "label"}, "round"));
  const series = [["pr_auc", yPr, "pr", "PR-AUC"], ["seconds", yS, "sec", "seconds"]];
  for (const [key, y, cls, name] of series) {
    const pts = [];
    rounds.forEach((r, i) => { if (r[key] !== null) pts.push([x(i), y(r[key]), r]); });
    if (pts.length > 1) {
      chart.appendChild(svg("polyline", {class: "line-" + cls,
        points: pts.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ")}));
    }
    for (const [px, py, r] of pts) {
      const dot = svg("circle", {class: "pt " + cls, cx: px.toFixed(1), cy: py.toFixed(1),
                                 r: 3.5, "data-round": r.round});
      dot.appendChild(svg("title", {}, "round " + r.round + ": " + name + " " + fmt(r[key])));
      chart.appendChild(dot);
    }
  }
}

function drawSchedule(s) {
  const dl = clear(document.getElementById("schedule"));
  const add = (k, v) => { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); };
  if (!s) { add("round", "none yet"); return; }
  const skip = new Set(["round", "aggregated", "rejected"]);
  add("round", fmt(s.round));
  for (const [k, v] of Object.entries(s)) if (!skip.has(k)) add(k, fmt(v));
  add("aggregated", s.aggregated.length ? s.aggregated.join(", ") : "none");
  const rejected = Object.entries(s.rejected);
  if (!rejected.length) add("left out", "none");
  for (const [site, reasons] of rejected) add("left out: " + site, reasons.join("; "));
}

function drawSites(sites) {
  const body = clear(document.getElementById("sites"));
  for (const s of sites) {
    const tr = el("tr");
    tr.className = "site";
    tr.appendChild(el("td", s.id));
    tr.appendChild(el("td", s.state.replace("_", " "), "state state-" + s.state));
    tr.appendChild(el("td", fmt(s.last_round)));
    tr.appendChild(el("td", s.aggregated));
    tr.appendChild(el("td", s.rejected));
    tr.appendChild(el("td", s.reasons.join("; ")));
    const m = Object.entries(s.metrics).map(([k, v]) => k + " " + fmt(v)).join(", ");
    tr.appendChild(el("td", m));
    body.appendChild(tr);
  }
}

function drawServingAlarms(alarms) {
  const ul = clear(document.getElementById("serving-alarms"));
  if (!alarms || !alarms.length) { ul.appendChild(el("li", "none")); return; }
  for (const a of alarms) ul.appendChild(el("li", a.site + ": " + a.alarm, "serving-alarm"));
}

function render(s) {
  setText("scenario", s.scenario ? "\\u2014 " + s.scenario : "");
  const phase = document.getElementById("phase");
  phase.textContent = s.phase || "unknown";
  phase.className = "badge phase-" + (s.phase || "unknown");
  const ready = document.getElementById("readiness");
  ready.textContent = (s.ready ? "ready" : "not ready") + (s.readiness ? ": " + s.readiness : "");
  ready.className = "badge ready-" + Boolean(s.ready);
  setText("rounds-count", s.rounds_completed + (s.planned_rounds ? " / " + s.planned_rounds : ""));
  const p = s.privacy;
  setText("privacy-mode", p.mode);
  setText("privacy-budget", p.dp
    ? "epsilon " + (p.epsilon === null ? "\\u2013" : p.epsilon.toFixed(3)) + " spent"
      + (p.delta !== null ? ", delta " + p.delta : "")
    : "off");
  drawChart(s.rounds);
  drawSchedule(s.schedule);
  drawServingAlarms(s.serving_alarms);
  drawSites(s.sites);
  setText("updated", new Date().toLocaleTimeString());
}

async function refresh() {
  try {
    const resp = await fetch("status.json", {cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    setText("error", "");
  } catch (err) {
    setText("error", "cannot reach the coordinator (" + err.message + "); retrying");
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
""".replace("__REFRESH_MS__", str(REFRESH_SECONDS * 1000))
