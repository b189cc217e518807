"""Node features of a table in any schema: the layout fixed by the task, hashed categoricals, scaling on training rows and label-free structural inputs per entity."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fedcore.config import TaskSpec
from fedcore.data.table import Table
from fedcore.data.transactions import DataError

STRUCTURAL_FEATURES = ("log_count", "log_gap_s", "first", "log_co_entities", "mean_log_amount")
"""Structural inputs of a row, one block per entity role (``task.structural``).

For the entity the row names in that role, over the entity's rows up to and including
this row in time order: ``log1p`` of their count, ``log1p`` of the seconds since the
entity's previous row (``0`` with ``first = 1`` when there is none), ``log1p`` of the
distinct ids of the *other* entity roles seen with the entity, and the mean ``log1p``
amount of its rows (``0`` when the table has no amount). A table without timestamps has
no order: the statistics are then over the whole table (gap ``0``, ``first = 1`` for an
entity with a single row). A row without an id in the role has zeros in the block.
"""

ENTITY_NODE_FEATURES = ("log_degree", "log_co_entities", "log_span_days")
"""Statistics of an entity node over the whole table: ``log1p`` rows, ``log1p`` distinct
ids of the other roles seen with it, ``log1p`` days between its first and last row."""

_DAY = 86_400.0


def table_num_types(task: TaskSpec) -> int:
    """Node types of a table graph: rows, then one type per entity role of the task."""
    return 1 + len(task.entities)


def table_row_names(task: TaskSpec) -> list[str]:
    """Names of the row block's columns, in order; fixed by the task alone.

    Layout: ``num.<role>`` for each ``task.features`` role, ``log_amount``,
    ``has_amount``, ``cat.<role>.<bucket>`` one-hot for each ``task.categorical`` role,
    then (``task.structural``) ``<entity role>.<name>`` for each entity role and each
    of :data:`STRUCTURAL_FEATURES`.
    """
    names = [f"num.{f}" for f in task.features] + ["log_amount", "has_amount"]
    for role, buckets in task.categorical.items():
        names += [f"cat.{role}.{b}" for b in range(buckets)]
    if task.structural:
        names += [f"{role}.{s}" for role in task.entities for s in STRUCTURAL_FEATURES]
    return names


def table_row_dim(task: TaskSpec) -> int:
    """Width of the row block (also ``FraudGraph.row_x``, the row-mlp input)."""
    return len(table_row_names(task))


def table_entity_dim(task: TaskSpec) -> int:
    """Width of the entity block: :data:`ENTITY_NODE_FEATURES` for each entity role."""
    return len(task.entities) * len(ENTITY_NODE_FEATURES)


LABEL_INPUTS = ("label_known", "label_fraud")
"""The label block of a row node: whether its label is an input, and the label (0/1).

Zeros in the stored graph; the trainer fills them for the rows whose labels a step may
see (:mod:`fedcore.label_inputs`), never for a row whose score is being learnt or judged.
"""


def table_label_dim(task: TaskSpec) -> int:
    """Width of the label block: 2 with ``task.label_inputs`` for a graph model, else 0."""
    uses_graph = task.model != "row-mlp" and task.table_graph != "none"
    return len(LABEL_INPUTS) if task.label_inputs and uses_graph else 0


def table_feature_dim(task: TaskSpec) -> int:
    """Width of every node's features: node-type one-hot, row block, label block, entity block.

    The same at every site for the same task, so averaged weights mean the same thing.
    """
    return (
        table_num_types(task) + table_row_dim(task) + table_label_dim(task) + table_entity_dim(task)
    )


def hash_buckets(values: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each categorical value: ``blake2b`` (8-byte digest) of its UTF-8 text,
    read little-endian, modulo ``buckets``.

    Stable across processes and sites (no Python ``hash``); ``""`` (missing) is hashed
    like any other value.

    Args:
        values: ``object [n]`` of ``str``.
        buckets: Number of buckets (``>= 1``).

    Returns:
        ``int64 [n]`` in ``[0, buckets)``.
    """
    if buckets < 1:
        raise ValueError(f"hash_buckets needs buckets >= 1; found {buckets!r}")
    uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    codes = np.array(
        [
            int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little")
            % buckets
            for v in uniq
        ],
        dtype=np.int64,
    )
    return codes[inv.reshape(-1)] if len(uniq) else np.zeros(0, np.int64)


