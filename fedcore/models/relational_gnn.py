"""Relational GNN for heterophilous fraud graphs: per-relation neighbour weights apart from the node's own (Schlichtkrull et al., "Modeling Relational Data with Graph Convolutional Networks", ESWC 2018; Zhu et al., "Beyond Homophily in Graph Neural Networks", NeurIPS 2020)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter


class RelationalGNN(nn.Module):
    r"""Message passing with one weight per relation and a separate self weight.

    The relation of an edge :math:`j \to i` is the node type of its *source* :math:`j`,
    read from the one-hot in the first ``num_types`` columns of ``x`` (rows, then one
    type per entity role: ``fedcore.data.table_features.table_num_types``). With the
    input projection :math:`h^{(0)}_i = \mathrm{ReLU}(W_{in} x_i)`, each layer computes

    .. math::
        h_i^{(l+1)} = \mathrm{ReLU}\Big(W^{(l)}_{self} h^{(l)}_i + \sum_r W^{(l)}_r
        \frac{1}{|\mathcal{N}_r(i)|} \sum_{j \in \mathcal{N}_r(i)} h^{(l)}_j\Big)

    (R-GCN, Schlichtkrull et al. 2018; a relation without neighbours adds nothing),
    followed by dropout. Keeping the ego embedding apart from the neighbours' matters
    when linked nodes tend to differ, as fraud rows linked to entities shared mostly
    with honest rows do (H2GCN, Zhu et al. 2020); as there, the head reads the
    concatenation :math:`[h^{(0)} \| h^{(1)} \| \dots \| h^{(L)}]`.

    Args:
        in_dim: Node feature width (``fedcore.data.table_features.table_feature_dim``).
        num_types: Node types, the width of the one-hot at the start of ``x``.
        hidden: Hidden width of the projection and every layer (default: ``64``).
        layers: Message-passing layers (default: ``2``).
        dropout: Dropout after the projection and every layer in training (default: ``0.1``).

    Shapes:
        - input: node features ``x`` :math:`(N, \text{in\_dim})`, edges ``edge_index``
          :math:`(2, E)` (long; messages flow from ``edge_index[0]`` to ``edge_index[1]``)
        - output: logits :math:`(N,)`
    """

    def __init__(
        self,
        in_dim: int,
        num_types: int,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_types < 1 or in_dim < num_types or hidden < 1 or layers < 1:
            raise ValueError(
                "RelationalGNN needs num_types >= 1, in_dim >= num_types, hidden and layers "
                f">= 1; found in_dim={in_dim}, num_types={num_types}, hidden={hidden}, "
                f"layers={layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"RelationalGNN dropout must be in [0, 1); found {dropout!r}")
        self.in_dim = in_dim
        self.num_types = num_types
        self.hidden = hidden
        self.num_layers = layers
        self.dropout = dropout
        self.project = nn.Linear(in_dim, hidden)
        self.self_lins = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.rel_lins = nn.ModuleList(
            nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(num_types))
            for _ in range(layers)
        )
        self.head = nn.Linear(hidden * (layers + 1), 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all weights (uses the global torch RNG)."""
        self.project.reset_parameters()
        for lin in self.self_lins:
            cast(nn.Linear, lin).reset_parameters()
        for rels in self.rel_lins:
            for lin in cast(nn.ModuleList, rels):
                cast(nn.Linear, lin).reset_parameters()
        self.head.reset_parameters()

    def node_types(self, x: torch.Tensor) -> torch.Tensor:
        """Type of every node, long ``[N]``, from the one-hot in ``x[:, :num_types]``.

        Raises:
            ValueError: if a node's one-hot does not hold exactly one 1.
        """
        onehot = x[:, : self.num_types]
        bad = torch.nonzero((onehot.sum(1) != 1) | (onehot.amax(1) != 1)).flatten()
        if len(bad):
            raise ValueError(
                f"RelationalGNN expects a node-type one-hot in x[:, :{self.num_types}]; node "
                f"{int(bad[0])} has {onehot[bad[0]].tolist()} (was the graph built for a "
                "task with other entities?)"
            )
        return onehot.argmax(1)

    def layer_outputs(self, x: torch.Tensor, edge_index: torch.Tensor) -> list[torch.Tensor]:
        """The projection and every layer's output, each ``[N, hidden]``."""
        n = x.shape[0]
        src, dst = edge_index[0], edge_index[1]
        relation = self.node_types(x)[src]
        slot = dst * self.num_types + relation  # (target, relation) pair of each edge
        h = F.dropout(F.relu(self.project(x)), p=self.dropout, training=self.training)
        outs = [h]
        for self_lin, rels in zip(self.self_lins, self.rel_lins, strict=True):
            mean = scatter(h[src], slot, dim=0, dim_size=n * self.num_types, reduce="mean")
            mean = mean.view(n, self.num_types, self.hidden)
            out = self_lin(h)
            for r, lin in enumerate(cast(nn.ModuleList, rels)):
                out = out + lin(mean[:, r])
            h = F.dropout(F.relu(out), p=self.dropout, training=self.training)
            outs.append(h)
        return outs

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Score every node.

        Args:
            x: Node features, float ``[N, in_dim]``, node-type one-hot first.
            edge_index: Edges, long ``[2, E]`` (source, target).

        Returns:
            One fraud logit per node, ``[N]`` (apply ``sigmoid`` for a probability).
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"RelationalGNN expects x of shape [N, {self.in_dim}]; found {list(x.shape)} "
                "(was the graph built for a different task?)"
            )
        logits: torch.Tensor = self.head(torch.cat(self.layer_outputs(x, edge_index), 1))
        return logits.squeeze(-1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_dim}, num_types={self.num_types}, "
            f"hidden={self.hidden}, layers={self.num_layers}, dropout={self.dropout})"
        )
