"""One interface over fedcore's tasks: the fraud GNN on transaction graphs, the nodule model on CT patches.

The client app, the baselines and ``fedcore run`` go through these functions, so a
task is added here once instead of at every call site. Imaging modules are imported
only for an imaging task (a bank needs no DICOM stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from fedcore.config import SiteConfig, TaskSpec, TrainingSpec
from fedcore.training import EvalStats, TrainStats


def load_site(cfg: SiteConfig, task: TaskSpec) -> Any:
    """The site's data for ``task``: a ``FraudGraph`` or a ``SitePatches`` (cached in its state folder)."""
    if task.is_imaging:
        from fedcore.data.imaging_sites import load_site_patches

        return load_site_patches(cfg, task)
    from fedcore.data.sites import load_site_data

    return load_site_data(cfg, task)


def build(task: TaskSpec) -> nn.Module:
    """A freshly initialised model for ``task`` (seed the RNGs first for a reproducible start)."""
    if task.is_imaging:
        from fedcore.models.nodule_net import build_nodule_net

        return build_nodule_net(task)
    if task.is_table:
        return build_table_model(task)
    from fedcore.data.graph import feature_dim
    from fedcore.models.fraud_gnn import build_model

    return build_model(task, feature_dim(task))


def build_table_model(task: TaskSpec) -> nn.Module:
    """The model ``task.model`` names for a table in any schema, sized by the task's layout.

    ``relational-gnn``: :class:`~fedcore.models.relational_gnn.RelationalGNN`;
    ``fraud-gnn``: GraphSAGE (:class:`~fedcore.models.fraud_gnn.FraudGNN`); ``row-mlp``:
    :class:`~fedcore.models.baseline.RowMLP` on the row features alone (``task.hidden`` wide).
    """
    from fedcore.data.table_graph import table_feature_dim, table_num_types, table_row_dim

    if task.model == "row-mlp":
        from fedcore.models.baseline import RowMLP

        return RowMLP(table_row_dim(task), hidden=task.hidden, dropout=task.dropout)
    if task.model == "relational-gnn":
        from fedcore.models.relational_gnn import RelationalGNN

        return RelationalGNN(
            table_feature_dim(task),
            table_num_types(task),
            hidden=task.hidden,
            layers=task.layers,
            dropout=task.dropout,
        )
    from fedcore.models.fraud_gnn import FraudGNN

    return FraudGNN(
        table_feature_dim(task), hidden=task.hidden, layers=task.layers, dropout=task.dropout
    )


def row_model_dim(task: TaskSpec) -> int:
    """Width of the row features a non-graph model reads for ``task``."""
    if task.is_table:
        from fedcore.data.table_graph import table_row_dim

        return table_row_dim(task)
    from fedcore.data.graph import row_feature_dim

    return row_feature_dim(task)


def num_train(data: Any) -> int:
    """Training examples of a site's data (transactions or patches)."""
    return int(data.num_train)


def train(
    model: nn.Module,
    data: Any,
    task: TaskSpec,
    training: TrainingSpec,
    *,
    seed: int,
    epochs: int | None = None,
    device: str = "cpu",
) -> TrainStats:
    """Train ``model`` in place on the site's training split (see the task's own ``train`` function)."""
    if task.is_imaging:
        from fedcore.imaging_training import train_patches

        return train_patches(model, data.train, training, seed=seed, epochs=epochs, device=device)
    from fedcore.fraud_training import train_local

    return train_local(model, data, training, seed=seed, epochs=epochs, device=device)


def _scores(
    model: nn.Module, data: Any, task: TaskSpec, split: str, threshold: float, device: str
) -> EvalStats:
    if task.is_imaging:
        from fedcore.imaging_training import evaluate_patches

        patches = data.train if split == "train" else data.test
        return evaluate_patches(model, patches, threshold, device=device)
    from fedcore.fraud_training import evaluate as evaluate_graph

    return evaluate_graph(model, data, task, device=device, split=split, threshold=threshold)


def operating_threshold(
    model: nn.Module, data: Any, task: TaskSpec, *, device: str = "cpu"
) -> float:
    """The score at or above which this site flags, for this model (``task.operating_point``).

    ``fixed``: ``task.threshold``. ``balanced``: the equal-error point of the model's scores
    on the site's own training split (:func:`fedcore.metrics.balanced_threshold`), so each
    site and each model is judged at its own balanced operating point, chosen without
    looking at test labels; ``task.threshold`` where the training split lacks a class.
    """
    if task.operating_point == "fixed":
        return task.threshold
    from fedcore.metrics import balanced_threshold

    train = _scores(model, data, task, "train", task.threshold, device)
    return balanced_threshold(train.labels, train.scores, fallback=task.threshold)


def evaluate(model: nn.Module, data: Any, task: TaskSpec, *, device: str = "cpu") -> EvalStats:
    """Score the site's test split: loss, counts, metrics, and the scores and labels themselves.

    Threshold metrics (F1, precision, recall, FPR, sensitivity, specificity) are at
    :func:`operating_threshold`, which the result carries as ``threshold``.
    """
    threshold = operating_threshold(model, data, task, device=device)
    return _scores(model, data, task, "test", threshold, device)


def merge(task: TaskSpec, datas: Sequence[Any]) -> Any:
    """All sites' data as one (the centralized baseline: what pooling the data would give)."""
    if task.is_imaging:
        import torch

        from fedcore.data.imaging_sites import SitePatches
        from fedcore.models.nodule_net import PatchSet

        def cat(sets: list[PatchSet]) -> PatchSet:
            return PatchSet(
                torch.cat([s.x for s in sets]),
                torch.cat([s.y for s in sets]),
                [i for s in sets for i in s.ids],
            )

        return SitePatches(
            train=cat([d.train for d in datas]),
            test=cat([d.test for d in datas]),
            problems=[p for d in datas for p in d.problems],
        )
    from fedcore.data.graph import merge_graphs

    return merge_graphs(list(datas))
