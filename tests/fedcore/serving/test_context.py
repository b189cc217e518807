"""Scoring in the context of the site's history: exact against offline scoring, and `fed-client predict` with it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcore.cli.client_cmd import app as client_app
from fedcore.config import GeneratedData, HistorySpec, TaskSpec, TrainingSpec
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import GENERATED_FEATURES, generate_transactions
from fedcore.data.graph import build_graph, feature_dim
from fedcore.data.transactions import Transactions
from fedcore.export import CPU_PROVIDER, export_for_site
from fedcore.export.layered import scoring_batch
from fedcore.export.onnx_export import ExportError, ort_session, run_session
from fedcore.fraud_training import train_local
from fedcore.models.fraud_gnn import build_model
from fedcore.serving.context import ContextScorer, ServingInputError
from fedcore.serving.history import HistoryStore, history_path
from fedcore.training import seed_everything

TASK = TaskSpec(hidden=16, layers=2, features=list(GENERATED_FEATURES))
HISTORY = 5000
ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def bank() -> Transactions:
    return generate_transactions(GeneratedData(transactions=6000, fraud_rate=0.03, days=30), seed=4)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, bank: Transactions) -> Path:
    """A site's state: a trained model exported (static INT8) to STATE/export/run1, its first 5,000 rows as history."""
    state = tmp_path_factory.mktemp("state")
    graph = build_graph(bank.take(np.arange(HISTORY)), TASK)
    seed_everything(0)
    model = build_model(TASK, feature_dim(TASK))
    train_local(model, graph, TrainingSpec(lr=0.02), seed=0, epochs=40)
    export_for_site(
        model.eval(),
        graph,
        state / "export" / "run1",
        task=TASK,
        providers=[CPU_PROVIDER],
        tolerance=1.0,
        latency_runs=1,
        mode="static",  # what a site exports by default (export.quantization)
    )
    with HistoryStore.open(history_path(state), TASK.features, HistorySpec()) as store:
        store.append(bank.take(np.arange(HISTORY)))
    return state


def _row(bank: Transactions, i: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tx_id": str(bank.tx_id[i]),
        "payer": str(bank.payer[i]),
        "payee": str(bank.payee[i]),
        "merchant": str(bank.merchant[i]),
        "device": str(bank.device[i]),
        "amount": float(bank.amount[i]),
        "timestamp": float(bank.timestamp[i]),
    }
    row.update({f: float(bank.features[f][i]) for f in TASK.features})
    return row


def _offline(site: Path, bank: Transactions, upto: int, targets: list[int]) -> np.ndarray:
    """The graph of every row before ``upto``, scored at ``targets`` with the served model."""
    session = ort_session(site / "export" / "run1" / "model.int8.onnx")
    graph = build_graph(bank.take(np.arange(upto)), TASK)
    logits = run_session(session, scoring_batch(graph, TASK.layers, np.array(targets)).feed())
    return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))


def test_scores_in_context_equal_offline_scoring_of_the_same_history(
    site: Path, bank: Transactions, tmp_path: Path
) -> None:
    scorer = ContextScorer.open(site / "export" / "run1", site)
    try:
        assert scorer.history_size == HISTORY
        worst = 0.0
        for i in range(HISTORY, HISTORY + 40):  # one by one, as they arrive
            out = scorer.score([_row(bank, i)])
            if i % 8 == 0:
                worst = max(worst, float(abs(out.score[0] - _offline(site, bank, i + 1, [i])[0])))
        batch = list(range(HISTORY + 40, HISTORY + 140))
        out = scorer.score([_row(bank, i) for i in batch])
        worst = max(
            worst, float(np.abs(out.score - _offline(site, bank, batch[-1] + 1, batch)).max())
        )
        assert worst < 1e-6, worst
        assert out.tx_id == [str(bank.tx_id[i]) for i in batch]
        assert np.array_equal(out.flagged, out.score >= scorer.threshold)
        assert scorer.history_size == HISTORY + 140
        # score only: the window is as it was
        peek = scorer.score([_row(bank, HISTORY + 200)], append=False)
        assert scorer.history_size == HISTORY + 140 and peek.score.shape == (1,)
        # a label that arrives later is matched with the score served
        assert scorer.record_label(str(bank.tx_id[HISTORY + 3]), 1) is not None
        assert scorer.record_label("never-seen", 0) is None
    finally:
        scorer.close()
    with HistoryStore.open(history_path(site), TASK.features, HistorySpec()) as store:
        assert store.count() == HISTORY + 140
        stored = store.load()
    assert stored.label[list(stored.tx_id).index(str(bank.tx_id[HISTORY + 3]))] == 1
    with HistoryStore.open(history_path(site), TASK.features, HistorySpec()) as store:
        # put the site back as the other tests expect it
        store._conn.execute("DELETE FROM transactions WHERE seq > ?", (HISTORY,))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": "12"}, "field 'amount' expected a finite amount >= 0, found str"),
        ({"amount": -3.0}, "found -3.0"),
        ({"payer": ""}, "field 'payer' is missing"),
        ({"timestamp": "yesterday"}, "'yesterday' is not ISO-8601"),
        ({"card_present": None}, "field 'card_present' is missing"),
        ({"device": ["x"]}, "field 'device' expected an id (string), found list"),
        ({"payee": "p" * 300}, "ids are at most 256"),
        ({"timestamp": "2099-01-01T00:00:00Z"}, "more than a day past this machine's clock"),
        ({"timestamp": 1e300}, "is 1e+300 (UNIX seconds), more than a day past"),
        ({"timestamp": -1e300}, "before 1970-01-01"),
    ],
)
def test_a_bad_transaction_is_refused_and_nothing_is_kept(
    site: Path, bank: Transactions, change: dict[str, Any], message: str
) -> None:
    scorer = ContextScorer.open(site / "export" / "run1", site)
    try:
        good = _row(bank, HISTORY)
        bad = {**_row(bank, HISTORY + 1), **change}
        with pytest.raises(ServingInputError, match="transaction 1: ") as info:
            scorer.score([good, bad])
        assert message in str(info.value)
        assert scorer.history_size == HISTORY
        iso = {**good, "timestamp": "2026-01-05T10:00:00Z"}  # ISO times are read as UTC
        assert scorer.score([iso], append=False).score.shape == (1,)
    finally:
        scorer.store.close()


