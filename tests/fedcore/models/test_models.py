"""Tests of the fraud GNN and the non-graph baseline model."""

from __future__ import annotations

import pytest
import torch

from fedcore.config import TaskSpec
from fedcore.models.baseline import RowMLP, build_row_model
from fedcore.models.fraud_gnn import FraudGNN, build_model


def _graph(n: int = 10, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, dim)
    src = torch.arange(n - 1)
    ei = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
    return x, ei


def test_fraud_gnn_repr_and_shapes() -> None:
    model = FraudGNN(8, hidden=16, layers=3, dropout=0.2)
    assert repr(model) == "FraudGNN(8, hidden=16, layers=3, dropout=0.2)"
    x, ei = _graph()
    out = model(x, ei)
    assert out.shape == (10,)
    assert model.embed(x, ei).shape == (10, 16)
    assert len(model.convs) == 3


def test_fraud_gnn_reset_parameters_and_eval_determinism() -> None:
    torch.manual_seed(0)
    model = FraudGNN(8)
    x, ei = _graph()
    model.eval()
    a = model(x, ei)
    assert torch.equal(a, model(x, ei))
    model.reset_parameters()
    assert not torch.equal(a, model(x, ei))


def test_fraud_gnn_inductive_on_other_graph_sizes() -> None:
    model = FraudGNN(8, hidden=4)
    for n in (2, 7, 31):
        x, ei = _graph(n)
        assert model(x, ei).shape == (n,)


def test_fraud_gnn_bad_input() -> None:
    model = FraudGNN(8)
    x, ei = _graph(dim=5)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        model(x, ei)
    with pytest.raises(ValueError, match="dropout"):
        FraudGNN(8, dropout=1.5)
    with pytest.raises(ValueError, match="layers"):
        FraudGNN(8, layers=0)


def test_build_model_uses_task() -> None:
    task = TaskSpec(hidden=12, layers=1, dropout=0.0)
    model = build_model(task, 20)
    assert isinstance(model, FraudGNN)
    assert repr(model) == "FraudGNN(20, hidden=12, layers=1, dropout=0.0)"


def test_row_model() -> None:
    model = build_row_model(6)
    assert isinstance(model, RowMLP)
    assert repr(model) == "RowMLP(6, hidden=32, dropout=0.0)"
    assert model(torch.randn(5, 6)).shape == (5,)
    logreg = RowMLP(6, hidden=0)
    assert logreg(torch.randn(3, 6)).shape == (3,)
    with pytest.raises(ValueError, match=r"\[T, 6\]"):
        model(torch.randn(5, 4))
