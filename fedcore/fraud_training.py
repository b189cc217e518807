"""Local training and evaluation of fraud models (graph or row) on one site's transaction graph."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcore.config import TaskSpec, TrainingSpec
from fedcore.data.graph import FraudGraph
from fedcore.label_inputs import split_known, two_fold_logits, with_known_labels
from fedcore.metrics import binary_metrics
from fedcore.models.baseline import RowMLP
from fedcore.training import EvalStats, TrainStats, class_weight, seed_everything

log = logging.getLogger(__name__)


def _is_row_model(model: nn.Module) -> bool:
    return isinstance(model, RowMLP)


def _inputs(
    model: nn.Module, graph: FraudGraph, split: str, device: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(x, edge_index or None, y, mask)`` for the model kind and the split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; found {split!r}")
    if _is_row_model(model):
        mask = graph.row_train_mask if split == "train" else graph.row_test_mask
        return graph.row_x.to(device), None, graph.row_y.to(device), mask.to(device)
    d = graph.data
    mask = d.train_mask if split == "train" else d.test_mask
    return d.x.to(device), d.edge_index.to(device), d.y.to(device), mask.to(device)


def _forward(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor | None) -> torch.Tensor:
    out: torch.Tensor = model(x) if edge_index is None else model(x, edge_index)
    return out


def _scored(
    model: nn.Module,
    graph: FraudGraph,
    inputs: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor],
    split: str,
) -> torch.Tensor:
    """Logits of the rows of ``split``; with label inputs, filled as :mod:`fedcore.label_inputs` says.

    Test rows are scored with every training label known; training rows in two folds,
    each with only the other fold's labels known, so no row's score sees its own label.
    """
    x, edge_index, y, mask = inputs
    cols = None if edge_index is None else graph.label_cols
    if cols is None:
        return _forward(model, x, edge_index)[mask]
    train_rows = torch.nonzero(graph.data.train_mask.to(x.device), as_tuple=False).view(-1)
    if split == "test":
        return _forward(model, with_known_labels(x, y, train_rows, cols), edge_index)[mask]
    rows = torch.nonzero(mask, as_tuple=False).view(-1)
    return two_fold_logits(lambda xs: _forward(model, xs, edge_index), x, y, rows, cols)


def positive_weight(graph: FraudGraph, training: TrainingSpec) -> float:
    """:func:`fedcore.training.class_weight` of the site's train transactions (1.0 without fraud)."""
    return class_weight(graph.num_train_pos, graph.num_train, training)


