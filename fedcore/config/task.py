"""What is trained: the task (model, features, imaging input) and local training per round."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from fedcore.config.base import _Model
from fedcore.config.table import CleaningSpec

FEATURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""A task feature's name: an identifier (sites map it to a column of their own)."""


class ImagingSpec(_Model):
    """The nodule model and its input: patches cut around candidate locations in CT volumes."""

    patch_size: int = Field(32, ge=8, le=128, description="patch edge in voxels (a cube)")
    spacing_mm: float = Field(
        1.5, gt=0.2, le=10.0, description="isotropic spacing volumes are resampled to (mm)"
    )
    window_hu: tuple[float, float] = Field(
        (-1000.0, 400.0), description="HU window scaled to [0, 1] (low, high)"
    )
    channels: list[int] = Field(
        default_factory=lambda: [8, 16, 32],
        min_length=1,
        max_length=4,
        description="3D CNN stem: channels per stride-2 stage",
    )
    dim: int = Field(32, ge=8, le=512, description="Transformer token width")
    heads: int = Field(4, ge=1, le=16, description="attention heads (must divide dim)")
    transformer_layers: int = Field(2, ge=1, le=8, description="Transformer encoder layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout in the Transformer")

    @model_validator(mode="after")
    def _check(self) -> ImagingSpec:
        low, high = self.window_hu
        if not low < high:
            raise ValueError(
                f"window_hu must be (low, high) with low < high; found {self.window_hu}"
            )
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        if self.patch_size % 2 ** len(self.channels):
            raise ValueError(
                f"patch_size ({self.patch_size}) must be divisible by 2**{len(self.channels)} "
                f"(one halving per stem stage; channels: {self.channels})"
            )
        return self


class KnnSpec(_Model):
    """The similarity graph of a table without entity ids (``task.graph: knn``)."""

    k: int = Field(10, ge=1, le=100, description="neighbours per row")
    window: int = Field(
        20_000,
        ge=10,
        le=1_000_000,
        description="a row looks for neighbours among at most this many rows just before it",
    )


TABLE_MODELS = ("relational-gnn", "fraud-gnn", "row-mlp")
"""Models that train on a table in any schema (``dataset: table``)."""


