"""Turn one site's transactions into a PyTorch Geometric graph of transactions, accounts, merchants and devices."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

from fedcore.config import TaskSpec
from fedcore.data.transactions import DataError, Transactions

log = logging.getLogger(__name__)

NODE_TYPES = ("transaction", "account", "merchant", "device")
"""Node types, in the order of the one-hot block at the start of every node's features."""

BASE_ROW_FEATURES = (
    "log_amount",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
    "has_merchant",
    "has_device",
)
"""Row features every transaction has, before the task's extra features."""

CONTEXT_FEATURES = ("payer_tx_1h", "payee_tx_24h", "device_tx_24h")
"""Label-free, graph-derived features of a transaction node: how busy its neighbours are around it."""

ENTITY_FEATURES = (
    "log_degree",
    "log_out_degree",
    "log_in_degree",
    "log_counterparties",
    "log_linked_devices",
    "log_span_days",
    "log_tx_per_day",
    "log_max_tx_1h",
    "mean_log_amount",
)
"""Label-free structural statistics of an account, merchant or device node."""

_DAY = 86_400.0
_HOUR = 3_600.0


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(x, 0.0, 1.0))


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)))


_FEATURE_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "channel_online": _unit,
    "card_present": _unit,
    "hour_of_day": lambda x: np.asarray(np.clip(x, 0.0, 23.0)),
    "account_age_days": lambda x: np.asarray(np.log1p(np.maximum(x, 0.0))),
}
"""Fixed transforms of known extra features; any other feature gets a signed ``log1p``."""

# Fixed (center, scale) of every raw feature: x' = (x - center) / scale. The constants
# were measured once on generated reference banks (all customer mixes) and are frozen
# here: they are the same at every site, so weights averaged across banks mean the same
# thing everywhere, and they depend on no site's data or labels. Unit-scale inputs make
# the GNN converge several times faster than raw log features.
_ROW_NORM: dict[str, tuple[float, float]] = {
    "log_amount": (5.4, 1.9),
    "hour_sin": (0.0, 0.7),
    "hour_cos": (0.0, 0.7),
    "weekday_sin": (0.0, 0.7),
    "weekday_cos": (0.0, 0.7),
    "has_merchant": (0.5, 0.5),
    "has_device": (0.5, 0.5),
    "channel_online": (0.5, 0.5),
    "card_present": (0.5, 0.5),
    "hour_of_day": (12.0, 6.0),
    "account_age_days": (7.2, 1.3),
}
_CONTEXT_NORM: dict[str, tuple[float, float]] = {
    "payer_tx_1h": (0.2, 0.5),
    "payee_tx_24h": (1.2, 1.2),
    "device_tx_24h": (0.5, 0.7),
}
_ENTITY_NORM: dict[str, dict[str, tuple[float, float]]] = {
    "account": {
        "log_degree": (2.3, 1.1),
        "log_out_degree": (1.1, 1.5),
        "log_in_degree": (1.3, 1.1),
        "log_counterparties": (1.8, 1.1),
        "log_linked_devices": (0.35, 0.45),
        "log_span_days": (3.3, 1.4),
        "log_tx_per_day": (0.7, 1.0),
        "log_max_tx_1h": (0.85, 0.3),
        "mean_log_amount": (6.0, 1.6),
    },
    "merchant": {
        "log_degree": (3.5, 1.2),
        "log_in_degree": (3.5, 1.2),
        "log_counterparties": (3.4, 1.1),
        "log_linked_devices": (2.2, 1.3),
        "log_span_days": (3.9, 0.6),
        "log_tx_per_day": (0.6, 0.5),
        "log_max_tx_1h": (1.0, 0.3),
        "mean_log_amount": (4.9, 1.3),
    },
    "device": {
        "log_degree": (2.2, 1.0),
        "log_out_degree": (2.2, 1.0),
        "log_counterparties": (0.75, 0.25),
        "log_linked_devices": (1.9, 0.75),
        "log_span_days": (3.2, 1.4),
        "log_tx_per_day": (0.7, 1.0),
        "log_max_tx_1h": (0.9, 0.4),
        "mean_log_amount": (5.5, 1.35),
    },
}
_DEFAULT_NORM = (0.0, 1.0)


