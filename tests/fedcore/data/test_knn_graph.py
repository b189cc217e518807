"""Tests of the kNN graph of a table: no row hears a later, same-time or test row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcore.config import TaskSpec
from fedcore.data.knn_graph import knn_edges
from fedcore.data.table import Table
from fedcore.data.table_graph import build_table_graph


def _points(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32))


def test_neighbours_strictly_earlier_and_within_window() -> None:
    n = 300
    ts = np.sort(np.random.default_rng(1).integers(0, 60, n)).astype(np.float64)  # many ties
    ei = knn_edges(_points(n), 4, timestamp=ts, window=25)
    src, dst = ei[0].numpy(), ei[1].numpy()
    assert len(src) > 0
    assert (ts[src] < ts[dst]).all(), "a row hears a later or same-time row"
    earlier = np.searchsorted(ts, ts, side="left")
    assert (src >= earlier[dst] - 25).all()
    assert np.bincount(dst, minlength=n).max() == 4
    # rows at the first time have no earlier row, hence no neighbour
    assert not np.isin(np.flatnonzero(ts == ts[0]), dst).any()


def test_neighbours_are_the_nearest_allowed() -> None:
    pts = torch.tensor([[0.0], [10.0], [1.0], [9.0], [0.5]])
    ts = np.arange(5, dtype=np.float64)
    ei = knn_edges(pts, 1, timestamp=ts, window=10)
    # row 1 hears 0; row 2 hears 0; row 3 hears 1; row 4 hears 0 (|0.5 - 0| = |0.5 - 1|: first)
    pairs = sorted(zip(ei[1].tolist(), ei[0].tolist(), strict=True))
    assert pairs[:3] == [(1, 0), (2, 0), (3, 1)]
    assert pairs[3][0] == 4 and pairs[3][1] in (0, 2)


def test_without_timestamps_only_training_rows_never_self() -> None:
    n = 200
    train = np.random.default_rng(2).random(n) < 0.7
    ei = knn_edges(_points(n), 5, timestamp=None, window=10, train=train)
    src, dst = ei[0].numpy(), ei[1].numpy()
    assert train[src].all(), "a row hears a test row"
    assert (src != dst).all()
    assert np.bincount(dst, minlength=n).tolist() == [5] * n


def test_chunks_agree_with_brute_force() -> None:
    n = 1500  # several chunks
    pts = _points(n, 4)
    ts = np.arange(n, dtype=np.float64)
    ei = knn_edges(pts, 3, timestamp=ts, window=2000)
    dist = torch.cdist(pts, pts)
    dist = dist.masked_fill(torch.ones(n, n).triu().bool(), float("inf"))
    value, index = dist[1:].topk(3, largest=False)
    got = {d: set() for d in range(n)}
    for s, d in ei.t().tolist():
        got[d].add(s)
    for i in (2, 700, 1499):
        want = set(index[i - 1][torch.isfinite(value[i - 1])].tolist())
        assert got[i] == want and len(want) == min(3, i), i


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sorted ascending"):
        knn_edges(_points(3), 1, timestamp=np.array([2.0, 1.0, 3.0]), window=5)
    with pytest.raises(ValueError, match="training mask"):
        knn_edges(_points(3), 1, timestamp=None, window=5)
    with pytest.raises(ValueError, match="k >= 1"):
        knn_edges(_points(3), 0, timestamp=None, window=5)


def _table(n: int, timestamps: bool) -> Table:
    rng = np.random.default_rng(9)
    return Table(
        label=(rng.random(n) < 0.2).astype(np.int64),
        line=np.arange(1, n + 1),
        timestamp=rng.integers(0, 50, n).astype(np.float64) if timestamps else None,
        amount=rng.exponential(10.0, n),
        numeric={"f": rng.normal(size=n)},
    )


def test_graph_knn_leaks_no_future_and_no_test_row() -> None:
    task = TaskSpec(dataset="table", features=["f"], graph="knn", knn={"k": 3, "window": 50})
    assert task.table_graph == "knn"
    table = _table(150, timestamps=True)
    g = build_table_graph(table, task, seed=0)
    ts = np.sort(table.timestamp)  # type: ignore[arg-type]
    src, dst = g.data.edge_index.numpy()
    assert len(src) and (ts[src] < ts[dst]).all()
    # no training row hears a test row (test rows may hear earlier test rows)
    test = g.row_test_mask.numpy()
    assert test[src].any() and not (test[src] & ~test[dst]).any()

    g2 = build_table_graph(_table(150, timestamps=False), task, seed=0)
    src, dst = g2.data.edge_index.numpy()
    assert not g2.row_test_mask.numpy()[src].any() and (src != dst).all()
    assert np.bincount(dst, minlength=150).tolist() == [3] * 150
