"""Load one site's data (generated or the bank's CSV) and build its graph, with a bounded on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch_geometric.data import Data

from fedcore.config import CsvData, GeneratedData, SiteConfig, TableData, TaskSpec
from fedcore.data.checks import label_problem
from fedcore.data.csv_loader import load_transactions_csv
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import FraudGraph, build_graph
from fedcore.data.transactions import DataError, Transactions
from fedcore.storage import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = "fraud-graph-v1"
"""Bump when the generator or the graph features change, so stale caches are ignored."""

MAX_GRAPH_CACHES = 4
"""Most graphs a site keeps cached (one per task spec, the most recently used ones).

Every distinct task spec a coordinator names builds another graph; without a bound a
coordinator could fill the site's disk with them. One run's task spec gives one graph,
so 4 leave room for a few runs side by side.
"""

_TENSORS = ("x", "edge_index", "y", "train_mask", "test_mask")
_ROW_TENSORS = ("row_x", "row_y", "row_train_mask", "row_test_mask")
_COUNTS = ("num_train", "num_test", "num_train_pos", "num_test_pos")


def data_seed(cfg: SiteConfig) -> int:
    """Seed of a site's generated data: ``data.seed`` if set, else sha256 of (consortium seed, site id)."""
    if isinstance(cfg.data, GeneratedData) and cfg.data.seed is not None:
        return cfg.data.seed
    digest = hashlib.sha256(f"{cfg.seed}:{cfg.id}:data".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def load_site_transactions(cfg: SiteConfig, task: TaskSpec) -> Transactions:
    """The site's transactions: generated from its spec and seed, or read from its CSV.

    Raises:
        DataError: for an unusable CSV (message names file, line, column and value), or
            one whose training rows are all fraud or all legitimate.
    """
    if isinstance(cfg.data, GeneratedData):
        return generate_transactions(cfg.data, data_seed(cfg))
    if isinstance(cfg.data, CsvData):
        tx = load_transactions_csv(cfg.data, task.features)
        why = label_problem(tx, task.test_fraction, cfg.data.path, cfg.data.columns.label)
        if why is not None:
            raise DataError(why)
        return tx
    if isinstance(cfg.data, TableData):
        raise ValueError(
            f"site {cfg.id}: data kind table is read with task.dataset table "
            "(fedcore.data.table_site), not as payer/payee transactions"
        )
    raise ValueError(
        f"site {cfg.id}: data kind {cfg.data.kind} holds CT images, not transactions; "
        "use it with task model nodule-net"
    )


def _cache_key(cfg: SiteConfig, task: TaskSpec) -> str:
    spec = cfg.data.model_dump(mode="json")
    if isinstance(cfg.data, CsvData | TableData):
        st = cfg.data.path.stat()
        spec["_file"] = [str(cfg.data.path.resolve()), st.st_size, st.st_mtime_ns]
    else:
        spec["seed"] = data_seed(cfg)
    blob = json.dumps(
        {"v": CACHE_VERSION, "data": spec, "task": task.model_dump(mode="json")}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save(graph: FraudGraph, path: Path) -> None:
    payload: dict[str, object] = {k: getattr(graph.data, k) for k in _TENSORS}
    payload.update({k: getattr(graph, k) for k in _ROW_TENSORS})
    payload.update({k: getattr(graph, k) for k in _COUNTS})
    payload["num_nodes"] = int(graph.data.num_nodes)
    if graph.quality is not None:
        payload["quality"] = dict(graph.quality)
    if graph.label_cols is not None:
        payload["label_cols"] = int(graph.label_cols)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load(path: Path) -> FraudGraph:
    p = torch.load(path, weights_only=True)
    data = Data(**{k: p[k] for k in _TENSORS})
    data.num_nodes = int(p["num_nodes"])
    return FraudGraph(
        data=data,
        row_x=p["row_x"],
        row_y=p["row_y"],
        row_train_mask=p["row_train_mask"],
        row_test_mask=p["row_test_mask"],
        num_train=int(p["num_train"]),
        num_test=int(p["num_test"]),
        num_train_pos=int(p["num_train_pos"]),
        num_test_pos=int(p["num_test_pos"]),
        quality=p.get("quality"),
        label_cols=p.get("label_cols"),
    )


def prune_caches(
    folder: Path, pattern: str, keep: int, *, current: Path | None = None, site: str = ""
) -> list[Path]:
    """Remove all but the ``keep`` most recently used files of ``folder`` matching ``pattern``.

    Use is the file's modification time (a cache hit touches its file); ties go by name,
    so the outcome does not depend on the order the folder lists its files in.

    Args:
        folder: The cache folder (a missing one holds nothing).
        pattern: Glob of the cache files, e.g. ``"graph-*.pt"``.
        keep: How many to keep (at least 0).
        current: The file just used, kept whatever its time says (counts among ``keep``).
        site: The site's id, for the log.

    Returns:
        The files removed, oldest last.
    """
    entries: list[tuple[bool, int, str, Path]] = []
    for path in folder.glob(pattern):
        try:
            entries.append((path == current, path.stat().st_mtime_ns, path.name, path))
        except OSError:  # removed meanwhile
            continue
    entries.sort(reverse=True)
    removed = []
    for *_, path in entries[max(keep, 0) :]:
        try:
            path.unlink()
        except OSError as exc:
            log.warning("site %s: could not remove the old cache %s (%s)", site, path, exc)
            continue
        log.debug("site %s: removed the least recently used cache %s", site, path)
        removed.append(path)
    return removed


def touch_cache(path: Path) -> None:
    """Mark a cache file as just used (its modification time), for :func:`prune_caches`."""
    try:
        os.utime(path)
    except OSError:  # a read-only state directory: the order is only a preference
        pass


def load_site_data(cfg: SiteConfig, task: TaskSpec) -> FraudGraph:
    """The site's graph for ``task``, cached under ``cfg.state_dir/cache`` when a state dir is set.

    The cache key hashes the data spec (and the CSV's path, size and modification time),
    the data seed, the task and :data:`CACHE_VERSION`; an unreadable cache is rebuilt. At
    most :data:`MAX_GRAPH_CACHES` graphs stay cached: writing another removes the least
    recently used, so no sequence of task specs fills the site's disk.

    Raises:
        DataError: for an unusable CSV or a task feature the data lacks.
    """
    path = None
    if cfg.state_dir is not None:
        path = Path(cfg.state_dir) / "cache" / f"graph-{_cache_key(cfg, task)}.pt"
        if path.is_file():
            try:
                graph = _load(path)
                log.debug("site %s: graph loaded from cache %s", cfg.id, path)
                touch_cache(path)
                return graph
            except Exception as exc:  # a corrupt or foreign file: rebuild it
                log.warning("site %s: ignoring unreadable cache %s (%s)", cfg.id, path, exc)
    if isinstance(cfg.data, TableData):
        from fedcore.data.table_site import build_site_table_graph

        graph = build_site_table_graph(cfg, cfg.data, task, seed=data_seed(cfg))
    else:
        graph = build_graph(load_site_transactions(cfg, task), task)
    log.info("site %s: %r", cfg.id, graph)
    if path is not None:
        try:
            _save(graph, path)
        except OSError as exc:
            log.warning("site %s: could not write cache %s (%s)", cfg.id, path, exc)
        prune_caches(path.parent, "graph-*.pt", MAX_GRAPH_CACHES, current=path, site=cfg.id)
    return graph