def _normalize(
    x: np.ndarray, names: Sequence[str], table: dict[str, tuple[float, float]]
) -> np.ndarray:
    center = np.array([table.get(n, _DEFAULT_NORM)[0] for n in names])
    scale = np.array([table.get(n, _DEFAULT_NORM)[1] for n in names])
    return np.asarray((x - center) / scale)


@dataclass
class FraudGraph:
    """One site's graph plus the per-row view used by the non-graph baseline.

    Node ``i < num_tx`` is transaction ``i`` of the (time-sorted) table; the remaining
    nodes are accounts, then merchants, then devices.

    Attributes:
        data: ``x`` float32 ``[N, feature_dim(task)]``, ``edge_index`` long ``[2, E]``
            (undirected: both directions), ``y`` long ``[N]`` (-1 on non-transaction
            nodes), ``train_mask`` / ``test_mask`` bool ``[N]`` (transaction nodes only).
        row_x: float32 ``[T, row_feature_dim(task)]`` row features of the transactions.
        row_y: long ``[T]`` labels of the transactions.
        row_train_mask: bool ``[T]``.
        row_test_mask: bool ``[T]``.
        num_train: Train transactions.
        num_test: Test transactions.
        num_train_pos: Fraud among train transactions.
        num_test_pos: Fraud among test transactions.
    """

    data: Data
    row_x: torch.Tensor
    row_y: torch.Tensor
    row_train_mask: torch.Tensor
    row_test_mask: torch.Tensor
    num_train: int
    num_test: int
    num_train_pos: int
    num_test_pos: int
    quality: dict[str, float] | None = None
    """A table's data-quality summary (counts, shares, rates: never a row), or ``None``."""
    label_cols: int | None = None
    """First of the two label-input columns of ``data.x`` (a table graph with
    ``task.label_inputs``; see :mod:`fedcore.label_inputs`), or ``None``."""

    @property
    def num_tx(self) -> int:
        """Number of transaction nodes (the first nodes of the graph)."""
        return int(self.row_y.shape[0])

    def __repr__(self) -> str:
        return (
            f"FraudGraph(nodes={self.data.num_nodes}, edges={self.data.num_edges}, "
            f"train={self.num_train} ({self.num_train_pos} fraud), "
            f"test={self.num_test} ({self.num_test_pos} fraud))"
        )


def row_feature_dim(task: TaskSpec) -> int:
    """Width of the per-transaction row features: the base features plus ``task.features``."""
    return len(BASE_ROW_FEATURES) + len(task.features)


def feature_dim(task: TaskSpec) -> int:
    """Width of every node's features; the same at every site for the same task.

    Layout: node-type one-hot (4), transaction row features, transaction context
    features, then one block of :data:`ENTITY_FEATURES` per entity type (account,
    merchant, device). Separate blocks keep the types apart after mean aggregation, so
    a transaction node can tell its device's statistics from its merchant's.
    """
    return (
        len(NODE_TYPES)
        + row_feature_dim(task)
        + len(CONTEXT_FEATURES)
        + (len(NODE_TYPES) - 1) * len(ENTITY_FEATURES)
    )


def row_features(tx: Transactions, features: Sequence[str]) -> np.ndarray:
    """Per-transaction features with fixed transforms, ``float32 [n, 7 + len(features)]``.

    Raises:
        DataError: if a requested feature is missing from ``tx.features``.
    """
    missing = [f for f in features if f not in tx.features]
    if missing:
        have = ", ".join(sorted(tx.features)) or "none"
        raise DataError(
            f"task feature(s) {', '.join(missing)} missing from the site's transactions "
            f"(available: {have}); map them in data.columns.features or drop them from task.features"
        )
    hours = (tx.timestamp % _DAY) / _HOUR
    weekday = ((tx.timestamp // _DAY) + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    cols = [
        np.log1p(np.maximum(tx.amount, 0.0)),
        np.sin(2 * math.pi * hours / 24.0),
        np.cos(2 * math.pi * hours / 24.0),
        np.sin(2 * math.pi * weekday / 7.0),
        np.cos(2 * math.pi * weekday / 7.0),
        (tx.merchant != "").astype(np.float64),
        (tx.device != "").astype(np.float64),
    ]
    for name in features:
        cols.append(
            _FEATURE_TRANSFORMS.get(name, _signed_log)(np.asarray(tx.features[name], np.float64))
        )
    out = np.stack(cols, axis=1) if len(tx) else np.zeros((0, len(cols)))
    names = [*BASE_ROW_FEATURES, *features]
    out = _normalize(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), names, _ROW_NORM)
    return out.astype(np.float32)


