"""The history window and the neighbourhood it cuts give exactly what build_graph gives on the window's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.config import GeneratedData, HistorySpec, TaskSpec
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import build_graph
from fedcore.data.transactions import Transactions
from fedcore.export.layered import ScoringBatch, scoring_batch
from fedcore.serving.history import HistoryError, HistoryStore, history_path, window_start
from fedcore.serving.subgraph import neighbourhood
from fedcore.serving.window import Window

FEATURES = ["card_present"]
TASK = TaskSpec(features=FEATURES)
NO_LIMIT = HistorySpec(days=None, transactions=10**9)
EXACT = 10**9  # no hubs: every entity's rows are read, bit for bit as build_graph


@pytest.fixture(scope="module")
def bank() -> Transactions:
    return generate_transactions(GeneratedData(transactions=2400, days=20), seed=5)


def _same(a: ScoringBatch, b: ScoringBatch) -> bool:
    """Bit for bit the same model inputs (rows, neighbour chunks, degrees)."""
    return (
        a.x.shape == b.x.shape
        and np.array_equal(a.x, b.x)
        and all(np.array_equal(p, q) for p, q in zip(a.nbr, b.nbr, strict=True))
        and all(np.array_equal(p, q) for p, q in zip(a.ptr, b.ptr, strict=True))
        and all(np.array_equal(p, q) for p, q in zip(a.deg_inv, b.deg_inv, strict=True))
    )


def _reference(bank: Transactions, win: Window, rows: list[int], layers: int) -> ScoringBatch:
    """What build_graph on the window's rows gives for these window rows."""
    order = win.order()
    index = {str(t): i for i, t in enumerate(bank.tx_id.tolist())}
    ids = [win.tx_id[r] for r in order.tolist()]
    graph = build_graph(bank.take(np.array([index[i] for i in ids])), TASK)
    where = {r: k for k, r in enumerate(order.tolist())}
    return scoring_batch(graph, layers, np.array([where[r] for r in rows]))


def _mine(win: Window, rows: list[int], layers: int) -> ScoringBatch:
    nb = neighbourhood(win, np.array(rows), layers)
    return scoring_batch((nb.x, nb.edge_index), layers, nb.targets)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_rows_added_one_by_one_get_build_graphs_inputs(bank: Transactions, layers: int) -> None:
    win = Window.from_transactions(bank.take(np.arange(2000)), FEATURES, NO_LIMIT, hub=EXACT)
    # a loaded row first, then new rows as they arrive
    assert _same(_mine(win, [1990, 7], layers), _reference(bank, win, [1990, 7], layers))
    for i in range(2000, 2060):
        (row,) = win.add(bank.take(np.array([i])))
        if i % 6 == 0:
            assert _same(_mine(win, [row], layers), _reference(bank, win, [row], layers)), i
    rows = win.add(bank.take(np.arange(2060, 2160)))
    assert _same(_mine(win, rows, layers), _reference(bank, win, rows, layers))


@pytest.mark.parametrize(
    "spec",
    [
        HistorySpec(days=5),
        HistorySpec(days=None, transactions=1200),
        HistorySpec(days=4, transactions=1500),
    ],
)
def test_evicted_and_late_rows_keep_the_features_exact(
    bank: Transactions, spec: HistorySpec
) -> None:
    win = Window.from_transactions(bank.take(np.arange(1600)), FEATURES, spec, hub=EXACT)
    win.evict()
    stream = np.arange(1600, 2400)
    rng = np.random.default_rng(1)
    for lo in range(0, len(stream), 8):  # arrivals out of order within a few transactions
        rng.shuffle(stream[lo : lo + 8])
    win.COMPACT_AT = 1000  # compaction happens too
    sizes = []
    for j, i in enumerate(stream.tolist()):
        (row,) = win.add(bank.take(np.array([i])))
        if j % 40 == 0:
            assert _same(_mine(win, [row], 2), _reference(bank, win, [row], 2)), (spec, j)
        win.evict()
        sizes.append(win.size)
    # the window is what its bounds say: newest time minus days, at most the count
    ts = win.ts[win.order()]
    if spec.days is not None:
        assert ts.min() >= win.newest - spec.days * 86_400
    if spec.transactions is not None:
        assert win.alive_count <= spec.transactions
    assert win.alive_count < 2400 and min(sizes) < max(sizes)  # rows left, memory came back


def test_a_row_added_then_removed_leaves_the_window_as_it_was(bank: Transactions) -> None:
    win = Window.from_transactions(bank.take(np.arange(1500)), FEATURES, NO_LIMIT)
    ctx = win.ctx[: win.size].copy()
    rows = win.add(bank.take(np.arange(1500, 1600)))
    assert win.alive_count == 1600 and not np.array_equal(ctx, win.ctx[:1500])
    for r in reversed(rows):
        win.remove(r)
    assert win.alive_count == 1500 and np.array_equal(ctx, win.ctx[:1500])
    assert all(len(lst) == len(set(lst)) for lst in win.out_rows)


