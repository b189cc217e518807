"""Non-graph fraud baseline: a small MLP on per-transaction row features only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RowMLP(nn.Module):
    r"""Two-layer perceptron scoring each transaction from its own row features.

    It sees exactly the row features a GNN transaction node starts from (amount, time,
    channel, card presence, account age, ...), but nothing about the accounts, devices
    and merchants around it, which is what a graph model adds.

    Args:
        in_dim: Row feature width (``fedcore.data.graph.row_feature_dim(task)``).
        hidden: Hidden width (default: ``32``); ``0`` gives logistic regression.
        dropout: Dropout after the hidden layer during training (default: ``0.0``).

    Shapes:
        - input: ``x`` :math:`(T, \text{in\_dim})`
        - output: logits :math:`(T,)`
    """

    def __init__(self, in_dim: int, hidden: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 0:
            raise ValueError(f"RowMLP needs in_dim >= 1 and hidden >= 0; found {in_dim}, {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"RowMLP dropout must be in [0, 1); found {dropout!r}")
        self.in_dim = in_dim
        self.hidden = hidden
        self.dropout = dropout
        self.body: nn.Module = nn.Linear(in_dim, hidden) if hidden else nn.Identity()
        self.head = nn.Linear(hidden or in_dim, 1)

    def reset_parameters(self) -> None:
        """Re-initialise all weights (uses the global torch RNG)."""
        if isinstance(self.body, nn.Linear):
            self.body.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score every row: ``x`` ``[T, in_dim]`` -> logits ``[T]``."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"RowMLP expects x of shape [T, {self.in_dim}]; found {list(x.shape)}")
        h = x
        if self.hidden:
            h = F.dropout(F.relu(self.body(x)), p=self.dropout, training=self.training)
        logits: torch.Tensor = self.head(h).squeeze(-1)
        return logits

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_dim}, hidden={self.hidden}, dropout={self.dropout})"


def build_row_model(in_dim: int, hidden: int = 32, dropout: float = 0.0) -> nn.Module:
    """The non-graph baseline for row features of width ``in_dim``."""
    return RowMLP(in_dim, hidden=hidden, dropout=dropout)
