"""Tests of the relational GNN: shapes, per-relation weights, determinism, learning under heterophily."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedcore.models.relational_gnn import RelationalGNN


def _graph() -> tuple[torch.Tensor, torch.Tensor]:
    # 4 rows (type 0), 2 entities of type 1, 1 entity of type 2; 3 extra features
    types = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    x = torch.cat(
        [
            F.one_hot(types, 3).float(),
            torch.randn(7, 3, generator=torch.Generator().manual_seed(0)),
        ],
        1,
    )
    # row 0 hears type-1 entity 4; row 1 hears type-2 entity 6; row 2 hears row 3; 4 hears row 0
    ei = torch.tensor([[4, 6, 3, 0], [0, 1, 2, 4]])
    return x, ei


def test_shapes_repr_and_errors() -> None:
    torch.manual_seed(0)
    model = RelationalGNN(6, 3, hidden=8, layers=3, dropout=0.2)
    assert repr(model) == "RelationalGNN(6, num_types=3, hidden=8, layers=3, dropout=0.2)"
    x, ei = _graph()
    assert model(x, ei).shape == (7,)
    assert len(model.layer_outputs(x, ei)) == 4
    assert model.head.in_features == 8 * 4
    assert len(model.rel_lins) == 3 and len(model.rel_lins[0]) == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \[N, 6\]"):
        model(torch.zeros(2, 5), ei)
    with pytest.raises(ValueError, match="one-hot"):
        model(torch.zeros(7, 6), ei)
    with pytest.raises(ValueError, match="num_types=0"):
        RelationalGNN(6, 0)
    with pytest.raises(ValueError, match="1.5"):
        RelationalGNN(6, 3, dropout=1.5)


def test_deterministic_and_reset() -> None:
    torch.manual_seed(1)
    model = RelationalGNN(6, 3, hidden=8).eval()
    x, ei = _graph()
    a = model(x, ei)
    assert torch.equal(a, model(x, ei))
    torch.manual_seed(1)
    assert torch.equal(a, RelationalGNN(6, 3, hidden=8).eval()(x, ei))
    model.reset_parameters()
    assert not torch.equal(a, model(x, ei))


def test_one_relation_weight_changes_only_nodes_with_such_neighbours() -> None:
    torch.manual_seed(2)
    model = RelationalGNN(6, 3, hidden=8, layers=1).eval()
    x, ei = _graph()
    before = model(x, ei)
    with torch.no_grad():
        model.rel_lins[0][2].weight.add_(1.0)  # type: ignore[index]
    after = model(x, ei)
    changed = (after - before).abs() > 1e-6
    # only row 1 has a neighbour of type 2 (entity 6)
    assert changed.tolist() == [False, True, False, False, False, False, False]


def test_learns_a_heterophilous_graph() -> None:
    # 60 rows: fraud rows share entities mostly with honest rows, so a neighbour's label
    # says little; a row's own features and the entity's structure tell fraud apart
    g = torch.Generator().manual_seed(3)
    n_rows, n_ent = 60, 15
    label = torch.zeros(n_rows, dtype=torch.long)
    label[::4] = 1
    feat = torch.randn(n_rows, 2, generator=g) * 0.8 + label.unsqueeze(1).float()
    ent = torch.arange(n_rows) % n_ent  # each entity: rows i, i+15, i+30, i+45: 1 fraud, 3 honest
    x_rows = torch.cat([torch.tensor([[1.0, 0.0]]).expand(n_rows, 2), feat], 1)
    x_ent = torch.cat([torch.tensor([[0.0, 1.0]]).expand(n_ent, 2), torch.zeros(n_ent, 2)], 1)
    x = torch.cat([x_rows, x_ent])
    rows = torch.arange(n_rows)
    ei = torch.stack([torch.cat([rows, ent + n_rows]), torch.cat([ent + n_rows, rows])])
    fraud_per_entity = torch.bincount(ent, weights=label.float(), minlength=n_ent)
    assert fraud_per_entity.tolist() == [1.0] * n_ent  # a fraud row's co-rows are all honest
    torch.manual_seed(0)
    model = RelationalGNN(4, 2, hidden=16, layers=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x, ei)[:n_rows], label.float())
        loss.backward()
        opt.step()
    score = model.eval()(x, ei)[:n_rows]
    pos, neg = score[label == 1], score[label == 0]
    auc = float((pos.unsqueeze(1) > neg.unsqueeze(0)).float().mean())
    assert auc > 0.8
