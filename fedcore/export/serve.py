"""Score a transactions CSV with a site's exported model (what ``fed-client predict`` runs)."""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcore.config import ColumnMapping, CsvData, TaskSpec
from fedcore.export.manifest import MANIFEST_NAME, REQUIRED_COLUMNS, ExportManifest

# CSV header names a file to score uses for each transaction field (fedcore's own CSV layout)
CSV_NAMES = {"transaction_id": "tx_id", "merchant": "merchant", "device": "device"}


class InputError(ValueError):
    """The CSV to score does not match the model's manifest; the message says what differs."""


@dataclass(frozen=True)
class Scores:
    """Fraud scores of a CSV's transactions, in the file's time order."""

    tx_id: list[str]
    score: np.ndarray
    manifest: ExportManifest
    model_path: Path


def _resolve(model: Path) -> tuple[Path, ExportManifest]:
    """The model file and its manifest, from a model file or its export folder."""
    directory = model if model.is_dir() else model.parent
    manifest = ExportManifest.read(directory)
    served = manifest.verify(directory)  # hash and size match the manifest
    if model.is_file() and model.resolve() != served.resolve():
        fp32 = directory / manifest.fp32_file if manifest.fp32_file else None
        if fp32 is None or model.resolve() != fp32.resolve():
            raise InputError(f"{model} is not the model named in {directory / MANIFEST_NAME}")
        served = model
    if served.suffix != ".onnx":
        raise InputError(
            f"{served} is a PyTorch fallback ({manifest.path_taken}); predict serves ONNX models. "
            f"Use the FP32 ONNX model in {directory} or re-export"
        )
    return served, manifest


def required_csv_columns(manifest: ExportManifest) -> list[str]:
    """Header names a CSV must have for this model."""
    out = []
    for col in manifest.input_columns:
        out.append(col.removeprefix("features.") if col.startswith("features.") else col)
    return out


def check_columns(header: list[str], manifest: ExportManifest, path: Path) -> None:
    """Refuse a CSV whose header lacks a column the model needs (naming them all)."""
    need = required_csv_columns(manifest)
    missing = [c for c in need if c not in header]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} that the model needs "
            f"(required: {', '.join(need)}; optional: tx_id, merchant, device; "
            f"found: {', '.join(header) or 'none'})"
        )


def score_csv(model: Path, csv_path: Path) -> Scores:
    """Score every transaction of ``csv_path`` with the exported model at ``model``.

    The CSV uses fedcore's column names (``payer``, ``payee``, ``amount``, ``timestamp``,
    one column per task feature; optionally ``tx_id``, ``merchant``, ``device``, ``label``),
    as written by :func:`fedcore.data.csv_loader.write_transactions_csv`.

    Raises:
        InputError: the CSV's columns do not match the model's manifest.
        FileNotFoundError: no model or manifest.
        fedcore.data.transactions.DataError: a value cannot be parsed.
    """
    from fedcore.data.csv_loader import load_transactions_csv
    from fedcore.data.graph import build_graph
    from fedcore.export.layered import layers_of, scoring_batch
    from fedcore.export.onnx_export import ort_session, run_session

    served, manifest = _resolve(model)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    header = [h.strip() for h in header]
    check_columns(header, manifest, csv_path)
    features = [
        c.removeprefix("features.") for c in manifest.input_columns if c.startswith("features.")
    ]
    mapping = ColumnMapping(
        transaction_id="tx_id" if "tx_id" in header else None,
        payer="payer",
        payee="payee",
        merchant="merchant" if "merchant" in header else None,
        device="device" if "device" in header else None,
        amount="amount",
        timestamp="timestamp",
        label="label",
        features={f: f for f in features},
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = csv_path
        if "label" not in header:  # unlabeled data: the loader wants a label column
            src = Path(tmp) / "input.csv"
            with (
                open(csv_path, newline="", encoding="utf-8") as fin,
                open(src, "w", newline="", encoding="utf-8") as fout,
            ):
                rows = csv.reader(fin)
                w = csv.writer(fout)
                for i, row in enumerate(rows):
                    w.writerow([*row, "label" if i == 0 else "0"])
        tx = load_transactions_csv(CsvData(path=src, columns=mapping), features)
    graph = build_graph(tx, TaskSpec(features=features))
    width = int(graph.data.x.shape[1])
    if width != len(manifest.feature_names):
        raise InputError(
            f"the CSV gives {width} node features; the model takes "
            f"{len(manifest.feature_names)} (was it exported for other task.features?)"
        )
    try:
        layers = layers_of(manifest.input_names)
    except ValueError as exc:
        raise InputError(f"{served}: {exc}") from None
    # transaction nodes come first in the graph: score exactly those, in file order
    batch = scoring_batch(graph, layers, np.arange(graph.num_tx))
    logits = run_session(ort_session(served), batch.feed())
    scores = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64).reshape(-1)))
    return Scores([str(t) for t in tx.tx_id], scores, manifest, served)


def write_scores(scores: Scores, out: Path, threshold: float = 0.5) -> None:
    """Write ``tx_id,score,flagged`` rows (flagged: score >= threshold)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tx_id", "score", "flagged"])
        for tid, s in zip(scores.tx_id, scores.score, strict=True):
            w.writerow([tid, f"{s:.6f}", int(s >= threshold)])


__all__ = ["REQUIRED_COLUMNS", "InputError", "Scores", "score_csv", "write_scores"]
