"""Score new transactions in the context of a site's history window with its exported model (what ``fed-client serve`` runs)."""

from __future__ import annotations

import gc
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.config import HistorySpec
from fedcore.data.transactions import Transactions
from fedcore.export.layered import layers_of, scoring_batch
from fedcore.export.manifest import ExportManifest
from fedcore.export.onnx_export import CPU_PROVIDER, ExportError, ort_session, run_session
from fedcore.serving.history import HistoryStore, history_path
from fedcore.serving.subgraph import neighbourhood
from fedcore.serving.window import Window

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
"""Longest id (transaction, account, merchant, device) a request may carry."""

REMEMBERED_SCORES = 200_000
"""Scores kept by transaction id for labels that arrive later (the oldest are forgotten)."""

DEFAULT_THRESHOLD = 0.5
"""Operating point for a manifest written before exports carried the site's own."""


class ServingInputError(ValueError):
    """A transaction to score is malformed; the message names it, the field, the value and what is expected."""


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of the transactions of one call, in the order given.

    Attributes:
        tx_id: Each transaction's id (generated where the caller gave none).
        score: Fraud probability, ``float64 [n]``.
        flagged: ``score >= threshold``, ``bool [n]``.
    """

    tx_id: list[str]
    score: np.ndarray
    flagged: np.ndarray


@dataclass(frozen=True)
class ServedModel:
    """An exported model checked against its manifest, with an ONNX Runtime session on it."""

    directory: Path
    file: Path
    manifest: ExportManifest
    session: Any
    layers: int
    provider: str

    @classmethod
    def load(
        cls, export_dir: Path, *, provider: str | None = None, threads: int | None = 1
    ) -> ServedModel:
        """Read the manifest, check the served file's size and sha256, open a session.

        ``export_dir`` may also name the FP32 ONNX file kept beside the INT8 one (to
        compare the two), or the served file itself.

        Raises:
            FileNotFoundError: no export there.
            ExportError: the file differs from its manifest, or is not a layer-wise ONNX model.
        """
        from fedcore.export.serve import InputError, resolve_model

        try:
            served, manifest, _ = resolve_model(Path(export_dir))
        except InputError as exc:  # another file, or a PyTorch fallback
            raise ExportError(str(exc)) from None
        try:
            layers = layers_of(manifest.input_names)
        except ValueError as exc:
            raise ExportError(f"{served}: {exc}") from None
        chosen = provider or manifest.provider or CPU_PROVIDER
        session = ort_session(served, chosen, threads=threads)
        used = session.get_providers()[0] if session.get_providers() else CPU_PROVIDER
        return cls(served.parent, served, manifest, session, layers, used)

    @property
    def features(self) -> tuple[str, ...]:
        """The task features the model takes, in order."""
        return tuple(
            c.removeprefix("features.")
            for c in self.manifest.input_columns
            if c.startswith("features.")
        )

    @property
    def threshold(self) -> float:
        """The site's operating point (carried by the manifest)."""
        value = getattr(self.manifest, "threshold", None)
        return DEFAULT_THRESHOLD if value is None else float(value)


def _text(row: Mapping[str, Any], key: str, i: int, required: bool) -> str:
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise ServingInputError(
                f"transaction {i}: field {key!r} is missing; expected a non-empty id (string)"
            )
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ServingInputError(
            f"transaction {i}: field {key!r} expected an id (string), found "
            f"{type(value).__name__} {str(value)[:40]!r}"
        )
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise ServingInputError(
            f"transaction {i}: field {key!r} is {len(text)} characters long; ids are at most "
            f"{MAX_ID_LENGTH}"
        )
    return text


