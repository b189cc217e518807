"""One site's table, from file to graph: load, report its quality, clean it, build the graph; the report and profile stay in the site's state folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.config import SiteConfig, TableData, TaskSpec
from fedcore.data.graph import FraudGraph
from fedcore.data.transactions import DataError
from fedcore.storage import atomic_path

log = logging.getLogger(__name__)

QUALITY_DIR = "quality"
"""Folder of the site's state directory holding its latest quality report and profile."""


def _read_profile(state_dir: Path | None, site: str) -> dict[str, Any] | None:
    """The profile the site's previous load left (the reference for drift), or ``None``."""
    if state_dir is None:
        return None
    path = Path(state_dir) / QUALITY_DIR / "profile.json"
    try:
        profile = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("site %s: ignoring unreadable quality profile %s (%s)", site, path, exc)
        return None
    return profile if isinstance(profile, dict) else None


def _write_json(path: Path, value: Any, site: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    except OSError as exc:
        log.warning("site %s: could not write %s (%s)", site, path, exc)


def train_label_problem(graph: FraudGraph, src: TableData) -> str | None:
    """Why the site cannot train on ``graph``: its training rows lack one of the classes."""
    if graph.num_train == 0:
        return f"{src.path}: no training rows; add rows or lower task.test_fraction"
    if 0 < graph.num_train_pos < graph.num_train:
        return None
    kind = "legitimate" if graph.num_train_pos == 0 else "fraud"
    return (
        f"{src.path}, column {src.columns.label.column!r}: all {graph.num_train} training rows "
        f"are {kind}; a site needs both fraud and legitimate examples to train: check "
        "data.columns.label.positive / negative, or remove the site from the scenario"
    )


def build_site_table_graph(
    cfg: SiteConfig, src: TableData, task: TaskSpec, *, seed: int
) -> FraudGraph:
    """Load the site's table, report and clean it as ``task.cleaning`` says, and build its graph.

    The quality report is computed on the table as loaded, against the profile the site's
    previous load left in ``STATE/quality/profile.json`` (drift), then completed with the
    cleaning step's counts. The summary (counts, shares, rates: never a row) rides on the
    graph as ``quality`` and reaches the coordinator in the site's telemetry; the full
    report and the new profile stay in ``STATE/quality/``.

    Raises:
        DataError: for an unusable file, a cleaning step set to ``fail`` that meets a
            problem, or training rows holding one class only.
    """
    from fedcore.data.quality import clean, quality_report
    from fedcore.data.table_graph import build_table_graph
    from fedcore.data.table_loader import load_table

    table = load_table(src, task)
    ranges = src.columns.ranges
    state = Path(cfg.state_dir) if cfg.state_dir is not None else None
    report = quality_report(
        table,
        ranges,
        test_fraction=task.test_fraction,
        reference=_read_profile(state, cfg.id),
    )
    cleaned, counts = clean(table, task.cleaning, ranges)
    report = report.with_cleaning(counts)
    if len(cleaned) == 0:
        raise DataError(
            f"{src.path}: no rows left after cleaning ({counts}); fix the data or set "
            "task.cleaning to impute or keep"
        )
    graph = build_table_graph(cleaned.sorted_by_time(), task, seed=seed)
    why = train_label_problem(graph, src)
    if why is not None:
        raise DataError(why)
    graph.quality = report.summary()
    if state is not None:
        _write_json(state / QUALITY_DIR / "report.json", report.to_dict(), cfg.id)
        _write_json(state / QUALITY_DIR / "profile.json", report.profile(), cfg.id)
    log.info(
        "site %s: %d rows (%d fraud) loaded, %d after cleaning",
        cfg.id,
        len(table),
        int(np.sum(table.label)),
        len(cleaned),
    )
    return graph
