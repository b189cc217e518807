"""The neighbourhood that scores a few transactions of a :class:`~fedcore.serving.window.Window`: nodes, features, edges.

A ``L``-layer GNN scores a transaction from the nodes within ``L`` hops of it; those
nodes need their features, and the nodes within ``L - 1`` hops need all their edges
(the layer-wise computation graph of Hamilton et al. 2017, Algorithm 2). This module
cuts exactly that part out of the window, numbered in the order
:func:`fedcore.data.graph.build_graph` gives the whole window's graph (transactions in
time order, then accounts, merchants and devices each sorted by id) with edges in its
order, so :func:`fedcore.export.layered.scoring_batch` lays out the same rows and the
same neighbour lists as it would on the whole graph, and the model computes the same
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcore.data.graph import (
    _CONTEXT_NORM,
    _ENTITY_NORM,
    CONTEXT_FEATURES,
    ENTITY_FEATURES,
    NODE_TYPES,
    _entity_stats,
    _normalize,
)
from fedcore.serving.window import Window

_KINDS = ("account", "merchant", "device")


@dataclass(frozen=True)
class Neighbourhood:
    """The part of the window's graph that scores some of its transactions.

    Attributes:
        x: Node features, ``float32 [N, F]``: transactions first (time order), then
            accounts, merchants, devices (each sorted by id).
        edge_index: ``int64 [2, E]``, both directions, in ``build_graph``'s order.
        targets: Node of each transaction to score, in the order asked.
        num_tx: Transaction nodes.
    """

    x: np.ndarray
    edge_index: np.ndarray
    targets: np.ndarray
    num_tx: int


def _unique(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Distinct non-negative ``values`` not in sorted ``seen``."""
    v = np.unique(values[values >= 0])
    if seen.size and v.size:
        pos = np.minimum(np.searchsorted(seen, v), seen.size - 1)
        v = v[seen[pos] != v]
    return v


def _rows_of(win: Window, kind: str, codes: np.ndarray) -> np.ndarray:
    """Every row of the given entities (any role), possibly repeated."""
    parts: list[int] = []
    if kind == "account":
        for c in codes.tolist():
            parts += win.out_rows[c]
            parts += win.in_rows[c]
    else:
        lists = win.merchant_rows if kind == "merchant" else win.device_rows
        for c in codes.tolist():
            parts += lists[c]
    return np.asarray(parts, dtype=np.int64)


def _entities_of(win: Window, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.concatenate([win.payer[rows], win.payee[rows]]),
        win.merchant[rows],
        win.device[rows],
    )


def entity_features(win: Window, kind: str, codes: np.ndarray) -> np.ndarray:
    """Normalised statistics of the given entities (``[k, len(ENTITY_FEATURES)]``).

    A hub's come from its running counts (:mod:`fedcore.serving.hubs`); the others' from
    all their rows, laid out as ``build_graph`` lays them out (an account's paying rows,
    then its receiving rows, each in time order), so every sum adds in the same order.
    """
    hubs = win.hubs.of[kind]
    is_hub = np.array([c in hubs for c in codes.tolist()], dtype=bool)
    if is_hub.any():
        out = np.zeros((len(codes), len(ENTITY_FEATURES)))
        out[~is_hub] = _row_entity_features(win, kind, codes[~is_hub])
        out[is_hub] = win.hubs.features(kind, codes[is_hub].tolist())
        return out
    return _row_entity_features(win, kind, codes)