def _window_counts(code: np.ndarray, ts: np.ndarray, before: float, after: float) -> np.ndarray:
    """For each row, how many *other* rows share its code with a time in ``[t - before, t + after]``.

    Rows with code -1 (no entity) get 0.
    """
    n = len(code)
    if n == 0:
        return np.zeros(0)
    rel = ts - ts.min()
    span = float(rel.max()) + before + after + 1.0
    key = code.astype(np.float64) * span + rel
    order = np.argsort(key, kind="stable")
    sk = key[order]
    lo = np.searchsorted(sk, sk - before, side="left")
    hi = np.searchsorted(sk, sk + after, side="right")
    counts = np.empty(n)
    counts[order] = hi - lo - 1
    counts[code < 0] = 0
    return counts


def _distinct_per(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """Number of distinct ``b`` per value of ``a`` (both int codes >= 0)."""
    if len(a) == 0:
        return np.zeros(size)
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=size).astype(np.float64)


def _entity_stats(
    code: np.ndarray,
    size: int,
    ts: np.ndarray,
    amount: np.ndarray,
    out_mask: np.ndarray,
    counterparty: np.ndarray,
    linked: np.ndarray,
) -> np.ndarray:
    """Structural statistics for ``size`` entities from their incident rows (``code`` >= 0).

    Args:
        code: Entity code of each incident row.
        size: Number of entities.
        ts: Timestamp of each row.
        amount: Amount of each row.
        out_mask: Whether the entity is the sending side of the row.
        counterparty: The other account of each row (code), for distinct counts.
        linked: A second linked code (device or account) of each row, -1 = none.
    """
    if size == 0 or len(code) == 0:
        return np.zeros((size, len(ENTITY_FEATURES)))
    deg = np.bincount(code, minlength=size).astype(np.float64)
    out = np.bincount(code, weights=out_mask.astype(np.float64), minlength=size)
    first = np.full(size, np.inf)
    last = np.full(size, -np.inf)
    np.minimum.at(first, code, ts)
    np.maximum.at(last, code, ts)
    burst = np.zeros(size)
    np.maximum.at(burst, code, _window_counts(code, ts, 0.0, _HOUR) + 1.0)
    has = linked >= 0
    sum_amt = np.bincount(code, weights=np.log1p(np.maximum(amount, 0.0)), minlength=size)
    return entity_stat_columns(
        deg,
        out,
        _distinct_per(code, counterparty, size),
        _distinct_per(code[has], linked[has], size),
        first,
        last,
        burst,
        sum_amt,
    )


