"""Tests of the table graph: layout, scaling on training rows, hashing, structural inputs, label-free features."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fedcore.config import TaskSpec
from fedcore.data.table import Table
from fedcore.data.table_features import (
    STRUCTURAL_FEATURES,
    hash_buckets,
    structural_features,
    table_row_block,
)
from fedcore.data.table_graph import (
    build_table_graph,
    split_rows,
    table_feature_dim,
    table_num_types,
    table_row_dim,
    table_row_names,
)
from fedcore.data.transactions import DataError

TASK = TaskSpec(
    dataset="table",
    entities=["card", "device"],
    features=["f1", "f2"],
    categorical={"country": 4},
)


def _table(n: int = 40, seed: int = 0, timestamps: bool = True) -> Table:
    rng = np.random.default_rng(seed)
    return Table(
        label=(rng.random(n) < 0.3).astype(np.int64),
        line=np.arange(1, n + 1),
        timestamp=rng.integers(0, 1000, n).astype(np.float64) if timestamps else None,
        amount=rng.exponential(50.0, n),
        entities={
            "card": np.array([f"c{i}" for i in rng.integers(0, 6, n)], dtype=object),
            "device": np.array([f"d{i}" for i in rng.integers(0, 4, n)], dtype=object),
        },
        entity_types={"card": "card", "device": "device"},
        numeric={"f1": rng.normal(size=n), "f2": rng.normal(size=n) * 100},
        categorical={"country": np.array((["FR", "DE", "", "IT"] * n)[:n], dtype=object)},
    )


def test_layout_widths() -> None:
    # row block: 2 numeric + log_amount + has_amount + 4 buckets + 2 roles x 5 structural = 18
    assert table_row_dim(TASK) == 2 + 2 + 4 + 2 * len(STRUCTURAL_FEATURES) == 18
    assert table_num_types(TASK) == 3
    # 3 types + 18 row + 2 label inputs + 2 roles x 3 entity stats
    assert table_feature_dim(TASK) == 3 + 18 + 2 + 6 == 29
    no_labels = TASK.model_copy(update={"label_inputs": False})
    assert table_feature_dim(no_labels) == 3 + 18 + 6 == 27
    plain = TaskSpec(dataset="table", model="row-mlp", structural=False)
    assert table_row_names(plain) == ["log_amount", "has_amount"]
    assert table_feature_dim(plain) == 1 + 2
    assert table_row_names(TASK)[:5] == [
        "num.f1",
        "num.f2",
        "log_amount",
        "has_amount",
        "cat.country.0",
    ]
    assert table_row_names(TASK)[-1] == "device.mean_log_amount"


def test_graph_shapes_types_and_blocks() -> None:
    table = _table()
    g = build_table_graph(table, TASK, seed=0)
    n_card = len(set(table.entities["card"]))
    n_dev = len(set(table.entities["device"]))
    x = g.data.x
    assert x.shape == (40 + n_card + n_dev, 29)
    assert g.row_x.shape == (40, 18) and torch.isfinite(x).all()
    types = x[:, :3]
    assert torch.equal(types.sum(1), torch.ones(len(x)))
    assert torch.equal(types.argmax(1)[:40], torch.zeros(40, dtype=torch.long))
    assert (
        int((types.argmax(1) == 1).sum()) == n_card and int((types.argmax(1) == 2).sum()) == n_dev
    )
    assert torch.equal(x[:40, 3:21], g.row_x)
    assert bool((x[:40, 21:] == 0).all()) and bool((x[40:, 3:23] == 0).all())
    assert g.label_cols == 21  # the label block (columns 21, 22) stays zero as built
    assert bool((g.data.y[40:] == -1).all())
    # two roles, every row has both ids: 2 x 40 edges, both directions
    assert g.data.edge_index.shape == (2, 160)
    # time split: the 12 latest rows (30 %) are test and strictly later than train
    ts = np.sort(table.timestamp)  # type: ignore[arg-type]
    assert g.num_test == int(g.row_test_mask.sum()) >= 12
    assert ts[g.row_test_mask.numpy()].min() > ts[g.row_train_mask.numpy()].max()
    assert g.num_train + g.num_test == 40


def test_scaling_uses_training_rows_only() -> None:
    table = _table()
    train = ~split_rows(table.sorted_by_time(), 0.3, 0)
    base = table_row_block(table.sorted_by_time(), TASK, train)
    changed = table.sorted_by_time()
    f1 = changed.numeric["f1"].copy()
    test_rows = np.flatnonzero(~train)
    f1[test_rows[0]] = 1e6
    changed.numeric["f1"][:] = f1
    after = table_row_block(changed, TASK, train)
    # only the changed test row differs; every other row keeps its scaled value
    diff = np.flatnonzero(np.any(after != base, axis=1))
    assert diff.tolist() == [test_rows[0]]
    # training rows have mean 0 and std 1 on numeric columns
    assert abs(float(base[train, 0].mean())) < 1e-5
    assert abs(float(base[train, 0].std()) - 1.0) < 1e-4


def test_nan_numeric_becomes_zero() -> None:
    table = _table(timestamps=False)
    table.numeric["f1"][3] = np.nan
    block = table_row_block(table, TASK, np.ones(40, bool))
    assert block[3, 0] == 0.0 and np.isfinite(block).all()


def test_hashing_is_stable_across_processes() -> None:
    values = np.array(["FR", "DE", "", "IT", "Zürich"], dtype=object)
    here = hash_buckets(values, 16).tolist()
    code = (
        "import numpy as np; from fedcore.data.table_features import hash_buckets;"
        "print(hash_buckets(np.array(['FR','DE','','IT','Zürich'], dtype=object), 16).tolist())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {str(here)}
    # blake2b(b"FR", digest_size=8), little-endian, mod 16
    import hashlib

    expect = int.from_bytes(hashlib.blake2b(b"FR", digest_size=8).digest(), "little") % 16
    assert here[0] == expect
    assert all(0 <= h < 16 for h in here)


def _hand_table(timestamps: bool) -> Table:
    return Table(
        label=np.zeros(5, np.int64),
        line=np.arange(1, 6),
        timestamp=np.array([0.0, 10.0, 30.0, 100.0, 160.0]) if timestamps else None,
        amount=np.array([np.e - 1, 0.0, np.e**3 - 1, 5.0, 7.0]),
        entities={
            "card": np.array(["a", "b", "a", "", "a"], dtype=object),
            "device": np.array(["x", "x", "y", "x", "x"], dtype=object),
        },
    )


def test_structural_counts_with_timestamps() -> None:
    s = structural_features(_hand_table(True), ["card", "device"])
    card, dev = s[:, :5], s[:, 5:]
    # card a at rows 0, 2, 4: counts 1, 2, 3; gaps 0, 30, 130; devices seen x; x,y; x,y
    np.testing.assert_allclose(card[[0, 2, 4], 0], np.log1p([1, 2, 3]))
    np.testing.assert_allclose(card[[0, 2, 4], 1], np.log1p([0, 30, 130]))
    np.testing.assert_allclose(card[[0, 2, 4], 2], [1, 0, 0])
    np.testing.assert_allclose(card[[0, 2, 4], 3], np.log1p([1, 2, 2]))
    # mean log1p amount so far (log1p amounts of rows 0 and 2 are 1 and 3): 1, (1 + 3) / 2
    np.testing.assert_allclose(card[[0, 2], 4], [1.0, 2.0])
    assert (card[3] == 0).all()  # no card id
    # device x at rows 0, 1, 3, 4: count 1..4, gaps 0, 10, 90, 60; cards a; a,b; a,b; a,b
    np.testing.assert_allclose(dev[[0, 1, 3, 4], 0], np.log1p([1, 2, 3, 4]))
    np.testing.assert_allclose(dev[[0, 1, 3, 4], 1], np.log1p([0, 10, 90, 60]))
    np.testing.assert_allclose(dev[[0, 1, 3, 4], 3], np.log1p([1, 2, 2, 2]))
    np.testing.assert_allclose(dev[2, :4], [np.log1p(1), 0, 1, np.log1p(1)])


def test_structural_counts_without_timestamps() -> None:
    s = structural_features(_hand_table(False), ["card", "device"])
    card, dev = s[:, :5], s[:, 5:]
    # whole table: card a has 3 rows, devices {x, y}; b has 1 row (first = 1)
    np.testing.assert_allclose(card[[0, 2, 4], 0], np.log1p([3, 3, 3]))
    np.testing.assert_allclose(card[[0, 2, 4], 3], np.log1p([2, 2, 2]))
    np.testing.assert_allclose(card[:, 1], 0.0)
    np.testing.assert_allclose(card[[0, 1, 2, 4], 2], [0, 1, 0, 0])
    np.testing.assert_allclose(dev[[0, 1, 3, 4], 0], np.log1p([4] * 4))


def test_so_far_statistics_unchanged_by_later_rows() -> None:
    table = _table(60, seed=3).sorted_by_time()
    head = table.take(np.arange(40))
    full = structural_features(table, ["card", "device"])
    part = structural_features(head, ["card", "device"])
    np.testing.assert_allclose(full[:40], part)
    assert not np.allclose(full[40:], 0)


def test_labels_reach_no_feature() -> None:
    table = _table(80, seed=5)
    rng = np.random.default_rng(1)
    flipped = Table(**{**table.__dict__, "label": rng.permutation(1 - table.label)})
    for task in (TASK, TaskSpec(dataset="table", features=["f1", "f2"], graph="knn")):
        for t in (table, _table(80, seed=5, timestamps=False)):
            other = Table(**{**t.__dict__, "label": rng.permutation(1 - t.label)})
            a = build_table_graph(t, task, seed=2)
            b = build_table_graph(other, task, seed=2)
            assert torch.equal(a.data.x, b.data.x)
            assert torch.equal(a.data.edge_index, b.data.edge_index)
            assert torch.equal(a.row_test_mask, b.row_test_mask)
            assert not torch.equal(a.row_y, b.row_y)
    assert not np.array_equal(flipped.label, table.label)


def test_random_split_without_timestamps_is_seeded() -> None:
    table = _table(50, timestamps=False)
    a = split_rows(table, 0.3, seed=7)
    assert int(a.sum()) == 15
    assert np.array_equal(a, split_rows(table, 0.3, seed=7))
    assert not np.array_equal(a, split_rows(table, 0.3, seed=8))


def test_none_graph_and_errors() -> None:
    g = build_table_graph(_table(), TaskSpec(dataset="table", model="row-mlp"), seed=0)
    assert g.data.edge_index.shape == (2, 0) and g.data.x.shape == (40, 3)
    missing = TaskSpec(dataset="table", features=["nope"], entities=["card"])
    with pytest.raises(DataError, match=r"features\.nope"):
        build_table_graph(_table(), missing, seed=0)
    with pytest.raises(ValueError, match="dataset table"):
        build_table_graph(_table(), TaskSpec(), seed=0)
