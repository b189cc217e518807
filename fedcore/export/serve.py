"""Score a transactions CSV with a site's exported model (what ``fed-client predict`` runs)."""

from __future__ import annotations

import csv
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcore.config import ColumnMapping, CsvData, HistorySpec, TaskSpec
from fedcore.data.transactions import DataError, Transactions
from fedcore.export.manifest import (
    MANIFEST_NAME,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ExportManifest,
    sha256_file,
)
from fedcore.export.onnx_export import ExportError

# CSV header names a file to score uses for each transaction field (fedcore's own CSV layout)
CSV_NAMES = {"transaction_id": "tx_id", "merchant": "merchant", "device": "device"}

ID_ALIAS = "transaction_id"
"""Header name also read as ``tx_id`` (the ``ColumnMapping`` field's name), with a note."""

ROW_COLUMN = "__fedcore_row__"
"""Column of the working copy that carries each row's position in the user's file."""

FP32_PATH = "fp32"
"""What :attr:`Scores.path_taken` says when the FP32 model beside a served INT8 one scored."""


class InputError(ValueError):
    """The CSV to score does not match the model's manifest; the message says what differs."""


@dataclass(frozen=True)
class Scores:
    """Fraud scores of a CSV's transactions, in the file's row order.

    Attributes:
        tx_id: Each row's ``tx_id`` (``line-N`` without that column).
        score: Fraud probability per row, ``float64`` ``[n]``.
        manifest: The export's manifest.
        model_path: The model file that scored.
        path_taken: How that file was made: the manifest's ``path_taken`` for the served
            model, :data:`FP32_PATH` for the FP32 ONNX model kept beside an INT8 one.
        notes: What the reader assumed about the file (e.g. the id column it read).
    """

    tx_id: list[str]
    score: np.ndarray
    manifest: ExportManifest
    model_path: Path
    path_taken: str
    notes: tuple[str, ...] = ()

    @property
    def threshold(self) -> float:
        """The site's operating point from the manifest (0.5 for an export without one)."""
        value = getattr(self.manifest, "threshold", None)
        return 0.5 if value is None else float(value)


def resolve_model(model: Path) -> tuple[Path, ExportManifest, str]:
    """The model file, its manifest and how that file was made, from a model file or its folder."""
    if not model.exists():
        raise FileNotFoundError(f"no such model file or folder: {model}")
    directory = model if model.is_dir() else model.parent
    try:
        manifest = ExportManifest.read(directory)
    except FileNotFoundError as exc:
        if model.is_dir():
            raise
        what = (
            "the global model's weights, not a site's exported model"
            if model.suffix == ".safetensors"
            else "not an exported model"
        )
        raise FileNotFoundError(f"{model} is {what}: {exc}") from None
    served = manifest.verify(directory)  # hash and size match the manifest
    path_taken = str(manifest.path_taken)
    if model.is_file() and model.resolve() != served.resolve():
        fp32 = directory / manifest.fp32_file if manifest.fp32_file else None
        if fp32 is None or model.resolve() != fp32.resolve():
            raise InputError(f"{model} is not the model named in {directory / MANIFEST_NAME}")
        if manifest.fp32_sha256 is not None and sha256_file(model) != manifest.fp32_sha256:
            raise ExportError(
                f"FP32 model {model} does not match the sha256 in its manifest; the file "
                "changed after export, re-run the export"
            )
        served, path_taken = model, FP32_PATH
    if served.suffix != ".onnx":
        raise InputError(
            f"{served} is a PyTorch fallback ({manifest.path_taken}); predict and serve take "
            f"ONNX models. Use the FP32 ONNX model in {directory} or re-export"
        )
    return served, manifest, path_taken


def required_csv_columns(manifest: ExportManifest) -> list[str]:
    """Header names a CSV must have for this model."""
    out = []
    for col in manifest.input_columns:
        out.append(col.removeprefix("features.") if col.startswith("features.") else col)
    return out


def optional_csv_columns(manifest: ExportManifest) -> list[str]:
    """Header names a CSV may have for this model (older manifests' ``transaction_id`` is ``tx_id``)."""
    return [CSV_NAMES.get(c, c) for c in manifest.optional_columns or OPTIONAL_COLUMNS]


