"""Which history the service held for a request, and the offline reference score, for ``benchmarks/serving.py``.

The service scores one call at a time and appends each call's rows to its history. For a
request that overlapped no other (:func:`isolated`), that history is the initial one plus
the rows of every earlier request answered 200 (:func:`prior_rows`), inside the history
window (:func:`window_mask`: ``HistorySpec.days`` before the newest of those rows), plus
the request's own rows (:func:`context_rows`). The reference
(:func:`offline_scores`) builds the graph of exactly those rows with
:func:`fedcore.data.graph.build_graph` and scores the request's transactions with the
exported layer-wise ONNX model, as :func:`fedcore.export.serve.score_csv` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from fedcore.data.transactions import Transactions

DAY = 86_400.0


class Span(Protocol):
    """What :func:`isolated` and :func:`prior_rows` read of a request record (``serving_load.Sent``)."""

    index: int
    rows: tuple[int, int]
    sent: float
    done: float

    @property
    def ok(self) -> bool: ...

    @property
    def outcome_known(self) -> bool: ...


# --------------------------------------------------------------------------- whose context


def isolated(records: Sequence[Span]) -> list[int]:
    """Positions of answered requests that overlapped no other request in time.

    The service scores one call at a time; for such a request every request sent before
    it had come back before it left, and none was sent before it came back, so the
    history it was scored against is exactly the rows of the earlier answered requests.
    """
    spans = sorted((r.sent, r.done, k) for k, r in enumerate(records) if not np.isnan(r.sent))
    out: list[int] = []
    latest_end = -np.inf
    for pos, (s, d, k) in enumerate(spans):
        nxt = spans[pos + 1][0] if pos + 1 < len(spans) else np.inf
        if latest_end <= s and d <= nxt and records[k].ok:
            out.append(k)
        latest_end = max(latest_end, d)
    return sorted(out)


def prior_rows(ledger: Sequence[Span], upto: Span) -> tuple[list[tuple[int, int]], int]:
    """Stream row ranges the service had appended before it scored ``upto``.

    ``ledger`` is every request sent to this service, in any order; ``upto`` must not
    overlap any of them in time (see :func:`isolated`). Answered 200 before ``upto`` was
    sent: appended. A rejected call appends nothing. Returns the ranges and how many
    earlier requests have an unknown outcome (client-side errors: the reference may
    then differ).
    """
    ranges: list[tuple[int, int]] = []
    unknown = 0
    for r in ledger:
        if r is upto or np.isnan(r.sent) or r.sent >= upto.sent:
            continue
        if r.ok:
            ranges.append(r.rows)
        elif not r.outcome_known:
            unknown += 1
    return sorted(ranges), unknown


def window_mask(
    timestamp: np.ndarray, latest: float, days: float | None, transactions: int | None
) -> np.ndarray:
    """Rows of a time-ordered history kept by a window of ``days`` before ``latest`` and at most ``transactions`` rows."""
    keep = np.ones(len(timestamp), dtype=bool)
    if days is not None:
        keep &= timestamp >= latest - days * DAY
    if transactions is not None:
        idx = np.flatnonzero(keep)
        keep[idx[: max(0, len(idx) - transactions)]] = False
    return keep


# --------------------------------------------------------------------------- offline reference


def offline_scores(
    model_path: Path, context: Transactions, targets: Sequence[str], features: Sequence[str]
) -> np.ndarray:
    """Scores of the ``targets`` (tx ids in ``context``) in the graph of exactly ``context``'s rows.

    As :func:`fedcore.export.serve.score_csv` scores a file: ``build_graph`` of the rows,
    the layer-wise batch of the target transaction nodes, the ONNX model, a sigmoid in
    float64. ``build_graph`` orders rows by time (stable); node ``i`` is row ``i`` of that order.
    """
    from fedcore.config import TaskSpec
    from fedcore.data.graph import build_graph
    from fedcore.export.layered import layers_of, scoring_batch
    from fedcore.export.manifest import ExportManifest
    from fedcore.export.onnx_export import ort_session, run_session

    manifest = ExportManifest.read(model_path.parent)
    layers = layers_of(manifest.input_names)
    order = np.argsort(context.timestamp, kind="stable")
    node_of = {str(t): n for n, t in enumerate(context.tx_id[order].tolist())}
    missing = [t for t in targets if t not in node_of]
    if missing:
        raise ValueError(f"targets not in the context rows: {missing[:5]}")
    graph = build_graph(context, TaskSpec(features=list(features)))
    nodes = np.array([node_of[t] for t in targets], dtype=np.int64)
    batch = scoring_batch(graph, layers, nodes)
    logits = run_session(ort_session(model_path), batch.feed())
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64).reshape(-1))))


def parse_scores(body: bytes) -> dict[str, float]:
    """``tx_id -> score`` from a ``/v1/score`` response."""
    doc = json.loads(body)
    items: list[Any]
    if isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict) and "score" in doc:
        items = [doc]
    elif isinstance(doc, dict):
        items = next((doc[k] for k in ("results", "scores", "transactions") if k in doc), [])
    else:
        items = []
    return {str(it["tx_id"]): float(it["score"]) for it in items}


# --------------------------------------------------------------------------- correctness


def pick_checks(ledger: Sequence[tuple[str, Any]], load_checks: int) -> list[tuple[str, Any]]:
    """The requests to check offline: every answered ``check-*`` request, and up to ``load_checks`` isolated load requests spread over the load."""
    records = [r for _, r in ledger]
    alone = set(isolated(records))
    picked = [
        (label, r)
        for k, (label, r) in enumerate(ledger)
        if label.startswith("check-") and k in alone
    ]
    from_load = [k for k in sorted(alone) if ledger[k][0] in ("single", "batch")]
    if from_load and load_checks > 0:
        spots = np.linspace(0, len(from_load) - 1, min(load_checks, len(from_load)))
        picked += [ledger[from_load[int(round(s))]] for s in spots]
    return picked


def context_rows(
    history: Transactions,
    stream: Transactions,
    ranges: Sequence[tuple[int, int]],
    own: tuple[int, int],
    days: float | None,
) -> Transactions:
    """The rows a request was scored with, in time order.

    The window as the earlier rows left it (the initial history and the stream rows of
    ``ranges``; rows more than ``days`` older than the newest of them dropped), plus the
    request's own rows (``own``), which join the window before scoring: the service
    evicts only after scoring a call.
    """
    idx = np.concatenate(
        [np.arange(a, b, dtype=np.int64) for a, b in ranges] or [np.zeros(0, np.int64)]
    )
    before = type(history).concat([history, stream.take(idx)])
    order = np.argsort(before.timestamp, kind="stable")
    ts = before.timestamp[order]
    keep = window_mask(ts, float(ts[-1]), days, None) if len(ts) else np.zeros(0, bool)
    ctx = type(before).concat([before.take(order[keep]), stream.take(np.arange(own[0], own[1]))])
    return ctx.take(np.argsort(ctx.timestamp, kind="stable"))


def correctness(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of the offline checks: how many, the largest difference, scores the service did not return."""
    diffs = [c["max_abs_diff"] for c in checks if c["max_abs_diff"] is not None]
    missing = sum(int(c["missing_scores"]) for c in checks)
    worst = max(diffs) if diffs else None
    return {
        "requests_checked": len(checks),
        "transactions_checked": sum(
            int(c["transactions"]) - int(c["missing_scores"]) for c in checks
        ),
        "missing_scores": missing,
        "max_abs_diff": worst,
        "by_variant": {
            v: max((c["max_abs_diff"] or 0.0) for c in checks if c["variant"] == v)
            for v in sorted({c["variant"] for c in checks})
        },
        "offline_s_mean": float(np.mean([c["offline_s"] for c in checks])) if checks else None,
        "checks": list(checks),
    }