def _number(row: Mapping[str, Any], key: str, i: int, what: str = "a finite number") -> float:
    value = row.get(key)
    if value is None:
        raise ServingInputError(f"transaction {i}: field {key!r} is missing; expected {what}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ServingInputError(
            f"transaction {i}: field {key!r} expected {what}, found {type(value).__name__} "
            f"{str(value)[:40]!r}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise ServingInputError(f"transaction {i}: field {key!r} expected {what}, found {number}")
    return number


def _timestamp(row: Mapping[str, Any], i: int) -> float:
    value = row.get("timestamp")
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ServingInputError(
                f"transaction {i}: field 'timestamp' {value[:40]!r} is not ISO-8601; expected "
                "UNIX seconds (a number) or e.g. 2026-12-07T14:03:00Z"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    return _number(row, "timestamp", i, "UNIX seconds (a number) or an ISO-8601 time")


MAX_AHEAD_S = 86_400.0
"""How far past this machine's clock a transaction's time may lie (a later one is refused:
it would move the history window past every row the site holds)."""


def parse_transactions(rows: Sequence[Any], features: Sequence[str]) -> Transactions:
    """Check and convert request rows to :class:`Transactions` (in the order given).

    Raises:
        ServingInputError: naming the first bad row and field.
    """
    latest = time.time() + MAX_AHEAD_S
    n = len(rows)
    cols: dict[str, list[Any]] = {
        k: [] for k in ("tx_id", "payer", "payee", "merchant", "device", "amount", "timestamp")
    }
    feats: dict[str, list[float]] = {f: [] for f in features}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ServingInputError(
                f"transaction {i}: expected a JSON object with payer, payee, amount, "
                f"timestamp; found {type(row).__name__}"
            )
        tid = _text(row, "tx_id", i, required=False) or f"auto-{uuid.uuid4().hex}"
        cols["tx_id"].append(tid)
        cols["payer"].append(_text(row, "payer", i, required=True))
        cols["payee"].append(_text(row, "payee", i, required=True))
        cols["merchant"].append(_text(row, "merchant", i, required=False))
        cols["device"].append(_text(row, "device", i, required=False))
        amount = _number(row, "amount", i, "a finite amount >= 0")
        if amount < 0:
            raise ServingInputError(
                f"transaction {i}: field 'amount' expected a finite amount >= 0, found {amount}"
            )
        cols["amount"].append(amount)
        when = _timestamp(row, i)
        if when < 0:
            raise ServingInputError(
                f"transaction {i}: field 'timestamp' is {when:g}, before 1970-01-01; expected "
                "the time the transaction happened (UNIX seconds or ISO-8601, UTC)"
            )
        if when > latest:
            try:
                shown = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")
            except (OverflowError, ValueError, OSError):
                shown = f"{when:g} (UNIX seconds)"
            raise ServingInputError(
                f"transaction {i}: field 'timestamp' is {shown}, more than a day past this "
                "machine's clock; expected the time the transaction happened (UNIX seconds or "
                "ISO-8601, UTC)"
            )
        cols["timestamp"].append(when)
        for f in features:
            feats[f].append(_number(row, f, i, f"a finite number (task feature {f!r})"))
    text = {
        k: np.array(cols[k], dtype=object)
        for k in ("tx_id", "payer", "payee", "merchant", "device")
    }
    return Transactions(
        tx_id=text["tx_id"],
        payer=text["payer"],
        payee=text["payee"],
        merchant=text["merchant"],
        device=text["device"],
        amount=np.asarray(cols["amount"], np.float64).reshape(n),
        timestamp=np.asarray(cols["timestamp"], np.float64).reshape(n),
        label=np.full(n, -1, np.int64),
        features={f: np.asarray(v, np.float64).reshape(n) for f, v in feats.items()},
    )


def score_in_window(model: ServedModel, window: Window, positions: Sequence[int]) -> np.ndarray:
    """Scores (probabilities, ``float64``) of window rows ``positions`` with ``model``."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        return np.zeros(0)
    unique, back = np.unique(pos, return_inverse=True)
    nb = neighbourhood(window, unique, model.layers)
    batch = scoring_batch((nb.x, nb.edge_index), model.layers, nb.targets)
    logits = run_session(model.session, batch.feed()).astype(np.float64)
    return np.asarray(1.0 / (1.0 + np.exp(-logits)))[back]


class ContextScorer:
    """A site's exported model and history window: score, append, remember, persist.

    Not thread-safe: the caller serialises calls.
    """

    def __init__(self, model: ServedModel, store: HistoryStore, window: Window) -> None:
        self.model = model
        self.store = store
        self.window = window
        self._pending: list[Transactions] = []
        self._labels: dict[str, int] = {}
        self._served: OrderedDict[str, float] = OrderedDict()
        store.checkpoint_in_background()

    @classmethod
    def open(
        cls,
        export_dir: Path,
        state_dir: Path,
        *,
        history: HistorySpec | None = None,
        provider: str | None = None,
        threads: int | None = 1,
    ) -> ContextScorer:
        """Load the model (checked against its manifest) and the site's history window."""
        model = ServedModel.load(Path(export_dir), provider=provider, threads=threads)
        spec = history or HistorySpec()
        store = HistoryStore.open(history_path(Path(state_dir), spec), model.features, spec)
        window = Window.from_transactions(store.load(), model.features, spec)
        window.evict()
        # Millions of long-lived objects (each entity's row lists): keep the cyclic garbage
        # collector from walking them again and again, which shows as 100 ms pauses
        gc.collect()
        gc.freeze()
        log.info("history: %d transactions in the window (%s)", window.alive_count, store.path)
        return cls(model, store, window)

    @property
    def manifest(self) -> ExportManifest:
        return self.model.manifest

    @property
    def threshold(self) -> float:
        return self.model.threshold

    @property
    def history_size(self) -> int:
        return self.window.alive_count

    def score(self, rows: Sequence[Any], *, append: bool = True) -> ScoredBatch:
        """Score transactions in the context of the window (and of each other), then keep them.

        Each row joins the window first, so a transaction's score reads its accounts',
        merchant's and device's recent transactions, this call's included; rows already
        in the window (same ``tx_id``) are scored as they are. With ``append=False`` the
        new rows leave again after scoring. Rows that fell out of the window's bounds are
        dropped after scoring.

        Raises:
            ServingInputError: a malformed row (nothing is scored or kept).
        """
        tx = parse_transactions(rows, self.model.features)
        known = {tid for tid in tx.tx_id.tolist() if tid in self.window.row_of}
        before = self.window.size
        positions = self.window.add(tx)
        added = [p for p in positions if p >= before]
        try:
            scores = score_in_window(self.model, self.window, positions)
        except Exception:
            for p in reversed(added):  # leave the window as it was
                self.window.remove(p)
            raise
        if append:
            fresh = np.array([tid not in known for tid in tx.tx_id.tolist()], dtype=bool)
            first: dict[str, int] = {}
            for i, tid in enumerate(tx.tx_id.tolist()):
                first.setdefault(tid, i)
            fresh &= np.array([first[t] == i for i, t in enumerate(tx.tx_id.tolist())])
            if fresh.any():
                self._pending.append(tx.take(np.flatnonzero(fresh)))
            self.window.evict()
        else:
            for p in sorted(set(added), reverse=True):
                self.window.remove(p)
        ids = [str(t) for t in tx.tx_id.tolist()]
        for tid, s in zip(ids, scores.tolist(), strict=True):
            self._served[tid] = s
            self._served.move_to_end(tid)
        while len(self._served) > REMEMBERED_SCORES:
            self._served.popitem(last=False)
        return ScoredBatch(ids, scores, scores >= self.threshold)

    def record_label(self, tx_id: str, label: int) -> float | None:
        """Keep a label that arrived after scoring; returns the score served for ``tx_id`` (``None``: unknown)."""
        if label not in (0, 1):
            raise ServingInputError(f"label of {tx_id!r} must be 0 or 1; found {label!r}")
        row = self.window.row_of.get(tx_id)
        if row is not None:
            self.window.label[row] = label
        self._labels[tx_id] = label
        return self._served.get(tx_id)

    def load_model(self, export_dir: Path) -> ServedModel:
        """Load and check another export for :meth:`use` (touches nothing the scoring reads,
        so it may run beside a call to :meth:`score`).

        Raises:
            ExportError: the new export is damaged, or takes other features.
        """
        new = ServedModel.load(Path(export_dir), provider=self.model.provider)
        if new.features != self.model.features:
            raise ExportError(
                f"the export in {export_dir} takes features {list(new.features)}; the history "
                f"holds {list(self.model.features)}. Start the service again for the new task"
            )
        return new

    def use(self, model: ServedModel) -> None:
        """Serve ``model`` (from :meth:`load_model`) from the next call on; the history is kept."""
        self.model = model

    def reload(self, export_dir: Path) -> None:
        """Serve another export (checked first; the history is kept).

        Raises:
            ExportError: the new export is damaged, or takes other features.
        """
        self.use(self.load_model(export_dir))

    def flush(self) -> int:
        """Write the appended rows and arrived labels to the history database (one
        transaction, one prune); returns how many rows were handed over."""
        written = 0
        if self._pending:
            parts, self._pending = self._pending, []
            rows = Transactions.concat(parts)
            # the store's own thread prunes (checkpoint_in_background)
            self.store.append(rows, labels=np.full(len(rows), -1, np.int64), prune=False)
            written = len(rows)
        if self._labels:
            labels, self._labels = self._labels, {}
            self.store.set_labels(labels)
        return written

    def close(self) -> None:
        """Flush and close the history."""
        try:
            self.flush()
        finally:
            self.store.close()


__all__ = [
    "ContextScorer",
    "ScoredBatch",
    "ServedModel",
    "ServingInputError",
    "parse_transactions",
    "score_in_window",
]