def _row_entity_features(win: Window, kind: str, codes: np.ndarray) -> np.ndarray:
    k = len(codes)
    if k == 0:
        return np.zeros((0, len(ENTITY_FEATURES)))
    rows: list[int] = []
    local: list[int] = []
    out_mask: list[bool] = []
    for j, c in enumerate(codes.tolist()):
        if kind == "account":
            o, i = win.out_rows[c], win.in_rows[c]
            rows += o
            rows += i
            local += [j] * (len(o) + len(i))
            out_mask += [True] * len(o) + [False] * len(i)
        else:
            lst = (win.merchant_rows if kind == "merchant" else win.device_rows)[c]
            rows += lst
            local += [j] * len(lst)
            out_mask += [kind == "device"] * len(lst)
    r = np.asarray(rows, dtype=np.int64)
    mask = np.asarray(out_mask, dtype=bool)
    if kind == "account":
        counterparty_arr = np.where(mask, win.payee[r], win.payer[r])
        linked_arr = np.where(mask, win.device[r], -1)
    elif kind == "merchant":
        counterparty_arr, linked_arr = win.payer[r], win.device[r]
    else:
        counterparty_arr, linked_arr = win.payer[r], win.payee[r]
    stats = _entity_stats(
        np.asarray(local, dtype=np.int64),
        k,
        win.ts[r],
        win.amount[r],
        mask,
        counterparty_arr,
        linked_arr,
    )
    return np.asarray(_normalize(stats, ENTITY_FEATURES, _ENTITY_NORM[kind]))


def _by_name(names: list[str], codes: np.ndarray) -> np.ndarray:
    """``codes`` sorted by their ids (``build_graph`` numbers entities in sorted-id order)."""
    return codes[np.argsort(np.array([names[c] for c in codes.tolist()], dtype=str), kind="stable")]


