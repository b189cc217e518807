"""Turn one site's table in any schema into a graph of rows and entities (or of similar earlier rows) for the fraud models."""

from __future__ import annotations

import logging

import numpy as np
import torch

from fedcore.config import TaskSpec
from fedcore.data.graph import FraudGraph, assemble_graph, time_split
from fedcore.data.knn_graph import knn_edges
from fedcore.data.table import Table
from fedcore.data.table_features import (
    ENTITY_NODE_FEATURES,
    entity_codes,
    entity_node_features,
    standardize,
    table_entity_dim,
    table_feature_dim,
    table_label_dim,
    table_num_types,
    table_row_block,
    table_row_dim,
    table_row_names,
)
from fedcore.data.transactions import DataError

__all__ = [
    "build_table_graph",
    "split_rows",
    "table_entity_dim",
    "table_feature_dim",
    "table_label_dim",
    "table_num_types",
    "table_row_dim",
    "table_row_names",
]

log = logging.getLogger(__name__)


def split_rows(table: Table, test_fraction: float, seed: int) -> np.ndarray:
    """Test mask of the rows of ``table`` (sorted by time when it has timestamps).

    With timestamps: the latest ``test_fraction`` of rows by time (every test row is
    later than every training row). Without: a random ``test_fraction`` of the rows drawn
    with ``numpy.random.default_rng(seed)``; labels play no part in either.
    """
    n = len(table)
    if table.timestamp is not None:
        return time_split(np.asarray(table.timestamp, np.float64), test_fraction)
    test = np.zeros(n, bool)
    if n:
        n_test = min(n, max(1, int(round(n * test_fraction))))
        test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return test


def build_table_graph(table: Table, task: TaskSpec, *, seed: int) -> FraudGraph:
    """Build the site graph of a table task.

    Rows are sorted by time (stable) and split (:func:`split_rows`); every node's
    features follow :func:`~fedcore.data.table_features.table_feature_dim`: node-type
    one-hot, row block (zeros on entity nodes), entity block (zeros on rows). The
    edges follow ``task.table_graph``:

    - ``entities``: row <-> entity node for each entity role the row has an id in
      (both directions);
    - ``knn``: each row receives an edge from each of its ``task.knn.k`` nearest
      strictly earlier rows (:func:`~fedcore.data.knn_graph.knn_edges`);
    - ``none``: no edges.

    Labels enter no feature and no edge.

    Args:
        table: The site's cleaned table.
        task: The table task (roles, graph, knn, structural, test_fraction).
        seed: Seed of the random split of a table without timestamps.

    Returns:
        The graph; its first ``len(table)`` nodes are the rows in time order, then the
        ids of each entity role in the order of ``task.entities``; ``y`` is -1 on them.

    Raises:
        DataError: if the table is empty or lacks a role of the task.
        ValueError: if the task is not a table task.
    """
    if not task.is_table:
        raise ValueError(f"build_table_graph needs a task with dataset table; found {task.dataset}")
    if len(table) == 0:
        raise DataError(
            "the site's table has no rows (after cleaning); check data.path and the cleaning report"
        )
    table = table.sorted_by_time()
    t = len(table)
    test = split_rows(table, task.test_fraction, seed)
    train = ~test
    rows = table_row_block(table, task, train)

    num_types = table_num_types(task)
    r0 = num_types
    l0 = r0 + table_row_dim(task)  # the label block (zeros here; see fedcore.label_inputs)
    e0 = l0 + table_label_dim(task)
    width = len(ENTITY_NODE_FEATURES)
    codes: list[np.ndarray] = []
    offsets = [t]
    stats: list[np.ndarray] = []
    for role in task.entities:
        code, size = entity_codes(table.entities[role])
        codes.append(code)
        offsets.append(offsets[-1] + size)
        others = [o for o in task.entities if o != role]
        raw = entity_node_features(table, role, others)
        everyone = np.ones(size, bool)
        stats.append(np.stack([standardize(raw[:, j], everyone) for j in range(width)], axis=1))
    n_nodes = offsets[-1]

    x = np.zeros((n_nodes, table_feature_dim(task)), dtype=np.float32)
    x[:t, 0] = 1.0
    x[:t, r0:l0] = rows
    for k, block in enumerate(stats):
        x[offsets[k] : offsets[k + 1], 1 + k] = 1.0
        x[offsets[k] : offsets[k + 1], e0 + k * width : e0 + (k + 1) * width] = block

    kind = task.table_graph
    if kind == "entities":
        src, dst = [], []
        for k, code in enumerate(codes):
            has = np.flatnonzero(code >= 0)
            src.append(has)
            dst.append(code[has] + offsets[k])
        s = np.concatenate(src) if src else np.zeros(0, np.int64)
        e = np.concatenate(dst) if dst else np.zeros(0, np.int64)
        edge_index = torch.from_numpy(
            np.stack([np.concatenate([s, e]), np.concatenate([e, s])]).astype(np.int64)
        )
    elif kind == "knn":
        edge_index = knn_edges(
            torch.from_numpy(rows),
            task.knn.k,
            timestamp=None if table.timestamp is None else np.asarray(table.timestamp, np.float64),
            window=task.knn.window,
            train=train,
        )
    else:
        edge_index = torch.zeros((2, 0), dtype=torch.long)

    graph = assemble_graph(
        x, edge_index, table.label, train, rows.copy(), l0 if table_label_dim(task) else None
    )
    log.info("table graph (%s): %r", kind, graph)
    return graph