def entity_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes of entity ids: ``int64 [n]`` (``-1`` for ``""``) and the number of ids."""
    uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    if len(uniq) and uniq[0] == "":
        return inv - 1, len(uniq) - 1
    return inv, len(uniq)


def standardize(col: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``(col - mean) / std`` with the mean and std of the finite training values; ``nan`` -> 0.

    A constant (or absent) training column keeps ``std = 1``; test rows never move the scale.
    """
    ref = col[train & np.isfinite(col)]
    mean = float(ref.mean()) if len(ref) else 0.0
    std = float(ref.std()) if len(ref) > 1 else 1.0
    if not std > 1e-12:
        std = 1.0
    return np.asarray(np.nan_to_num((col - mean) / std, nan=0.0, posinf=0.0, neginf=0.0))


def _group_cumsum(code: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Running sum of ``value`` within runs of equal ``code`` (``code`` grouped, order kept)."""
    cs = np.cumsum(value)
    start = np.r_[True, code[1:] != code[:-1]] if len(code) else np.zeros(0, bool)
    group = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    before = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
    return np.asarray(cs - before[group])


def _new_co_entities(own: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """For each row, how many ids of the other roles meet the row's ``own`` entity there first.

    Summed over an entity's rows this is the number of distinct co-entity ids it has.
    """
    new = np.zeros(len(own))
    for other in others:
        rows = np.flatnonzero((own >= 0) & (other >= 0))
        if not len(rows):
            continue
        key = own[rows] * (int(other.max()) + 1) + other[rows]
        _, first = np.unique(key, return_index=True)
        np.add.at(new, rows[first], 1.0)
    return new


def _log_amount(table: Table) -> tuple[np.ndarray, np.ndarray]:
    """``log1p`` of the amount (``nan`` where there is none) and whether it is there."""
    n = len(table)
    if table.amount is None:
        return np.full(n, np.nan), np.zeros(n, bool)
    amount = np.asarray(table.amount, np.float64)
    has = np.isfinite(amount)
    return np.where(has, np.log1p(np.maximum(np.nan_to_num(amount), 0.0)), np.nan), has


def _require(table: Table, task: TaskSpec) -> None:
    missing = [f"features.{r}" for r in task.features if r not in table.numeric]
    missing += [f"categorical.{r}" for r in task.categorical if r not in table.categorical]
    missing += [f"entities.{r}" for r in task.entities if r not in table.entities]
    if missing:
        raise DataError(
            f"the task's role(s) {', '.join(missing)} are not in the site's table (it maps "
            f"features {sorted(table.numeric)}, categorical {sorted(table.categorical)}, "
            f"entities {sorted(table.entities)}); map them in data.columns"
        )


def structural_features(table: Table, roles: Sequence[str]) -> np.ndarray:
    """Label-free structural inputs per row, before scaling (see :data:`STRUCTURAL_FEATURES`).

    Args:
        table: The site's rows, sorted by time when it has timestamps.
        roles: Entity roles, in the task's order.

    Returns:
        ``float64 [n, len(roles) * 5]``, one block of :data:`STRUCTURAL_FEATURES` per role.
    """
    n, width = len(table), len(STRUCTURAL_FEATURES)
    out = np.zeros((n, len(roles) * width))
    codes = [entity_codes(table.entities[r])[0] for r in roles]
    log_amt, has_amt = _log_amount(table)
    amt0 = np.nan_to_num(log_amt, nan=0.0)
    for k, own in enumerate(codes):
        new_co = _new_co_entities(own, [c for j, c in enumerate(codes) if j != k])
        rows = np.flatnonzero(own >= 0)
        if table.timestamp is None:
            size = int(own.max()) + 1 if len(rows) else 0
            c = own[rows]
            count = np.bincount(c, minlength=size).astype(np.float64)[c]
            co = np.bincount(c, weights=new_co[rows], minlength=size)[c]
            amt_sum = np.bincount(c, weights=amt0[rows], minlength=size)[c]
            amt_n = np.bincount(c, weights=has_amt[rows].astype(np.float64), minlength=size)[c]
            gap = np.zeros(len(rows))
            first = (count == 1).astype(np.float64)
        else:
            rows = rows[np.argsort(own[rows], kind="stable")]  # by entity, then by time
            c = own[rows]
            count = _group_cumsum(c, np.ones(len(rows)))
            co = _group_cumsum(c, new_co[rows])
            amt_sum = _group_cumsum(c, amt0[rows])
            amt_n = _group_cumsum(c, has_amt[rows].astype(np.float64))
            ts = np.asarray(table.timestamp, np.float64)[rows]
            first = (count == 1).astype(np.float64)
            prev = np.r_[np.nan, ts[:-1]] if len(ts) else ts
            gap = np.where(first == 1, 0.0, np.maximum(np.nan_to_num(ts - prev), 0.0))
        block = np.stack(
            [
                np.log1p(count),
                np.log1p(gap),
                first,
                np.log1p(co),
                np.where(amt_n > 0, amt_sum / np.maximum(amt_n, 1.0), 0.0),
            ],
            axis=1,
        )
        out[rows, k * width : (k + 1) * width] = block
    return out


def entity_node_features(table: Table, role: str, others: Sequence[str]) -> np.ndarray:
    """Statistics of the entity nodes of ``role`` (see :data:`ENTITY_NODE_FEATURES`), unscaled.

    Args:
        table: The site's rows.
        role: The entity role.
        others: The task's other entity roles (for distinct co-entities).

    Returns:
        ``float64 [num_ids, 3]``, ids in the order of :func:`entity_codes`.
    """
    own, size = entity_codes(table.entities[role])
    rows = np.flatnonzero(own >= 0)
    c = own[rows]
    degree = np.bincount(c, minlength=size).astype(np.float64)
    new_co = _new_co_entities(own, [entity_codes(table.entities[o])[0] for o in others])
    co = np.bincount(c, weights=new_co[rows], minlength=size)
    span = np.zeros(size)
    if table.timestamp is not None and len(rows):
        ts = np.nan_to_num(np.asarray(table.timestamp, np.float64)[rows])
        first = np.full(size, np.inf)
        last = np.full(size, -np.inf)
        np.minimum.at(first, c, ts)
        np.maximum.at(last, c, ts)
        span = np.where(degree > 0, (last - first) / _DAY, 0.0)
    return np.stack([np.log1p(degree), np.log1p(co), np.log1p(span)], axis=1)


def table_row_block(table: Table, task: TaskSpec, train: np.ndarray) -> np.ndarray:
    """The row block of every row (layout :func:`table_row_names`); labels are never read.

    Numeric roles: signed ``log1p``, standardized with the mean and std of the training
    rows, ``nan`` -> 0. Amount: ``log1p`` standardized the same way, and ``has_amount``
    0/1. Categorical roles: one-hot of :func:`hash_buckets` into ``task.categorical[role]``
    buckets. Structural inputs (``task.structural``): :func:`structural_features`,
    standardized on the training rows except the ``first`` flags.

    Args:
        table: The site's rows, sorted by time when it has timestamps.
        task: The table task.
        train: ``bool [n]``, the training rows (the only rows the scaling looks at).

    Returns:
        ``float32 [n, table_row_dim(task)]``.

    Raises:
        DataError: if a role of the task is not mapped in the table.
    """
    _require(table, task)
    n = len(table)
    cols: list[np.ndarray] = []
    for role in task.features:
        v = np.asarray(table.numeric[role], np.float64)
        cols.append(standardize(np.sign(v) * np.log1p(np.abs(v)), train))
    log_amt, has_amt = _log_amount(table)
    cols += [standardize(log_amt, train), has_amt.astype(np.float64)]
    for role, buckets in task.categorical.items():
        onehot = np.zeros((n, buckets))
        onehot[np.arange(n), hash_buckets(table.categorical[role], buckets)] = 1.0
        cols += list(onehot.T)
    if task.structural and task.entities:
        s = structural_features(table, task.entities)
        flag = STRUCTURAL_FEATURES.index("first")
        for j in range(s.shape[1]):
            cols.append(
                s[:, j] if j % len(STRUCTURAL_FEATURES) == flag else standardize(s[:, j], train)
            )
    block = np.stack(cols, axis=1) if n else np.zeros((0, len(cols)))
    return block.astype(np.float32)