def test_a_changed_model_is_refused_and_reload_keeps_the_old_one(
    site: Path, tmp_path: Path
) -> None:
    import shutil

    scorer = ContextScorer.open(site / "export" / "run1", site)
    try:
        copy = tmp_path / "run2"
        shutil.copytree(site / "export" / "run1", copy)
        model = copy / "model.int8.onnx"
        model.write_bytes(model.read_bytes()[:-4] + b"\0\0\0\0")
        with pytest.raises(ExportError, match="does not match its manifest"):
            scorer.reload(copy)
        assert scorer.model.file == site / "export" / "run1" / "model.int8.onnx"
        with pytest.raises(ExportError, match="does not match its manifest"):
            ContextScorer.open(copy, site)
        # the FP32 model beside it serves the same computation, for comparison
        fp32 = ContextScorer.open(site / "export" / "run1" / "model.fp32.onnx", site)
        assert fp32.model.file.name == "model.fp32.onnx"
        fp32.store.close()
    finally:
        scorer.store.close()


def _scores(path: Path) -> dict[str, tuple[float, int]]:
    with open(path, newline="") as fh:
        return {r["tx_id"]: (float(r["score"]), int(r["flagged"])) for r in csv.DictReader(fh)}


def _predict(*args: str) -> str:
    res = CliRunner().invoke(client_app, ["predict", *args], env=ENV)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_predict_with_history_flags_what_the_full_file_flags(
    site: Path, bank: Transactions, tmp_path: Path
) -> None:
    export = str(site / "export" / "run1")
    full, last = tmp_path / "full.csv", tmp_path / "last.csv"
    write_transactions_csv(bank, full)
    write_transactions_csv(bank.take(np.arange(HISTORY, len(bank))), last)
    threshold = "0.5"
    _predict("--model", export, "--input", str(full), "--no-history", "--threshold", threshold)
    inside = _scores(full.with_suffix(".scores.csv"))
    said = _predict("--model", export, "--input", str(last), "--threshold", threshold)
    assert "in the context of the site history" in said
    assert f"{HISTORY} transactions in {history_path(site)}" in said
    with_history = _scores(last.with_suffix(".scores.csv"))
    ids = [str(t) for t in bank.tx_id[HISTORY:]]
    flags_inside = [inside[t][1] for t in ids]
    flags_history = [with_history[t][1] for t in ids]
    diff = max(abs(inside[t][0] - with_history[t][0]) for t in ids)
    assert sum(flags_inside) > 0
    assert flags_history == flags_inside, (sum(flags_history), sum(flags_inside), diff)
    # static INT8: a transaction's score does not depend on which others share its call
    assert diff < 1e-5, diff
    # the same file alone, without its accounts' history, flags other transactions
    alone_out = tmp_path / "alone.csv"
    _predict(
        "--model",
        export,
        "--input",
        str(last),
        "--no-history",
        "--threshold",
        threshold,
        "--out",
        str(alone_out),
    )
    alone = _scores(alone_out)
    assert [alone[t][1] for t in ids] != flags_inside


def test_static_int8_scores_do_not_depend_on_the_other_transactions_of_a_call(
    site: Path, bank: Transactions
) -> None:
    """Why sites export static INT8 by default: dynamic INT8 scales each call's activations."""
    from fedcore.export.quantize import quantize_dynamic_int8
    from fedcore.export.site import FP32_ONNX, INT8_ONNX

    export = site / "export" / "run1"
    graph = build_graph(bank, TASK)
    alone, inside = np.arange(HISTORY, HISTORY + 200), np.arange(len(bank))
    spread = {}
    for name, path in (("static", export / INT8_ONNX), ("dynamic", export / "dynamic.onnx")):
        if name == "dynamic":
            quantize_dynamic_int8(export / FP32_ONNX, path)
        session = ort_session(path)
        few = run_session(session, scoring_batch(graph, TASK.layers, alone).feed())
        every = run_session(session, scoring_batch(graph, TASK.layers, inside).feed())[alone]
        spread[name] = float(np.abs(1 / (1 + np.exp(-few)) - 1 / (1 + np.exp(-every))).max())
        if name == "dynamic":
            path.unlink()
    assert spread["static"] < 1e-6 and spread["dynamic"] > 1e-3, spread
