"""Tests of the transaction graph builder and the site loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcore.config import CsvData, GeneratedData, SiteConfig, TaskSpec
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import (
    BASE_ROW_FEATURES,
    NODE_TYPES,
    FraudGraph,
    build_graph,
    feature_dim,
    merge_graphs,
    row_feature_dim,
    time_split,
)
from fedcore.data.sites import data_seed, load_site_data, load_site_transactions
from fedcore.data.transactions import DataError, Transactions

TASK = TaskSpec(features=["channel_online", "card_present", "hour_of_day", "account_age_days"])


Pair = tuple[Transactions, FraudGraph]


@pytest.fixture(scope="module")
def tx_and_graph() -> Pair:
    tx = generate_transactions(
        GeneratedData(transactions=3000, fraud_rate=0.02, customer_mix="mixed"), 11
    )
    return tx, build_graph(tx, TASK)


def test_shapes_and_dtypes(tx_and_graph: Pair) -> None:
    tx, g = tx_and_graph
    d = g.data
    n, t = d.num_nodes, len(tx)
    assert d.x.shape == (n, feature_dim(TASK)) and d.x.dtype == torch.float32
    assert d.edge_index.dtype == torch.long and d.edge_index.shape[0] == 2
    assert int(d.edge_index.max()) < n
    assert d.y.shape == (n,) and d.y.dtype == torch.long
    assert g.row_x.shape == (t, row_feature_dim(TASK)) and g.row_x.dtype == torch.float32
    assert g.row_y.shape == (t,) and g.row_train_mask.shape == (t,)
    assert torch.isfinite(d.x).all() and torch.isfinite(g.row_x).all()
    assert g.num_tx == t
    assert "FraudGraph(" in repr(g)


def test_undirected_and_typed(tx_and_graph: Pair) -> None:
    tx, g = tx_and_graph
    ei = g.data.edge_index
    fwd = set(map(tuple, ei.t().tolist()))
    assert all((b, a) in fwd for a, b in fwd)
    x = g.data.x
    types = x[:, : len(NODE_TYPES)]
    assert torch.equal(types.sum(1), torch.ones(len(x)))  # exactly one type each
    assert bool((types[: len(tx), 0] == 1).all())
    # every transaction touches its payer and payee: at least 2 neighbours
    deg = torch.bincount(ei[0], minlength=len(x))
    assert int(deg[: len(tx)].min()) >= 2
    # edges only join a transaction to an entity
    is_tx = types[:, 0] == 1
    assert bool((is_tx[ei[0]] ^ is_tx[ei[1]]).all())


def test_masks_disjoint_and_time_split(tx_and_graph: Pair) -> None:
    tx, g = tx_and_graph
    d = g.data
    assert not bool((d.train_mask & d.test_mask).any())
    t = len(tx)
    assert bool((d.train_mask[:t] | d.test_mask[:t]).all())
    assert not bool(d.train_mask[t:].any() or d.test_mask[t:].any())
    assert bool((d.y[t:] == -1).all())
    train_ts = tx.timestamp[g.row_train_mask.numpy()]
    test_ts = tx.timestamp[g.row_test_mask.numpy()]
    assert test_ts.min() > train_ts.max()
    assert g.num_test == pytest.approx(0.3 * t, abs=2)
    assert g.num_train + g.num_test == t
    assert g.num_train_pos == int(tx.label[g.row_train_mask.numpy()].sum())
    assert g.num_test_pos == int(tx.label[g.row_test_mask.numpy()].sum())
    assert torch.equal(d.train_mask[:t], g.row_train_mask)


def test_time_split_ties_go_to_test() -> None:
    ts = np.array([1.0, 2.0, 3.0, 3.0, 3.0, 4.0])
    mask = time_split(ts, 0.3)  # 2 rows wanted, but the tie at 3.0 moves the cut
    assert mask.tolist() == [False, False, True, True, True, True]


def test_features_do_not_depend_on_labels(tx_and_graph: Pair) -> None:
    tx, g = tx_and_graph
    flipped = dataclasses.replace(tx, label=1 - tx.label)
    g2 = build_graph(flipped, TASK)
    assert torch.equal(g.data.x, g2.data.x)
    assert torch.equal(g.row_x, g2.row_x)
    assert torch.equal(g.data.edge_index, g2.data.edge_index)


def test_same_feature_dim_across_sites() -> None:
    dims = set()
    for mix, n, rate in (("retail", 1500, 0.005), ("business", 2500, 0.02), ("mixed", 800, 0.01)):
        g = build_graph(
            generate_transactions(
                GeneratedData(transactions=n, fraud_rate=rate, customer_mix=mix), 3
            ),
            TASK,
        )
        dims.add(g.data.x.shape[1])
        # fixed transforms keep features on one scale at every bank
        assert float(g.data.x.abs().max()) < 20.0
    assert dims == {feature_dim(TASK)}
    assert row_feature_dim(TaskSpec()) == len(BASE_ROW_FEATURES)


def test_missing_task_feature(tx_and_graph: Pair) -> None:
    tx, _ = tx_and_graph
    with pytest.raises(DataError, match="velocity"):
        build_graph(tx, TaskSpec(features=["velocity"]))


def test_unsorted_input_is_sorted(tx_and_graph: Pair) -> None:
    tx, g = tx_and_graph
    rev = tx.take(np.arange(len(tx))[::-1])
    g2 = build_graph(rev, TASK)
    assert g2.num_test == g.num_test and g2.num_test_pos == g.num_test_pos


def test_merge_graphs(tx_and_graph: Pair) -> None:
    _, g = tx_and_graph
    m = merge_graphs([g, g])
    assert m.data.num_nodes == 2 * g.data.num_nodes
    assert m.data.edge_index.shape[1] == 2 * g.data.edge_index.shape[1]
    assert m.num_train_pos == 2 * g.num_train_pos
    assert int(m.data.train_mask.sum()) == 2 * g.num_train
    with pytest.raises(ValueError, match="at least one"):
        merge_graphs([])


def test_site_loading_seed_and_cache(tmp_path: Path) -> None:
    spec = GeneratedData(transactions=600, fraud_rate=0.02)
    a = SiteConfig(id="bank-a", data=spec, seed=1, state_dir=tmp_path)
    b = SiteConfig(id="bank-b", data=spec, seed=1)
    assert data_seed(a) == data_seed(a.model_copy()) != data_seed(b)
    assert data_seed(SiteConfig(id="x", data=spec.model_copy(update={"seed": 5}))) == 5
    assert not np.array_equal(
        load_site_transactions(a, TASK).amount, load_site_transactions(b, TASK).amount
    )
    g1 = load_site_data(a, TASK)
    cached = list((tmp_path / "cache").glob("graph-*.pt"))
    assert len(cached) == 1
    g2 = load_site_data(a, TASK)  # from the cache
    assert torch.equal(g1.data.x, g2.data.x) and torch.equal(g1.row_y, g2.row_y)
    assert g1.num_test_pos == g2.num_test_pos
    cached[0].write_bytes(b"garbage")  # a corrupt cache is rebuilt, not fatal
    assert torch.equal(load_site_data(a, TASK).data.x, g1.data.x)


def test_site_loading_csv(tmp_path: Path) -> None:
    tx = generate_transactions(GeneratedData(transactions=400, fraud_rate=0.02), 2)
    mapping = write_transactions_csv(tx, tmp_path / "bank.csv")
    cfg = SiteConfig(id="bank-z", data=CsvData(path=tmp_path / "bank.csv", columns=mapping))
    g = load_site_data(cfg, TASK)
    assert g.num_tx == 400 and g.data.x.shape[1] == feature_dim(TASK)
