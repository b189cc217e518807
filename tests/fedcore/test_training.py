"""Tests of local training, evaluation, weight exchange and the baselines."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedcore.baselines import derive_seed, evaluate_per_site, run_baselines
from fedcore.config import GeneratedData, Scenario, TaskSpec, TrainingSpec
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import FraudGraph, build_graph, feature_dim, row_feature_dim
from fedcore.fraud_training import evaluate, positive_weight, train_local
from fedcore.models.baseline import build_row_model
from fedcore.models.fraud_gnn import FraudGNN, build_model
from fedcore.training import load_arrays, model_to_arrays, seed_everything

TASK = TaskSpec(
    hidden=16, dropout=0.1, features=["channel_online", "card_present", "account_age_days"]
)
TRAINING = TrainingSpec(local_epochs=3, lr=0.02)


@pytest.fixture(scope="module")
def graph() -> FraudGraph:
    tx = generate_transactions(
        GeneratedData(transactions=2500, fraud_rate=0.02, customer_mix="mixed"), 4
    )
    return build_graph(tx, TASK)


def _model(seed: int = 0) -> FraudGNN:
    seed_everything(seed)
    model = build_model(TASK, feature_dim(TASK))
    assert isinstance(model, FraudGNN)
    return model


def test_arrays_round_trip() -> None:
    a, b = _model(0), _model(1)
    arrays = model_to_arrays(a)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in arrays.values())
    arrays["convs.0.lin_l.weight"][0, 0] += 0  # copies: editing them leaves the model alone
    load_arrays(b, arrays)
    for k, v in model_to_arrays(b).items():
        assert np.array_equal(v, arrays[k])
    arrays["head.bias"][0] = 123.0
    assert float(a.head.bias.detach()[0]) != 123.0


def test_load_arrays_errors_name_the_key() -> None:
    model = _model()
    arrays = model_to_arrays(model)
    before = model_to_arrays(model)
    bad = dict(arrays)
    bad["head.weight"] = np.zeros((1, 99), np.float32)
    with pytest.raises(ValueError, match=r"'head.weight' has shape \(1, 99\).*expects \(1, 16\)"):
        load_arrays(model, bad)
    missing = {k: v for k, v in arrays.items() if k != "head.bias"}
    with pytest.raises(ValueError, match="missing \\['head.bias'\\]"):
        load_arrays(model, missing)
    with pytest.raises(ValueError, match="extra \\['junk'\\]"):
        load_arrays(model, {**arrays, "junk": np.zeros(1)})
    nan = dict(arrays)
    nan["head.bias"] = np.array([np.nan], np.float32)
    with pytest.raises(ValueError, match="'head.bias' holds non-finite"):
        load_arrays(model, nan)
    after = model_to_arrays(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # unchanged


def test_train_local_deterministic(graph: FraudGraph) -> None:
    results = []
    for _ in range(2):
        model = _model(3)
        stats = train_local(model, graph, TRAINING, seed=42)
        results.append((model_to_arrays(model), stats))
    (w1, s1), (w2, s2) = results
    assert s1.loss == s2.loss
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    other = _model(3)
    train_local(other, graph, TRAINING, seed=43)
    assert not all(np.array_equal(w1[k], v) for k, v in model_to_arrays(other).items())


def test_train_local_stats_and_loss_decreases(graph: FraudGraph) -> None:
    model = _model()
    first = train_local(model, graph, TRAINING, seed=0, epochs=1)
    later = train_local(model, graph, TRAINING, seed=1, epochs=25)
    assert first.num_examples == later.num_examples == graph.num_train
    assert later.loss < first.loss
    assert later.seconds > 0


def test_train_local_mini_batches(graph: FraudGraph) -> None:
    training = TRAINING.model_copy(update={"batch_size": 512})
    model = _model()
    stats = train_local(model, graph, training, seed=0, epochs=2)
    assert stats.num_examples == graph.num_train and math.isfinite(stats.loss)


def test_positive_weight(graph: FraudGraph) -> None:
    neg = graph.num_train - graph.num_train_pos
    assert positive_weight(graph, TRAINING) == pytest.approx(math.sqrt(neg / graph.num_train_pos))
    assert positive_weight(graph, TRAINING.model_copy(update={"pos_weight": 3.0})) == 3.0


def test_evaluate(graph: FraudGraph) -> None:
    model = _model()
    train_local(model, graph, TRAINING, seed=0, epochs=30)
    ev = evaluate(model, graph, TASK)
    assert ev.num_examples == graph.num_test and ev.num_positive == graph.num_test_pos
    assert ev.scores.shape == ev.labels.shape == (graph.num_test,)
    assert ((ev.scores >= 0) & (ev.scores <= 1)).all()
    assert set(ev.metrics) >= {"pr_auc", "roc_auc", "f1", "precision", "recall", "fpr"}
    assert ev.metrics["roc_auc"] > 0.7  # learns something real
    train = evaluate(model, graph, TASK, split="train")
    assert train.num_examples == graph.num_train
    with pytest.raises(ValueError, match="split"):
        evaluate(model, graph, TASK, split="val")


def test_row_model_trains_on_rows(graph: FraudGraph) -> None:
    seed_everything(0)
    model = build_row_model(row_feature_dim(TASK))
    stats = train_local(model, graph, TRAINING, seed=0, epochs=5)
    assert stats.num_examples == graph.num_train
    assert evaluate(model, graph, TASK).num_examples == graph.num_test


def test_baselines_and_per_site(graph: FraudGraph) -> None:
    tx = generate_transactions(
        GeneratedData(transactions=1500, fraud_rate=0.02, customer_mix="retail"), 9
    )
    graphs = {"bank-a": graph, "bank-b": build_graph(tx, TASK)}
    scenario = Scenario.model_validate(
        {
            "name": "t",
            "seed": 3,
            "sites": [{"id": s, "data": {"kind": "generated"}} for s in graphs],
            "task": TASK.model_dump(),
            "training": TRAINING.model_dump(),
            "baselines": {"non_graph": False},
        }
    )
    out = run_baselines(graphs, scenario, epochs=4)
    assert set(out) == {"local_only", "centralized", "seconds"}
    assert set(out["local_only"]["per_site"]) == set(graphs)
    assert out["local_only"]["mean"]["num_test"] == sum(g.num_test for g in graphs.values())
    cent = out["centralized"]
    assert cent["num_test"] == sum(g.num_test for g in graphs.values()) and "per_site" in cent
    again = run_baselines(graphs, scenario, epochs=4)
    assert again["centralized"]["pr_auc"] == cent["pr_auc"]  # seeded: reproducible

    model = FraudGNN(feature_dim(TASK), hidden=16)
    res = evaluate_per_site(model, graphs, TASK)
    assert set(res) == {"per_site", "pooled", "mean"}
    pr = [m["pr_auc"] for m in res["per_site"].values()]
    assert res["mean"]["pr_auc"] == pytest.approx(float(np.nanmean(pr)))
    assert derive_seed(1, "a") == derive_seed(1, "a") != derive_seed(1, "b")


_FRESH = """
import hashlib, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from fedcore.config import GeneratedData, TaskSpec, TrainingSpec
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import build_graph, feature_dim
from fedcore.models.fraud_gnn import build_model
from fedcore.fraud_training import train_local
from fedcore.training import model_to_arrays, seed_everything
task = TaskSpec.model_validate_json(sys.argv[2])
training = TrainingSpec.model_validate_json(sys.argv[3])
g = build_graph(generate_transactions(GeneratedData(transactions=800, fraud_rate=0.02), 1), task)
seed_everything(0)
model = build_model(task, feature_dim(task))
train_local(model, g, training, seed=7)
h = hashlib.sha256()
for k, v in sorted(model_to_arrays(model).items()):
    h.update(k.encode() + v.tobytes())
print(h.hexdigest())
"""


def _digest_here() -> str:
    g = build_graph(
        generate_transactions(GeneratedData(transactions=800, fraud_rate=0.02), 1), TASK
    )
    model = _model(0)
    train_local(model, g, TRAINING, seed=7)
    h = hashlib.sha256()
    for k, v in sorted(model_to_arrays(model).items()):
        h.update(k.encode() + v.tobytes())
    return h.hexdigest()


def test_train_local_deterministic_in_fresh_process() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH,
            str(torch.get_num_threads()),
            TASK.model_dump_json(),
            TRAINING.model_dump_json(),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == _digest_here()
