"""GraphSAGE fraud scorer for transaction graphs (Hamilton, Ying and Leskovec, "Inductive Representation Learning on Large Graphs", NeurIPS 2017)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import SAGEConv

from fedcore.config import TaskSpec


class FraudGNN(nn.Module):
    r"""GraphSAGE network giving one fraud logit per node.

    Each layer computes, for node :math:`i` with neighbours :math:`\mathcal{N}(i)`,

    .. math::
        h_i' = \mathrm{ReLU}\Big(W_1 h_i + W_2 \frac{1}{|\mathcal{N}(i)|}
        \sum_{j \in \mathcal{N}(i)} h_j\Big)

    (``SAGEConv`` with mean aggregation, Hamilton et al. 2017), followed by dropout; a
    linear head maps the last hidden state to a logit. The model is inductive: it uses
    only node features and edges, so it scores nodes and graphs never seen in training
    (new transactions, other banks).

    Args:
        in_dim: Node feature width (``fedcore.data.graph.feature_dim(task)``).
        hidden: Hidden width of every layer (default: ``64``).
        layers: Number of ``SAGEConv`` layers, i.e. hops of message passing (default: ``2``).
        dropout: Dropout after every layer during training (default: ``0.1``).

    Shapes:
        - input: node features ``x`` :math:`(N, \text{in\_dim})`, edge indices
          ``edge_index`` :math:`(2, E)` (long, both directions of every edge)
        - output: logits :math:`(N,)`
    """

    def __init__(
        self, in_dim: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 1 or layers < 1:
            raise ValueError(
                f"FraudGNN needs in_dim, hidden and layers >= 1; found in_dim={in_dim}, "
                f"hidden={hidden}, layers={layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FraudGNN dropout must be in [0, 1); found {dropout!r}")
        self.in_dim = in_dim
        self.hidden = hidden
        self.num_layers = layers
        self.dropout = dropout
        self.convs = nn.ModuleList(
            SAGEConv(in_dim if i == 0 else hidden, hidden, aggr="mean") for i in range(layers)
        )
        self.head = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all weights (uses the global torch RNG)."""
        for conv in self.convs:
            cast(SAGEConv, conv).reset_parameters()
        self.head.reset_parameters()

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Hidden node representations ``[N, hidden]`` after the last layer."""
        h = x
        for conv in self.convs:
            h = F.relu(conv(h, edge_index))
            h = F.dropout(h, p=self.dropout, training=self.training)
        return h

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Score every node.

        Args:
            x: Node features, float ``[N, in_dim]``.
            edge_index: Edges, long ``[2, E]``.

        Returns:
            One fraud logit per node, ``[N]`` (apply ``sigmoid`` for a probability).
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"FraudGNN expects x of shape [N, {self.in_dim}]; found {list(x.shape)} "
                "(was the graph built for a different task.features?)"
            )
        logits: torch.Tensor = self.head(self.embed(x, edge_index)).squeeze(-1)
        return logits

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_dim}, hidden={self.hidden}, "
            f"layers={self.num_layers}, dropout={self.dropout})"
        )


def build_model(task: TaskSpec, in_dim: int) -> nn.Module:
    """The model named by ``task.model``, sized by the task's hyper-parameters.

    Args:
        task: Task section of the scenario (``model``, ``hidden``, ``layers``, ``dropout``).
        in_dim: Node feature width, ``fedcore.data.graph.feature_dim(task)``.

    Raises:
        ValueError: for an unknown ``task.model``.
    """
    if task.model == "fraud-gnn":
        return FraudGNN(in_dim, hidden=task.hidden, layers=task.layers, dropout=task.dropout)
    raise ValueError(f"unknown task.model {task.model!r}; known: fraud-gnn")