class TaskSpec(_Model):
    """What is trained: model family and its hyper-parameters."""

    model: Literal["fraud-gnn", "relational-gnn", "row-mlp", "nodule-net"] = Field(
        "fraud-gnn",
        description="fraud-gnn (GraphSAGE), relational-gnn (separate weights per relation, "
        "for heterophilous fraud graphs), row-mlp (features only, no graph), or nodule-net "
        "(3D CNN + Transformer on CT); dataset table defaults to relational-gnn with "
        "task.entities or a task.graph, else row-mlp",
    )
    dataset: Literal["transactions", "ct-candidates", "table"] = Field(
        "transactions",
        description="transactions (payer/payee bank graph), table (any schema, mapped per "
        "site) or ct-candidates; follows the model when left out",
    )
    entities: list[str] = Field(
        default_factory=list,
        description="table: entity roles (e.g. card, device, user); each becomes a node type",
    )
    categorical: dict[str, int] = Field(
        default_factory=dict,
        description="table: categorical feature role -> hash buckets (2..1024)",
    )
    graph: Literal["entities", "knn", "none"] | None = Field(
        None,
        description="table: entities (rows linked through shared ids), knn (rows linked "
        "to similar earlier rows) or none; default: entities when task.entities is set, "
        "else knn (none for row-mlp)",
    )
    knn: KnnSpec = Field(default_factory=KnnSpec, description="table, graph knn")
    cleaning: CleaningSpec = Field(
        default_factory=CleaningSpec,
        description="table: what each site does with missing, non-finite, out-of-range "
        "and repeated rows before training (every action counted in its quality report)",
    )
    label_inputs: bool = Field(
        True,
        description="table graph models: the known labels of *other* training rows enter "
        "as inputs (masked label prediction), never a row's own; test labels never",
    )
    structural: bool = Field(
        True,
        description="table: add label-free structural inputs per row (counts, gaps and "
        "amounts per entity, computed at the site from earlier rows only)",
    )
    hidden: int = Field(64, ge=4, le=1024)
    layers: int = Field(2, ge=1, le=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    features: list[str] = Field(
        default_factory=list, description="extra numeric row features every site provides"
    )
    test_fraction: float = Field(0.3, gt=0.0, lt=0.9, description="latest share of time held out")
    threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="score threshold for F1/precision/recall/FPR (operating_point: fixed)",
    )
    operating_point: Literal["fixed", "balanced"] = Field(
        "fixed",
        description="fixed: flag scores >= threshold; balanced: each site flags at the score "
        "where sensitivity equals specificity on its own training split, for every model",
    )
    imaging: ImagingSpec = Field(
        default_factory=ImagingSpec, description="nodule-net: patch geometry and model size"
    )

    @field_validator("features")
    @classmethod
    def _feature_names(cls, features: list[str]) -> list[str]:
        bad = [f for f in features if not FEATURE_NAME.fullmatch(f)]
        if bad:
            raise ValueError(
                f"feature name(s) {', '.join(map(repr, bad))} are not identifiers; expected "
                "letters, digits and _ (not starting with a digit), at most 64 characters"
            )
        twice = sorted(f for f, n in Counter(features).items() if n > 1)
        if twice:
            raise ValueError(f"feature(s) listed more than once: {', '.join(twice)}")
        return features

    @field_validator("entities", "categorical")
    @classmethod
    def _role_names(cls, roles: Any) -> Any:
        bad = [r for r in roles if not FEATURE_NAME.fullmatch(r)]
        if bad:
            raise ValueError(
                f"role name(s) {', '.join(map(repr, bad))} are not identifiers; expected "
                "letters, digits and _ (not starting with a digit), at most 64 characters"
            )
        if isinstance(roles, list):
            twice = sorted(r for r, n in Counter(roles).items() if n > 1)
            if twice:
                raise ValueError(f"role(s) listed more than once: {', '.join(twice)}")
        else:
            odd = {k: v for k, v in roles.items() if not 2 <= v <= 1024}
            if odd:
                raise ValueError(f"hash buckets must be within 2..1024; found {odd}")
        return roles

    @model_validator(mode="before")
    @classmethod
    def _dataset_follows_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dataset" not in data:
            if data.get("model") == "nodule-net":
                return {**data, "dataset": "ct-candidates"}
            if data.get("model") in ("relational-gnn", "row-mlp"):
                return {**data, "dataset": "table"}
        if isinstance(data, dict) and data.get("dataset") == "table" and "model" not in data:
            # without ids the features alone did as well as a knn graph, in a tenth of the
            # time (benchmarks/real_data.py, card table): the graph is the scenario's choice
            graph = data.get("entities") or data.get("graph") in ("entities", "knn")
            model = "relational-gnn" if graph else "row-mlp"
            return {**data, "model": model}
        return data

    @model_validator(mode="after")
    def _model_fits_dataset(self) -> TaskSpec:
        if self.dataset == "table":
            if self.model not in TABLE_MODELS:
                raise ValueError(
                    f"dataset table trains {', '.join(TABLE_MODELS)}; found model {self.model}"
                )
            if self.model == "row-mlp" and self.graph not in (None, "none"):
                raise ValueError(
                    f"model row-mlp uses no graph; found graph {self.graph}: remove task.graph "
                    "or choose relational-gnn"
                )
            if self.graph == "entities" and not self.entities:
                raise ValueError(
                    "graph entities needs task.entities (the id roles rows are linked by); "
                    "list them, or use graph knn for a table without ids"
                )
            if self.model != "row-mlp" and self.table_graph == "none":
                raise ValueError(
                    f"model {self.model} needs a graph; found graph none: use row-mlp for a "
                    "model on the features alone"
                )
            return self
        if self.entities or self.categorical or self.graph is not None:
            raise ValueError(
                "task.entities, task.categorical and task.graph apply to dataset table; "
                f"found dataset {self.dataset}"
            )
        expected = "ct-candidates" if self.model == "nodule-net" else "transactions"
        if self.dataset != expected:
            raise ValueError(
                f"model {self.model} trains on dataset {expected}; found dataset {self.dataset}"
            )
        return self

    @property
    def is_table(self) -> bool:
        """Whether this task trains on a table in any schema (``dataset: table``)."""
        return self.dataset == "table"

    @property
    def table_graph(self) -> str:
        """The graph a table task builds: ``entities``, ``knn`` or ``none`` (defaults resolved)."""
        if self.graph is not None:
            return self.graph
        if self.model == "row-mlp":
            return "none"
        return "entities" if self.entities else "knn"

    @property
    def is_imaging(self) -> bool:
        """Whether this task trains the nodule model on CT data."""
        return self.model == "nodule-net"


class TrainingSpec(_Model):
    """Local training at each site, per round."""

    local_epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(0.01, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int | None = Field(
        None, ge=16, description="target transactions per mini-batch; null = full graph"
    )
    pos_weight: float | None = Field(
        None, gt=0.0, description="loss weight of the fraud class; null = sqrt(neg/pos) per site"
    )