def verify(
    name: str,
    history: Transactions,
    stream: Transactions,
    features: Sequence[str],
    ledger: Sequence[tuple[str, Any]],
    model: Path,
    load_checks: int,
    say: Callable[[str], Any],
) -> list[dict[str, Any]]:
    """Offline scores of the requests :func:`pick_checks` picks vs what the service answered.

    Args:
        name: The variant (recorded with each check).
        history: The service's initial history.
        stream: The stream the requests' rows index.
        features: The task's extra features.
        ledger: ``(phase, record)`` of every request sent to that service.
        model: The ONNX file the service served.
        load_checks: Isolated load requests to check besides the ``check-*`` ones.
        say: Progress lines.
    """
    from fedcore.config import HistorySpec

    records = [r for _, r in ledger]
    days = HistorySpec().days
    out: list[dict[str, Any]] = []
    for label, rec in pick_checks(ledger, load_checks):
        ranges, unknown = prior_rows(records, rec)
        t0 = time.perf_counter()
        ctx = context_rows(history, stream, ranges, rec.rows, days)
        targets_ = [str(t) for t in stream.tx_id[rec.rows[0] : rec.rows[1]]]
        offline = offline_scores(model, ctx, targets_, features)
        served_by_id = parse_scores(rec.body)
        served = np.array([served_by_id.get(t, np.nan) for t in targets_])
        diff = np.abs(served - offline)
        out.append(
            {
                "variant": name,
                "phase": label,
                "request": rec.index,
                "transactions": len(targets_),
                "context_rows": len(ctx),
                "earlier_requests_unknown_outcome": unknown,
                "max_abs_diff": float(np.nanmax(diff)) if np.isfinite(diff).any() else None,
                "missing_scores": int(np.isnan(served).sum()),
                "offline_s": time.perf_counter() - t0,
            }
        )
        say(
            f"{name}: offline check {label} #{rec.index}: {len(ctx):,} context rows, max |diff| "
            f"{out[-1]['max_abs_diff']}, {out[-1]['offline_s']:.1f} s"
        )
    return out