def train_local(
    model: nn.Module,
    graph: FraudGraph,
    training: TrainingSpec,
    *,
    seed: int,
    epochs: int | None = None,
    device: str = "cpu",
) -> TrainStats:
    """Train ``model`` in place on the site's train transactions.

    Loss: binary cross-entropy with logits on the train transaction nodes, fraud weighted
    by :func:`positive_weight`; optimiser Adam(``training.lr``, ``training.weight_decay``),
    fresh at every call (as at the start of a federated round). Without ``batch_size``
    each epoch is one full-graph step; with it, the train transactions are shuffled into
    batches of that size and each batch takes one step with full-graph message passing
    (the site graphs are small enough, and the neighbourhoods exact).

    All RNGs are seeded with ``seed`` first, so the same seed, model and graph give the
    same weights, also in a fresh process (on the same hardware and thread count).

    Args:
        model: A ``FraudGNN`` (graph) or ``RowMLP`` (row features only).
        graph: The site graph.
        training: Learning rate, weight decay, batch size, positive weight, local epochs.
        seed: Seed for dropout and batch order.
        epochs: Epochs to run; default ``training.local_epochs``.
        device: Torch device string.

    Returns:
        Mean training loss over the last epoch, number of train transactions, seconds.
    """
    start = time.perf_counter()
    seed_everything(seed)
    n_epochs = training.local_epochs if epochs is None else epochs
    if n_epochs < 0:
        raise ValueError(f"epochs must be >= 0; found {n_epochs}")
    model.to(device)
    x, edge_index, y, mask = _inputs(model, graph, "train", device)
    idx = torch.nonzero(mask, as_tuple=False).view(-1)
    if idx.numel() == 0:
        log.warning("no train transactions at this site; skipping local training")
        return TrainStats(loss=float("nan"), num_examples=0, seconds=time.perf_counter() - start)
    pos_weight = torch.tensor(positive_weight(graph, training), device=device)
    target = y[idx].float()
    opt = torch.optim.Adam(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    label_cols = None if edge_index is None else graph.label_cols
    model.train()
    last = float("nan")
    for _ in range(n_epochs):
        x_step, pool = x, torch.arange(idx.numel(), device=device)
        if label_cols is not None:  # half the training labels are inputs, the loss on the rest
            known, pool = split_known(pool, gen)
            x_step = with_known_labels(x, y, idx[known], label_cols)
        if training.batch_size is None or training.batch_size >= pool.numel():
            batches = [pool]
        else:
            perm = pool[torch.randperm(pool.numel(), generator=gen).to(device)]
            batches = list(torch.split(perm, training.batch_size))
        total = 0.0
        for b in batches:
            opt.zero_grad()
            if edge_index is None:  # row model: score only the rows of this batch
                logits = _forward(model, x[idx[b]], None)
            else:  # graph model: full-graph message passing, loss on the batch
                logits = _forward(model, x_step, edge_index)[idx[b]]
            loss = F.binary_cross_entropy_with_logits(logits, target[b], pos_weight=pos_weight)
            torch.autograd.backward(loss)
            opt.step()
            total += float(loss.detach()) * b.numel()
        last = total / pool.numel()
        if not math.isfinite(last):
            raise FloatingPointError(
                f"training loss became {last}; lower training.lr (now {training.lr})"
            )
    seconds = time.perf_counter() - start
    log.debug(
        "trained %d epoch(s) on %d transactions: loss %.4f in %.2fs",
        n_epochs,
        idx.numel(),
        last,
        seconds,
    )
    return TrainStats(loss=last, num_examples=int(idx.numel()), seconds=seconds)


@torch.no_grad()
def predict(
    model: nn.Module, graph: FraudGraph, *, device: str = "cpu", split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Fraud probabilities and labels of the transactions of one split (``train`` or ``test``)."""
    model.to(device)
    model.eval()
    inputs = _inputs(model, graph, split, device)
    logits = _scored(model, graph, inputs, split)
    return torch.sigmoid(logits).cpu().numpy().astype(np.float64), inputs[2][
        inputs[3]
    ].cpu().numpy()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    graph: FraudGraph,
    task: TaskSpec,
    *,
    device: str = "cpu",
    split: str = "test",
    threshold: float | None = None,
) -> EvalStats:
    """Score one split of the site's transactions.

    Args:
        model: A ``FraudGNN`` or ``RowMLP``.
        graph: The site graph.
        task: Gives the decision threshold (``task.threshold``).
        device: Torch device string.
        split: ``"test"`` (the latest transactions) or ``"train"``.
        threshold: Flag scores at or above this instead of ``task.threshold``.

    Returns:
        Unweighted BCE loss, counts, :func:`fedcore.metrics.binary_metrics`, and the
        scores (probabilities) and labels themselves (which must stay at the site).
    """
    threshold = task.threshold if threshold is None else threshold
    model.to(device)
    model.eval()
    inputs = _inputs(model, graph, split, device)
    logits = _scored(model, graph, inputs, split)
    labels = inputs[2][inputs[3]]
    loss = (
        float(F.binary_cross_entropy_with_logits(logits, labels.float()))
        if labels.numel()
        else float("nan")
    )
    scores = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
    labels_np = labels.cpu().numpy().astype(np.int64)
    return EvalStats(
        loss=loss,
        num_examples=int(labels.numel()),
        num_positive=int(labels_np.sum()),
        metrics=binary_metrics(labels_np, scores, threshold),
        scores=scores,
        labels=labels_np,
        threshold=threshold,
    )