def _local(sorted_codes: np.ndarray, order_pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Node number of each of ``values`` (``-1``: not a node), given codes sorted and their node numbers."""
    out = np.full(values.shape, -1, dtype=np.int64)
    if sorted_codes.size == 0:
        return out
    pos = np.minimum(np.searchsorted(sorted_codes, values), sorted_codes.size - 1)
    hit = (sorted_codes[pos] == values) & (values >= 0)
    out[hit] = order_pos[pos[hit]]
    return out


def neighbourhood(win: Window, targets: np.ndarray, layers: int) -> Neighbourhood:
    """The nodes, features and edges that score ``targets`` (window rows) with a ``layers``-layer GNN."""
    targets = np.asarray(targets, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    rows_seen = np.unique(targets)
    ents_seen = {k: empty for k in _KINDS}
    expand_rows, expand_ents = [rows_seen], {k: [empty] for k in _KINDS}
    frontier_rows, frontier_ents = rows_seen, {k: empty for k in _KINDS}
    virtual = {k: empty for k in _KINDS}
    for hop in range(1, layers + 1):
        last = hop == layers
        if hop % 2:  # rows -> their entities
            found = _entities_of(win, frontier_rows)
            frontier_ents = {
                k: _unique(v, ents_seen[k]) for k, v in zip(_KINDS, found, strict=True)
            }
            for k in _KINDS:
                ents_seen[k] = np.union1d(ents_seen[k], frontier_ents[k])
                if not last:
                    expand_ents[k].append(frontier_ents[k])
        else:  # entities -> their rows; a hub's rows in the last hop are read as its mean
            if last:
                for k in _KINDS:
                    hubs = win.hubs.of[k]
                    is_hub = np.array([c in hubs for c in frontier_ents[k].tolist()], dtype=bool)
                    virtual[k] = frontier_ents[k][is_hub]
                    frontier_ents[k] = frontier_ents[k][~is_hub]
            found_rows = np.concatenate([_rows_of(win, k, frontier_ents[k]) for k in _KINDS])
            frontier_rows = _unique(found_rows, rows_seen)
            rows_seen = np.union1d(rows_seen, frontier_rows)
            if not last:
                expand_rows.append(frontier_rows)
    # transactions in time order (ties: arrival), entities by id
    tx = rows_seen[np.lexsort((rows_seen, win.ts[rows_seen]))]
    names = {
        "account": win.accounts.name,
        "merchant": win.merchants.name,
        "device": win.devices.name,
    }
    ents = {k: _by_name(names[k], ents_seen[k]) for k in _KINDS}
    t = len(tx)
    offsets = [t]
    for k in _KINDS:
        offsets.append(offsets[-1] + len(ents[k]))
    hub_list = [(j, int(c)) for j, k in enumerate(_KINDS) for c in virtual[k].tolist()]
    n = offsets[-1] + len(hub_list)

    # features
    dim = len(NODE_TYPES) + win.rowx.shape[1] + len(CONTEXT_FEATURES) + 3 * len(ENTITY_FEATURES)
    x = np.zeros((n, dim), dtype=np.float32)
    r0 = len(NODE_TYPES)
    c0 = r0 + win.rowx.shape[1]
    e0 = c0 + len(CONTEXT_FEATURES)
    x[:t, 0] = 1.0
    x[:t, r0:c0] = win.rowx[tx]
    ctx = np.log1p(win.ctx[tx].astype(np.float64))
    x[:t, c0:e0] = _normalize(ctx, CONTEXT_FEATURES, _CONTEXT_NORM)
    width = len(ENTITY_FEATURES)
    for j, k in enumerate(_KINDS):
        lo, hi = offsets[j], offsets[j + 1]
        x[lo:hi, 1 + j] = 1.0
        x[lo:hi, e0 + j * width : e0 + (j + 1) * width] = entity_features(win, k, ents[k])
    # one node per hub of the last hop: its transactions' mean features, its only in-edge
    for v, (j, code) in enumerate(hub_list):
        x[offsets[-1] + v, 0] = 1.0
        x[offsets[-1] + v, r0:e0] = win.hubs.mean_x(_KINDS[j], code)

    # edges: per role, transactions in node order; an edge is needed when one of its ends
    # is within layers - 1 hops of a target
    tx_sorted = np.sort(tx)
    tx_node = np.empty(t, dtype=np.int64)
    tx_node[np.searchsorted(tx_sorted, tx)] = np.arange(t)
    expand_tx = np.concatenate(expand_rows)
    tx_expand = np.zeros(t, dtype=bool)
    tx_expand[tx_node[np.searchsorted(tx_sorted, expand_tx)]] = True
    to_ent: list[tuple[np.ndarray, np.ndarray]] = []  # in-edges of entities
    to_tx: list[tuple[np.ndarray, np.ndarray]] = []  # in-edges of transactions
    tx_ids = np.arange(t, dtype=np.int64)
    node_of_ent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for role, kind in (("payer", 0), ("payee", 0), ("merchant", 1), ("device", 2)):
        k = _KINDS[kind]
        codes = getattr(win, role)[tx]
        ent_sorted = np.sort(ents[k])
        node_of = np.empty(len(ents[k]), dtype=np.int64)
        node_of[np.searchsorted(ent_sorted, ents[k])] = offsets[kind] + np.arange(len(ents[k]))
        node_of_ent[k] = (ent_sorted, node_of)
        dst = _local(ent_sorted, node_of, codes)
        ex = np.concatenate(expand_ents[k])
        ent_expand = np.isin(codes, ex) if ex.size else np.zeros(t, dtype=bool)
        keep = (dst >= 0) & (tx_expand | ent_expand)
        hub = np.isin(codes, virtual[k]) if virtual[k].size else np.zeros(t, dtype=bool)
        to_ent.append((tx_ids[keep & ~hub], dst[keep & ~hub]))
        back = keep & (~hub | tx_expand)
        to_tx.append((dst[back], tx_ids[back]))
    hub_src = offsets[-1] + np.arange(len(hub_list), dtype=np.int64)
    hub_dst = np.array(
        [_local(*node_of_ent[_KINDS[j]], np.array([c]))[0] for j, c in hub_list], dtype=np.int64
    )
    src = np.concatenate([*(p[0] for p in to_ent), hub_src, *(p[0] for p in to_tx)])
    dst_all = np.concatenate([*(p[1] for p in to_ent), hub_dst, *(p[1] for p in to_tx)])
    edge_index = np.stack([src, dst_all]).astype(np.int64)
    target_nodes = tx_node[np.searchsorted(tx_sorted, targets)]
    return Neighbourhood(x=x, edge_index=edge_index, targets=target_nodes, num_tx=t)


__all__ = ["Neighbourhood", "entity_features", "neighbourhood"]