def test_a_known_transaction_id_is_not_added_twice(bank: Transactions) -> None:
    win = Window.from_transactions(bank.take(np.arange(100)), FEATURES, NO_LIMIT)
    again = win.add(bank.take(np.array([5, 100, 100])))
    assert again == [5, 100, 100] and win.alive_count == 101


def test_window_start_takes_the_tighter_bound() -> None:
    ts = np.arange(0.0, 10 * 86_400.0, 86_400.0)  # one row a day for ten days
    assert window_start(ts, HistorySpec(days=3)) == 6  # days 6..9 are within 3 days of day 9
    assert window_start(ts, HistorySpec(days=None, transactions=2)) == 8
    assert window_start(ts, HistorySpec(days=3, transactions=2)) == 8
    assert window_start(ts, HistorySpec(days=30, transactions=5)) == 5


def test_history_store_round_trip_and_window(tmp_path: Path, bank: Transactions) -> None:
    spec = HistorySpec(days=10)
    path = history_path(tmp_path, spec)
    assert path == tmp_path / "history" / "history.sqlite"
    labels = bank.label.copy()
    labels[::3] = -1  # unknown labels are kept as unknown
    with HistoryStore.open(path, FEATURES, spec) as store:
        assert store.append(bank, labels=labels) > 0
        assert store.append(bank.take(np.arange(2390, 2400))) == 0  # known ids: not again
        assert store.append(bank.take(np.arange(10))) == 0  # older than the window: not kept
        loaded = store.load()
        store.set_labels({str(loaded.tx_id[0]): 1})
    newest = float(bank.timestamp.max())
    keep = bank.timestamp >= newest - 10 * 86_400
    assert len(loaded) == int(keep.sum())
    assert loaded.tx_id.tolist() == bank.tx_id[keep].tolist()
    assert np.array_equal(loaded.features["card_present"], bank.features["card_present"][keep])
    assert np.array_equal(loaded.label, labels[keep])
    with HistoryStore.open(path, FEATURES, spec) as store:
        assert store.load().label[0] == 1 and store.count() == len(loaded)


def test_a_history_for_other_features_is_refused_with_the_fix(
    tmp_path: Path, bank: Transactions
) -> None:
    path = tmp_path / "h.sqlite"
    HistoryStore.open(path, FEATURES, NO_LIMIT).close()
    with pytest.raises(HistoryError, match=r"features \['card_present'\]; the model takes"):
        HistoryStore.open(path, ["channel_online"], NO_LIMIT)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(HistoryError, match="not an SQLite database"):
        HistoryStore.open(junk, FEATURES, NO_LIMIT)


def test_a_history_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="history needs a bound"):
        HistorySpec(days=None, transactions=None)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_hubs_read_as_running_sums_score_as_build_graph_does(
    bank: Transactions, layers: int
) -> None:
    """Entities with 20+ rows become hubs: scores agree with the whole graph's to float32 rounding."""
    import torch

    from fedcore.export.layered import LayeredGNN
    from fedcore.models.fraud_gnn import build_model
    from fedcore.training import seed_everything

    task = TaskSpec(features=FEATURES, hidden=16, layers=layers)
    seed_everything(0)
    gnn = LayeredGNN.from_model(
        build_model(task, int(build_graph(bank.take(np.arange(10)), task).data.x.shape[1]))
    )

    def logits(batch: ScoringBatch) -> np.ndarray:
        with torch.no_grad():
            return gnn(*batch.tensors()).numpy().astype(np.float64)

    win = Window.from_transactions(
        bank.take(np.arange(1600)), FEATURES, HistorySpec(days=6), hub=20
    )
    assert sum(len(h) for h in win.hubs.of.values()) > 10
    worst, compared, fewer = 0.0, 0, 0
    for i in range(1600, 2000):
        rows = win.add(bank.take(np.array([i])))
        win.evict()
        if i % 25 == 0:
            mine, ref = _mine(win, rows, layers), _reference(bank, win, rows, layers)
            fewer += len(mine.x) < len(ref.x)  # a hub's rows were not read
            worst = max(worst, float(np.abs(logits(mine) - logits(ref)).max()))
            compared += 1
    rows = win.add(bank.take(np.arange(2000, 2100)))
    worst = max(
        worst,
        float(
            np.abs(
                logits(_mine(win, rows, layers)) - logits(_reference(bank, win, rows, layers))
            ).max()
        ),
    )
    assert compared == 16 and worst < 1e-4, worst
    assert fewer > 0 or layers != 2
