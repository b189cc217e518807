"""The manifest written next to a site's served model: what it is, how it was checked, what it expects."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike

from fedcore.config import TaskSpec
from fedcore.data.graph import (
    BASE_ROW_FEATURES,
    CONTEXT_FEATURES,
    ENTITY_FEATURES,
    NODE_TYPES,
    feature_dim,
)
from fedcore.export.onnx_export import ExportError
from fedcore.export.quantize import PATHS_TAKEN, PathTaken
from fedcore.metrics import METRIC_KEYS, binary_metrics
from fedcore.serving.monitor import bin_shares, quantile_edges
from fedcore.storage import atomic_write_text

MANIFEST_NAME = "manifest.json"
"""File name of the manifest inside an export folder."""

MANIFEST_VERSION = 3
"""Version of the manifest layout; bump on incompatible changes."""

REQUIRED_COLUMNS = ("payer", "payee", "amount", "timestamp")
"""Transaction fields every CSV to score must map (see ``fedcore.config.ColumnMapping``)."""

OPTIONAL_COLUMNS = ("tx_id", "merchant", "device")
"""Columns a CSV to score may have (fedcore's CSV names, as ``fed-client predict`` reads them and
:func:`fedcore.data.csv_loader.write_transactions_csv` writes them); without ``tx_id`` rows are
named ``line-N``, without ``merchant`` or ``device`` there is no such node."""


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def node_feature_names(task: TaskSpec) -> list[str]:
    """Name of every column of a node's features, in the layout of ``fedcore.data.graph``.

    Node-type one-hot (``type.transaction`` ...), transaction row features
    (``row.log_amount`` ..., then ``row.<task feature>``), context features
    (``context.payer_tx_1h`` ...), then one entity block per entity type
    (``account.log_degree`` ..., ``merchant.*``, ``device.*``).
    """
    names = [f"type.{t}" for t in NODE_TYPES]
    names += [f"row.{f}" for f in (*BASE_ROW_FEATURES, *task.features)]
    names += [f"context.{f}" for f in CONTEXT_FEATURES]
    for entity in NODE_TYPES[1:]:
        names += [f"{entity}.{f}" for f in ENTITY_FEATURES]
    if len(names) != feature_dim(task):
        raise AssertionError(
            f"node feature names ({len(names)}) disagree with feature_dim ({feature_dim(task)}); "
            "update node_feature_names with fedcore.data.graph"
        )
    return names


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


REFERENCE_BINS = 10
"""Bins of a score reference: deciles of the served model's scores on the held-out test split."""

DEFAULT_THRESHOLD = 0.5
"""Operating threshold assumed for a manifest written before the manifest carried one
(``task.threshold``'s default)."""