def check_columns(header: list[str], manifest: ExportManifest, path: Path) -> None:
    """Refuse a CSV whose header lacks a column the model needs (naming them all)."""
    need = required_csv_columns(manifest)
    missing = [c for c in need if c not in header]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} that the model needs "
            f"(required: {', '.join(need)}; optional: "
            f"{', '.join(optional_csv_columns(manifest))}, label; "
            f"found: {', '.join(header) or 'none'})"
        )


def _header(path: Path) -> list[str]:
    """The first non-blank line's column names (as the CSV loader finds the header)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for row in csv.reader(fh):
                if any(cell.strip() for cell in row):
                    return [cell.strip() for cell in row]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    return []


def _numbered_copy(src: Path, dest: Path, add_label: bool) -> None:
    """Copy ``src`` to ``dest`` line for line, adding :data:`ROW_COLUMN` (and ``label``: 0).

    Every line stays on its line, so the loader's line numbers are the user's.

    Raises:
        DataError: a row shorter than the header (named by ``src`` and line).
    """
    extra_head = [ROW_COLUMN, *(["label"] if add_label else [])]
    with (
        open(src, newline="", encoding="utf-8-sig") as fin,
        open(dest, "w", newline="", encoding="utf-8") as fout,
    ):
        reader = csv.reader(fin)
        w = csv.writer(fout)
        width: int | None = None
        n = 0
        for row in reader:
            if not any(cell.strip() for cell in row):
                w.writerow(row)  # blank: the loader skips it
            elif width is None:
                width = len(row)
                w.writerow([*row, *extra_head])
            elif len(row) < width:
                raise DataError(
                    f"{src}, line {reader.line_num}: expected {width} fields as in the header, "
                    f"found {len(row)}; check for a missing delimiter or an unquoted value"
                )
            else:
                w.writerow([*row[:width], str(n), *(["0"] if add_label else [])])
                n += 1


def score_csv(model: Path, csv_path: Path, history: HistoryContext | None = None) -> Scores:
    """Score every transaction of ``csv_path`` with the exported model at ``model``.

    The CSV uses fedcore's column names (``payer``, ``payee``, ``amount``, ``timestamp``,
    one column per task feature; optionally ``tx_id``, ``merchant``, ``device``, ``label``),
    as written by :func:`fedcore.data.csv_loader.write_transactions_csv`; a
    ``transaction_id`` column is read as ``tx_id`` when there is none.

    A score depends on the transaction's neighbourhood: the fraud GNN scores each
    transaction in the graph of its payer's and payee's other transactions, shared
    merchants and devices, and their counts over the last hour and day. With ``history``
    the file's rows join the site's history window (rows whose ``tx_id`` is already there
    are scored as stored) and each is scored in that context, exactly as in the graph of
    the window and the file together; without it, in the graph of the file's rows alone,
    so the file must then carry the accounts' recent history. Scores come back in the
    file's row order; the history is not changed.

    Raises:
        InputError: the CSV's columns do not match the model's manifest.
        FileNotFoundError: no model or manifest.
        fedcore.data.transactions.DataError: a value cannot be parsed (naming the file's
            path, line and column).
        ExportError: the model file differs from its manifest.
    """
    from fedcore.data.csv_loader import load_transactions_csv
    from fedcore.data.graph import build_graph
    from fedcore.export.layered import layers_of, scoring_batch
    from fedcore.export.onnx_export import ort_session, run_session

    served, manifest, path_taken = resolve_model(model)
    header = _header(csv_path)
    check_columns(header, manifest, csv_path)
    features = [
        c.removeprefix("features.") for c in manifest.input_columns if c.startswith("features.")
    ]
    notes: list[str] = []
    id_column: str | None = None
    if "tx_id" in header:
        id_column = "tx_id"
    elif ID_ALIAS in header:
        id_column = ID_ALIAS
        notes.append(f"read transaction ids from column {ID_ALIAS} (fedcore's name is tx_id)")
    mapping = ColumnMapping(
        transaction_id=id_column,
        payer="payer",
        payee="payee",
        merchant="merchant" if "merchant" in header else None,
        device="device" if "device" in header else None,
        amount="amount",
        timestamp="timestamp",
        label="label",
        features={**{f: f for f in features}, ROW_COLUMN: ROW_COLUMN},
    )
    if history is not None and id_column is None:
        notes.append(
            "the file has no tx_id column: its rows are scored as new transactions, none "
            "matched with the history"
        )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / csv_path.name
        _numbered_copy(csv_path, src, add_label="label" not in header)
        try:
            tx = load_transactions_csv(CsvData(path=src, columns=mapping), [*features, ROW_COLUMN])
        except DataError as exc:  # name the user's file, not the working copy
            raise DataError(str(exc).replace(str(src), str(csv_path))) from None
    row = tx.features[ROW_COLUMN].astype(np.int64)  # file position of each time-ordered row
    tx = dataclasses.replace(tx, features={f: tx.features[f] for f in features})
    ids = [""] * len(row)
    for i, tid in zip(row.tolist(), tx.tx_id, strict=True):
        ids[i] = str(tid)
    if history is not None:
        by_time, note = history.score(served, manifest, tx, matched=id_column is not None)
        notes.append(note)
        scores = np.empty_like(by_time)
        scores[row] = by_time
        return Scores(ids, scores, manifest, served, path_taken, tuple(notes))
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
    # transaction nodes come first in the graph, in time order: score exactly those
    batch = scoring_batch(graph, layers, np.arange(graph.num_tx))
    logits = run_session(ort_session(served), batch.feed())
    by_time = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64).reshape(-1)))
    scores = np.empty_like(by_time)
    scores[row] = by_time
    return Scores(ids, scores, manifest, served, path_taken, tuple(notes))


@dataclass(frozen=True)
class HistoryContext:
    """The site's history that ``fed-client predict`` scores a file in the context of.

    Attributes:
        path: The history database (:class:`fedcore.serving.history.HistoryStore`).
        spec: Its window.
    """

    path: Path
    spec: HistorySpec

    def score(
        self, served: Path, manifest: ExportManifest, tx: Transactions, *, matched: bool
    ) -> tuple[np.ndarray, str]:
        """Scores of ``tx``'s rows (in its order) in the context of the history, and a note saying so.

        Args:
            served: The ONNX model file.
            manifest: Its manifest.
            tx: The file's rows, time-sorted.
            matched: Whether ``tx_id`` names rows that may already be in the history.
        """
        import uuid

        from fedcore.export.layered import layers_of
        from fedcore.export.onnx_export import ort_session
        from fedcore.serving.context import ServedModel, score_in_window
        from fedcore.serving.history import HistoryStore
        from fedcore.serving.window import Window

        if not self.path.is_file():
            raise FileNotFoundError(
                f"no transaction history at {self.path}: a site writes it after export. "
                "Pass --history with its path (or --site with the site file that names it), "
                "or --no-history to score the file alone"
            )
        features = tuple(
            c.removeprefix("features.") for c in manifest.input_columns if c.startswith("features.")
        )
        with HistoryStore.open(self.path, features, self.spec) as store:
            window = Window.from_transactions(store.load(), features, self.spec)
        held = window.alive_count
        if not matched:  # line numbers are no ids: never match a stored row by them
            prefix = f"predict-{uuid.uuid4().hex}-"
            tx = dataclasses.replace(
                tx, tx_id=np.array([prefix + str(t) for t in tx.tx_id], dtype=object)
            )
        known = sum(1 for t in tx.tx_id.tolist() if str(t) in window.row_of)
        positions = window.add(tx)
        model = ServedModel(
            served.parent,
            served,
            manifest,
            ort_session(served),
            layers_of(manifest.input_names),
            "",
        )
        scores = score_in_window(model, window, positions)
        note = (
            f"scored in the context of the site's history: {held} transactions in {self.path}"
            + (
                f"; {known} rows of the file were already there (same tx_id) and were scored as stored"
                if known
                else ""
            )
        )
        return scores, note


def write_scores(scores: Scores, out: Path, threshold: float = 0.5) -> None:
    """Write ``tx_id,score,flagged`` rows (flagged: score >= threshold), readable by the owner only."""
    from fedcore.storage import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tx_id", "score", "flagged"])
        for tid, s in zip(scores.tx_id, scores.score, strict=True):
            w.writerow([tid, f"{s:.6f}", int(s >= threshold)])


__all__ = [
    "HistoryContext",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "InputError",
    "Scores",
    "score_csv",
    "write_scores",
]