def entity_stat_columns(
    deg: np.ndarray,
    out: np.ndarray,
    counterparties: np.ndarray,
    linked: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    burst: np.ndarray,
    sum_log_amount: np.ndarray,
) -> np.ndarray:
    """:data:`ENTITY_FEATURES` (raw) of entities from their counts, ``[k, 9]`` (all args ``[k]``).

    Args:
        deg: Incident rows. out: Rows where the entity sends.
        counterparties: Distinct counterparties. linked: Distinct linked devices/accounts.
        first: Time of the first row. last: Time of the last row.
        burst: Most rows within one hour (from a row's time on, itself included).
        sum_log_amount: Sum of ``log1p(max(amount, 0))`` over the rows.
    """
    f = np.zeros((len(deg), len(ENTITY_FEATURES)))
    span_days = np.where(deg > 0, (last - first) / _DAY, 0.0)
    f[:, 0] = np.log1p(deg)
    f[:, 1] = np.log1p(out)
    f[:, 2] = np.log1p(deg - out)
    f[:, 3] = np.log1p(counterparties)
    f[:, 4] = np.log1p(linked)
    f[:, 5] = np.log1p(span_days)
    f[:, 6] = np.log1p(deg / np.maximum(span_days, 1.0 / 24.0))
    f[:, 7] = np.log1p(burst)
    f[:, 8] = np.where(deg > 0, sum_log_amount / np.maximum(deg, 1.0), 0.0)
    return f


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes for string ids; ``""`` becomes -1."""
    uniq, inv = np.unique(values.astype(str), return_inverse=True)
    inv = inv.astype(np.int64)
    if len(uniq) and uniq[0] == "":
        return inv - 1, len(uniq) - 1
    return inv, len(uniq)


def time_split(timestamp: np.ndarray, test_fraction: float) -> np.ndarray:
    """Boolean test mask: the latest ``test_fraction`` of rows by time (``timestamp`` sorted).

    Rows tied with the first test row also go to test, so every test row is strictly
    later than every train row.
    """
    n = len(timestamp)
    test = np.zeros(n, dtype=bool)
    if n == 0:
        return test
    cut = n - max(1, int(round(n * test_fraction)))
    cut = max(cut, 0)
    while 0 < cut < n and timestamp[cut - 1] == timestamp[cut]:
        cut -= 1
    test[cut:] = True
    return test


def build_graph(tx: Transactions, task: TaskSpec) -> FraudGraph:
    """Build the site graph: transaction nodes linked to their payer, payee, merchant and device.

    Args:
        tx: The site's transactions (sorted by time if they are not already).
        task: Which extra features to use and the share of latest rows held out as test.

    Returns:
        The graph; the first ``len(tx)`` nodes are the transactions in time order.

    Raises:
        DataError: if a task feature is missing from ``tx``.
    """
    if len(tx) > 1 and np.any(np.diff(tx.timestamp) < 0):
        tx = tx.sorted_by_time()
    t = len(tx)
    rows = row_features(tx, task.features)
    ts = tx.timestamp.astype(np.float64)

    # accounts: payers and payees share one id space
    acct, n_acct = _codes(np.concatenate([tx.payer, tx.payee]))
    payer, payee = acct[:t], acct[t:]
    merch, n_merch = _codes(tx.merchant)
    dev, n_dev = _codes(tx.device)

    ctx = (
        np.stack(
            [
                np.log1p(_window_counts(payer, ts, _HOUR, _HOUR)),
                np.log1p(_window_counts(payee, ts, _DAY, _DAY)),
                np.log1p(_window_counts(dev, ts, _DAY, _DAY)),
            ],
            axis=1,
        )
        if t
        else np.zeros((0, len(CONTEXT_FEATURES)))
    )

    ones, zeros = np.ones(t, bool), np.zeros(t, bool)
    acct_stats = _entity_stats(
        np.concatenate([payer, payee]),
        n_acct,
        np.concatenate([ts, ts]),
        np.concatenate([tx.amount, tx.amount]),
        np.concatenate([ones, zeros]),
        np.concatenate([payee, payer]),
        np.concatenate([dev, -np.ones(t, np.int64)]),
    )
    m = merch >= 0
    merch_stats = _entity_stats(merch[m], n_merch, ts[m], tx.amount[m], zeros[m], payer[m], dev[m])
    d = dev >= 0
    dev_stats = _entity_stats(dev[d], n_dev, ts[d], tx.amount[d], ones[d], payer[d], payee[d])

    n_nodes = t + n_acct + n_merch + n_dev
    dim = feature_dim(task)
    x = np.zeros((n_nodes, dim), dtype=np.float32)
    r0 = len(NODE_TYPES)
    c0 = r0 + rows.shape[1]
    e0 = c0 + len(CONTEXT_FEATURES)
    x[:t, 0] = 1.0
    x[:t, r0:c0] = rows
    x[:t, c0:e0] = _normalize(ctx, CONTEXT_FEATURES, _CONTEXT_NORM)
    offsets = (t, t + n_acct, t + n_acct + n_merch, n_nodes)
    width = len(ENTITY_FEATURES)
    for k, stats in enumerate((acct_stats, merch_stats, dev_stats)):
        block = _normalize(stats, ENTITY_FEATURES, _ENTITY_NORM[NODE_TYPES[k + 1]])
        x[offsets[k] : offsets[k + 1], 1 + k] = 1.0
        x[offsets[k] : offsets[k + 1], e0 + k * width : e0 + (k + 1) * width] = block

    tx_idx = np.arange(t)
    src = [tx_idx, tx_idx, tx_idx[m], tx_idx[d]]
    dst = [payer + offsets[0], payee + offsets[0], merch[m] + offsets[1], dev[d] + offsets[2]]
    s = np.concatenate(src)
    e = np.concatenate(dst)
    edge_index = torch.from_numpy(np.stack([np.concatenate([s, e]), np.concatenate([e, s])])).long()

    test = time_split(ts, task.test_fraction)
    train = ~test
    graph = assemble_graph(x, edge_index, tx.label, train, rows)
    log.debug("built %r", graph)
    return graph


def assemble_graph(
    x: np.ndarray,
    edge_index: torch.Tensor,
    label: np.ndarray,
    train: np.ndarray,
    rows: np.ndarray,
    label_cols: int | None = None,
) -> FraudGraph:
    """The :class:`FraudGraph` of node features and edges whose first ``len(label)`` nodes are rows.

    Args:
        x: ``float32 [N, F]`` node features.
        edge_index: ``long [2, E]``.
        label: ``[T]`` labels of the row nodes (the other nodes get ``y = -1``).
        train: ``bool [T]``, the training rows; the others are the test rows.
        rows: ``float32 [T, R]`` row features (``row_x``).
        label_cols: See :attr:`FraudGraph.label_cols`.
    """
    n_nodes, t = len(x), len(label)
    label = np.asarray(label, np.int64)
    test = ~train
    y = np.full(n_nodes, -1, dtype=np.int64)
    y[:t] = label
    train_mask = np.zeros(n_nodes, bool)
    test_mask = np.zeros(n_nodes, bool)
    train_mask[:t] = train
    test_mask[:t] = test
    data = Data(
        x=torch.from_numpy(x),
        edge_index=edge_index,
        y=torch.from_numpy(y),
        train_mask=torch.from_numpy(train_mask),
        test_mask=torch.from_numpy(test_mask),
    )
    data.num_nodes = n_nodes
    return FraudGraph(
        data=data,
        row_x=torch.from_numpy(rows),
        row_y=torch.from_numpy(label.copy()),
        row_train_mask=torch.from_numpy(train.copy()),
        row_test_mask=torch.from_numpy(test.copy()),
        num_train=int(train.sum()),
        num_test=int(test.sum()),
        num_train_pos=int(label[train].sum()),
        num_test_pos=int(label[test].sum()),
        label_cols=label_cols,
    )


def merge_graphs(graphs: Sequence[FraudGraph]) -> FraudGraph:
    """Disjoint union of site graphs (used by the centralized baseline).

    Transaction nodes are no longer the first nodes of the merged graph; use the
    masks (``data.train_mask`` / ``data.test_mask``) to select them.
    """
    if not graphs:
        raise ValueError("merge_graphs needs at least one graph, found none")
    xs, edges, ys, trains, tests = [], [], [], [], []
    offset = 0
    for g in graphs:
        n = int(g.data.num_nodes)
        xs.append(g.data.x)
        edges.append(g.data.edge_index + offset)
        ys.append(g.data.y)
        trains.append(g.data.train_mask)
        tests.append(g.data.test_mask)
        offset += n
    data = Data(
        x=torch.cat(xs),
        edge_index=torch.cat(edges, dim=1),
        y=torch.cat(ys),
        train_mask=torch.cat(trains),
        test_mask=torch.cat(tests),
    )
    data.num_nodes = offset
    return FraudGraph(
        data=data,
        row_x=torch.cat([g.row_x for g in graphs]),
        row_y=torch.cat([g.row_y for g in graphs]),
        row_train_mask=torch.cat([g.row_train_mask for g in graphs]),
        row_test_mask=torch.cat([g.row_test_mask for g in graphs]),
        num_train=sum(g.num_train for g in graphs),
        num_test=sum(g.num_test for g in graphs),
        num_train_pos=sum(g.num_train_pos for g in graphs),
        num_test_pos=sum(g.num_test_pos for g in graphs),
        quality=None,
        label_cols=_same_label_cols(graphs),
    )


def _same_label_cols(graphs: Sequence[FraudGraph]) -> int | None:
    """The label-input columns every graph shares (``ValueError`` if they differ)."""
    cols = {g.label_cols for g in graphs}
    if len(cols) != 1:
        raise ValueError(
            f"graphs built for different tasks: label-input columns {sorted(map(str, cols))}"
        )
    return cols.pop()