@dataclass(frozen=True)
class ScoreReference:
    """The served model's scores on the site's held-out test split at export: what drift is
    measured against.

    Attributes:
        edges: Bin edges (``0.0``, the inner edges, ``1.0``; see
            :func:`fedcore.serving.monitor.quantile_edges`):
            the deciles of these scores, the usual bins of the population stability index.
        shares: Share of the test scores in each bin (sums to 1).
        scores: Test transactions scored.
        metric: Name of ``value`` (a key of ``fedcore.metrics.METRIC_KEYS``, ``pr_auc``).
        value: The served model's ``metric`` on the test split (``None``: undefined, e.g.
            PR-AUC without fraud among them).
        flagged_rate: Share of test scores at or above the manifest's threshold.
    """

    edges: tuple[float, ...]
    shares: tuple[float, ...]
    scores: int
    metric: str
    value: float | None
    flagged_rate: float

    def __post_init__(self) -> None:
        e, sh = self.edges, self.shares
        if len(e) < 2 or len(sh) != len(e) - 1:
            raise ValueError(
                f"score reference: expected k + 1 edges and k shares (k >= 1), found {len(e)} "
                f"edges and {len(sh)} shares; re-run the export"
            )
        if not all(math.isfinite(x) for x in (*e, *sh)) or any(
            b <= a for a, b in zip(e[:-1], e[1:], strict=True)
        ):
            raise ValueError(
                f"score reference: expected finite increasing edges and finite shares, found "
                f"edges {list(e)[:12]}; re-run the export"
            )
        if any(x < 0 for x in sh) or abs(sum(sh) - 1.0) > 1e-6:
            raise ValueError(
                f"score reference: expected shares >= 0 summing to 1, found sum {sum(sh)!r}; "
                "re-run the export"
            )
        if self.metric not in METRIC_KEYS:
            raise ValueError(
                f"score reference: metric must be one of {', '.join(METRIC_KEYS)}; found "
                f"{self.metric!r}"
            )

    @classmethod
    def from_scores(
        cls,
        scores: ArrayLike,
        labels: ArrayLike,
        threshold: float,
        *,
        metric: str = "pr_auc",
        bins: int = REFERENCE_BINS,
    ) -> ScoreReference:
        """The reference of a served model from its test scores (probabilities) and labels."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        edges = quantile_edges(s, bins)
        value = binary_metrics(labels, s, threshold)[metric]
        return cls(
            edges=edges,
            shares=tuple(float(x) for x in bin_shares(edges, s)),
            scores=len(s),
            metric=metric,
            value=_finite_or_none(value),
            flagged_rate=float(np.mean(s >= threshold)),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreReference:
        """Parse :func:`dataclasses.asdict` output (lists for tuples).

        Raises:
            ValueError: a key is missing or unknown, or a value is malformed.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != names:
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(
                f"score reference: expected the keys {sorted(names)}, found {found}; re-run "
                "the export"
            )
        try:
            return cls(
                edges=tuple(float(x) for x in data["edges"]),
                shares=tuple(float(x) for x in data["shares"]),
                scores=int(data["scores"]),
                metric=str(data["metric"]),
                value=None if data["value"] is None else float(data["value"]),
                flagged_rate=float(data["flagged_rate"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"score reference: malformed value ({exc}); re-run the export"
            ) from None


@dataclass(frozen=True)
class ExportManifest:
    """What a site serves after export, and the evidence that it is good enough.

    Attributes:
        file: File name of the served model inside the export folder.
        sha256: Hex sha256 of that file.
        size_bytes: Its size.
        path_taken: ``onnx-dynamic``, ``onnx-static``, ``torch-dynamic`` or ``fp32-kept``.
        provider: ONNX Runtime execution provider it was checked and timed on
            (``torch-cpu`` for a PyTorch module).
        metric: Name of the gate metric (a key of ``fedcore.metrics.METRIC_KEYS``).
        fp32_metric: Metric of the FP32 model on the site's test transactions.
        int8_metric: Metric of the INT8 model on the same inputs (``None``: not made).
        drop: ``fp32_metric - int8_metric`` (``None``: not measured).
        tolerance: Largest drop accepted.
        refused: Why INT8 was refused and FP32 kept (``None`` when INT8 is served).
        latency_ms: Median latency of the served model scoring the test batch.
        test_transactions: Transactions in the test batch (the site's held-out split).
        fp32_file: The FP32 ONNX file kept next to it (the fallback), or ``None``.
        fp32_sha256: Its sha256, or ``None``.
        input_names: Model inputs: ``x``, then ``nbr{l}``, ``ptr{l}``, ``deg_inv{l}`` per
            layer (:func:`fedcore.export.layered.input_names`) for ONNX models;
            ``x``, ``edge_index`` for a PyTorch module.
        output_name: Model output (``logits``, one per node; sigmoid gives the score).
        input_columns: Transaction fields a CSV to score must provide (the
            ``fedcore.config.ColumnMapping`` fields, then ``features.<name>`` per
            ``task.features``).
        optional_columns: Columns a CSV may have (:data:`OPTIONAL_COLUMNS`: ``tx_id``,
            ``merchant``, ``device``; earlier exports wrote ``transaction_id`` for ``tx_id``).
        feature_names: Name of every node feature column, in order (width of ``x``).
        opset: ONNX opset of the exported model (``None`` for a PyTorch module).
        created: ISO-8601 UTC time of the export.
        fedcore_version: ``fedcore.__version__`` that made it.
        manifest_version: Layout version (:data:`MANIFEST_VERSION`).
        threshold: The site's operating threshold: a score at or above it is flagged
            (``fedcore.tasks.operating_threshold`` of the model at export;
            :data:`DEFAULT_THRESHOLD` in manifests written before it was recorded).
        reference: The served model's score distribution and metric on the test split, what
            the scoring service's drift monitor compares with (``None`` in manifests written
            before it was recorded: no drift monitoring until the next export).
    """

    file: str
    sha256: str
    size_bytes: int
    path_taken: PathTaken
    provider: str
    metric: str
    fp32_metric: float | None
    int8_metric: float | None
    drop: float | None
    tolerance: float
    refused: str | None
    latency_ms: float | None
    test_transactions: int
    fp32_file: str | None
    fp32_sha256: str | None
    input_names: tuple[str, ...]
    output_name: str
    input_columns: tuple[str, ...]
    optional_columns: tuple[str, ...]
    feature_names: tuple[str, ...]
    opset: int | None
    created: str
    fedcore_version: str
    manifest_version: int = MANIFEST_VERSION
    threshold: float = DEFAULT_THRESHOLD
    reference: ScoreReference | None = None

    def __post_init__(self) -> None:
        if self.path_taken not in PATHS_TAKEN:
            raise ValueError(
                f"path_taken must be one of {', '.join(PATHS_TAKEN)}; found {self.path_taken!r}"
            )
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be a score in [0, 1]; found {self.threshold!r}")

    @property
    def served_int8(self) -> bool:
        """Whether the served model is INT8."""
        return self.path_taken != "fp32-kept"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists; non-finite numbers ``None``)."""
        out = asdict(self)
        for key in ("fp32_metric", "int8_metric", "drop", "latency_ms"):
            out[key] = _finite_or_none(out[key])
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        if self.reference is not None:
            out["reference"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in out["reference"].items()
            }
        return out

    def to_json(self) -> str:
        """The manifest as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExportManifest:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError: naming the missing or unknown keys, or on a newer layout.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"an export manifest is a JSON object; found {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        required = {  # fields with a default may be absent: a manifest of an earlier fedcore
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing, extra = sorted(required - set(data)), sorted(set(data) - names)
        if missing or extra:
            raise ValueError(
                f"export manifest keys do not match: missing {missing or 'none'}, unknown "
                f"{extra or 'none'} (written by another fedcore version? re-run the export)"
            )
        version = int(data.get("manifest_version", MANIFEST_VERSION))
        if version < MANIFEST_VERSION:
            raise ValueError(
                f"export manifest version {version} was written by an older fedcore, whose "
                f"models take other inputs (this one reads {MANIFEST_VERSION}); re-run the export"
            )
        if version > MANIFEST_VERSION:
            raise ValueError(
                f"export manifest version {version} is newer than this fedcore reads "
                f"({MANIFEST_VERSION}); upgrade fedcore"
            )
        for key in ("input_names", "input_columns", "optional_columns", "feature_names"):
            data[key] = tuple(data[key])
        if data.get("reference") is not None:
            data["reference"] = ScoreReference.from_dict(data["reference"])
        if "threshold" in data:
            threshold = data["threshold"]
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise ValueError(f"threshold: expected a score in [0, 1], found {threshold!r:.40}")
            data["threshold"] = float(threshold)
        return cls(**cast(dict[str, Any], data))

    def write(self, directory: Path | str) -> Path:
        """Write ``manifest.json`` into ``directory`` atomically; returns its path."""
        path = Path(directory) / MANIFEST_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def read(cls, directory: Path | str) -> ExportManifest:
        """Read ``manifest.json`` from an export folder."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {MANIFEST_NAME} in {directory}, so it holds no exported model. Each site's "
                "model is exported after a run's last round: `fedcore run` writes it to "
                "OUT/sites/<site>/export/<run>/, a site started with `fed-client start` to "
                "STATE/export/<run>/ (model.int8.onnx, model.fp32.onnx, manifest.json); "
                "pass that folder or its model.int8.onnx"
            )
        try:
            return cls.from_json(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def verify(self, directory: Path | str) -> Path:
        """Check the served file's size and sha256 against the manifest.

        Returns:
            The served file's path.

        Raises:
            ExportError: if the file is missing or differs (size or hash).
        """
        path = Path(directory) / self.file
        if not path.is_file():
            raise ExportError(f"served model {path} is missing; re-run the export")
        size = path.stat().st_size
        digest = sha256_file(path)
        if size != self.size_bytes or digest != self.sha256:
            raise ExportError(
                f"served model {path} does not match its manifest: expected {self.size_bytes} "
                f"bytes, sha256 {self.sha256[:12]}..., found {size} bytes, sha256 "
                f"{digest[:12]}...; the file changed after export, re-run the export"
            )
        return path


def input_columns(task: TaskSpec) -> tuple[str, ...]:
    """Required transaction fields of a CSV to score: the base fields, then ``features.<name>``."""
    return (*REQUIRED_COLUMNS, *(f"features.{f}" for f in task.features))
