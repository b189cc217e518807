"""Label inputs of table graph models: other rows' known labels in, a row's own label never, test labels never."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedcore import fraud_training, tasks
from fedcore.config import TaskSpec, TrainingSpec
from fedcore.data.graph import FraudGraph
from fedcore.data.table import Table
from fedcore.data.table_graph import build_table_graph
from fedcore.label_inputs import split_known, with_known_labels

TASK = TaskSpec(dataset="table", entities=["user", "shop"], hidden=8)


def _graph(task: TaskSpec = TASK, seed: int = 0) -> FraudGraph:
    """60 users with 4 reviews each, at 4 of 20 shops; every user and every shop looks alike
    (same counts, same number of distinct partners), and users 0-11 write fraud: only the
    labels of a user's other reviews can tell."""
    user = np.repeat(np.arange(60), 4)
    shop = (user + 15 * np.tile(np.arange(4), 60)) % 20
    return build_table_graph(
        Table(
            label=(user < 12).astype(np.int64),
            line=np.arange(1, len(user) + 1),
            entities={
                "user": np.array([f"u{u}" for u in user], dtype=object),
                "shop": np.array([f"s{v}" for v in shop], dtype=object),
            },
            entity_types={"user": "user", "shop": "item"},
        ),
        task,
        seed=seed,
    )


def _trained(graph: FraudGraph, task: TaskSpec = TASK) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tasks.build(task)
    fraud_training.train_local(model, graph, TrainingSpec(local_epochs=30, lr=0.05), seed=1)
    return model


def test_known_labels_fill_only_the_known_rows_and_leave_x_as_built() -> None:
    x = torch.zeros(5, 4)
    y = torch.tensor([1, 0, 1, -1, -1])
    out = with_known_labels(x, y, torch.tensor([0, 1]), 2)
    assert out[:, 2].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert out[:, 3].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert bool((x == 0).all())  # the caller's tensor is unchanged


def test_known_and_target_halves_are_disjoint_and_cover_the_training_rows() -> None:
    idx = torch.arange(3, 104)
    known, targets = split_known(idx, torch.Generator().manual_seed(4))
    assert set(known.tolist()).isdisjoint(targets.tolist())
    assert sorted([*known.tolist(), *targets.tolist()]) == idx.tolist()
    assert targets.numel() == 51 and known.numel() == 50


def test_no_training_step_sees_the_label_of_a_row_it_learns_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = _graph()
    assert graph.label_cols is not None
    cols = graph.label_cols
    halves: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: list[torch.Tensor] = []

    def spy_split(idx: torch.Tensor, gen: torch.Generator) -> Any:
        known, targets = split_known(idx, gen)
        halves.append((known, targets))
        return known, targets

    monkeypatch.setattr(fraud_training, "split_known", spy_split)
    model = tasks.build(TASK)
    forward = model.forward

    def spy_forward(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        seen.append(x[:, cols].clone())
        return forward(x, edge_index)

    monkeypatch.setattr(model, "forward", spy_forward)
    fraud_training.train_local(model, graph, TrainingSpec(local_epochs=3), seed=2)
    train_rows = torch.nonzero(graph.data.train_mask).view(-1)
    assert len(halves) == len(seen) == 3
    for (known, targets), flags in zip(halves, seen, strict=True):
        given = set(torch.nonzero(flags).view(-1).tolist())
        assert given == set(train_rows[known].tolist())  # exactly the known half is filled
        assert given.isdisjoint(train_rows[targets].tolist())  # never a loss target's own label
        assert given <= set(train_rows.tolist())  # never a test row's label


def test_test_scores_do_not_depend_on_test_labels() -> None:
    graph = _graph()
    model = _trained(graph)
    scores, labels = fraud_training.predict(model, graph, split="test")
    test = graph.data.test_mask
    graph.data.y[test] = 1 - graph.data.y[test]  # every test label flipped
    flipped, _ = fraud_training.predict(model, graph, split="test")
    assert np.array_equal(scores, flipped)
    assert labels.sum() > 0  # the test rows hold fraud: the check is not vacuous


def test_a_training_row_is_scored_without_its_own_label() -> None:
    graph = _graph()
    model = _trained(graph)
    before, _ = fraud_training.predict(model, graph, split="train")
    row = int(torch.nonzero(graph.data.train_mask).view(-1)[0])
    graph.data.y[row] = 1 - graph.data.y[row]
    after, _ = fraud_training.predict(model, graph, split="train")
    assert after[0] == before[0]  # its own score: unchanged
    assert not np.array_equal(after, before)  # others see it: the labels do flow


def test_labels_of_neighbours_carry_the_signal() -> None:
    with_labels = _graph()
    ev = fraud_training.evaluate(_trained(with_labels), with_labels, TASK)
    blind_task = TASK.model_copy(update={"label_inputs": False})
    blind = _graph(blind_task)
    ev_blind = fraud_training.evaluate(_trained(blind, blind_task), blind, blind_task)
    # nothing but the other reviews' labels sets a fraud user apart
    assert ev.metrics["roc_auc"] > 0.9
    assert ev_blind.metrics["roc_auc"] < 0.7
