"""Known labels of other rows as inputs of a graph model, never a row's own: masked label prediction (Shi et al., "Masked Label Prediction: Unified Message Passing Model for Semi-Supervised Classification", IJCAI 2021; the label trick of Wang et al., "Bag of Tricks for Node Classification with Graph Neural Networks", 2021).

A table graph built with ``task.label_inputs`` has two zero columns per node, starting at
``FraudGraph.label_cols``: ``label_known`` and ``label_fraud``. Message passing then
carries what is known about a row's neighbours (the other reviews of its user, the other
transactions of its card) to the row. Which labels are filled in:

- training step: a random half of the training rows (known), the loss on the other half
  (targets); the two halves are disjoint, so no row learns from its own label;
- scoring the test rows: every training row is known, no test row is;
- scoring the training rows (e.g. to choose an operating threshold): in two folds, each
  half scored with only the other half known.

Test labels are never filled in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def with_known_labels(
    x: torch.Tensor, y: torch.Tensor, known: torch.Tensor, label_cols: int
) -> torch.Tensor:
    """A copy of ``x`` whose label block holds the labels of the ``known`` nodes only.

    Args:
        x: Node features ``[N, F]`` (the label block zeros, as built).
        y: Labels ``[N]`` (-1 on entity nodes).
        known: Indices (long) of the nodes whose labels are inputs.
        label_cols: First column of the label block.

    Returns:
        ``[N, F]``: ``x`` with ``label_known = 1`` and ``label_fraud = y`` on ``known``,
        zeros in the label block elsewhere.
    """
    out = x.clone()
    out[:, label_cols : label_cols + 2] = 0.0
    out[known, label_cols] = 1.0
    out[known, label_cols + 1] = y[known].to(out.dtype)
    return out


def split_known(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random half of ``idx`` whose labels are inputs, and the rest, the targets (disjoint).

    Args:
        idx: Training node indices ``[n]``.
        gen: The random generator (seeded by the caller).

    Returns:
        ``(known, targets)``, together ``idx``; ``targets`` holds ``ceil(n / 2)`` nodes.
    """
    perm = idx[torch.randperm(idx.numel(), generator=gen).to(idx.device)]
    half = idx.numel() // 2
    return perm[:half], perm[half:]


def two_fold_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    label_cols: int,
) -> torch.Tensor:
    """Logits of ``rows`` (training rows), each scored with only the other fold's labels known.

    The folds are fixed (a generator seeded with 0), so the same model gives the same scores.

    Args:
        forward: ``x -> logits [N]`` (the model with its edges bound).
        x: Node features as built.
        y: Labels.
        rows: The training node indices to score, ascending.
        label_cols: First column of the label block.

    Returns:
        ``[len(rows)]`` logits in the order of ``rows``.
    """
    out = torch.empty(rows.numel(), dtype=x.dtype, device=x.device)
    pos = torch.arange(rows.numel(), device=rows.device)
    gen = torch.Generator().manual_seed(0)
    first, second = split_known(pos, gen)
    for known, scored in ((first, second), (second, first)):
        logits = forward(with_known_labels(x, y, rows[known], label_cols))
        out[scored] = logits[rows[scored]]
    return out
