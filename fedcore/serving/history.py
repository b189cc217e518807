"""A site's rolling transaction history in SQLite, indexed by entity, kept after export for scoring in context.

The store holds one table, ``transactions``, with a column per transaction field
and one ``f_<name>`` column per task feature, and an index on each entity column
(``payer``, ``payee``, ``merchant``, ``device``) and on ``timestamp``, so a site can
also query it by entity from its own tools. ``meta`` records the layout version and
the task features. A site that keeps its transactions elsewhere fills this file from
its own database (the columns are documented in docs/serving.md) and points
``history.database`` at it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from fedcore.config import HistorySpec
from fedcore.data.transactions import Transactions

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Layout version of the history database."""

PRUNE_CHUNK = 200
"""Rows the background pruning deletes per transaction."""

DEFAULT_NAME = Path("history") / "history.sqlite"
"""Where the history lives under the site's state directory, unless ``history.database`` says."""


class HistoryError(ValueError):
    """The history database cannot be used as it is; the message says why and what to do."""


def history_path(state_dir: Path, spec: HistorySpec | None = None) -> Path:
    """The history database of a site: ``history.database``, else ``STATE/history/history.sqlite``."""
    if spec is not None and spec.database is not None:
        return Path(spec.database)
    return Path(state_dir) / DEFAULT_NAME


def _column(name: str) -> str:
    """SQL column of a task feature (quoted: feature names are the site's own)."""
    return '"f_' + name.replace('"', '""') + '"'


def window_start(timestamps: np.ndarray, spec: HistorySpec, newest: float | None = None) -> int:
    """First position of the window in time-sorted ``timestamps``: the tighter of the day and count bounds.

    Args:
        timestamps: Sorted timestamps of the rows.
        spec: The window.
        newest: The newest time seen (default: the last of ``timestamps``).
    """
    n = len(timestamps)
    if n == 0:
        return 0
    start = 0
    seconds = spec.window_seconds
    if seconds is not None:
        top = float(timestamps[-1]) if newest is None else newest
        start = int(np.searchsorted(timestamps, top - seconds, side="left"))
    if spec.transactions is not None:
        start = max(start, n - spec.transactions)
    return start


class HistoryStore:
    """The SQLite history of one site (see the module docstring for its layout).

    Use :meth:`open`; not thread-safe (one connection, one caller at a time).
    """

    def __init__(
        self, path: Path, conn: sqlite3.Connection, features: tuple[str, ...], spec: HistorySpec
    ) -> None:
        self.path = path
        self.features = features
        self.spec = spec
        self._conn = conn

    @classmethod
    def open(
        cls, path: Path | str, features: Sequence[str], spec: HistorySpec | None = None
    ) -> HistoryStore:
        """Open (or create) the history at ``path`` for a task with ``features``.

        Raises:
            HistoryError: the file is not a fedcore history, was made by a newer
                fedcore, or holds other task features.
        """
        path = Path(path)
        spec = spec or HistorySpec()
        path.parent.mkdir(parents=True, exist_ok=True)
        features = tuple(features)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise HistoryError(
                f"{path} is not an SQLite database ({exc}); point history.database at a "
                "fedcore history file, or move this file away and a new one is made"
            ) from None
        if "transactions" not in tables:
            cls._create(conn, features)
        else:
            cls._check(path, conn, features)
        return cls(path, conn, features, spec)

    @staticmethod
    def _create(conn: sqlite3.Connection, features: tuple[str, ...]) -> None:
        extra = "".join(f", {_column(f)} REAL NOT NULL" for f in features)
        with conn:
            conn.execute("BEGIN")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "CREATE TABLE transactions (seq INTEGER PRIMARY KEY, tx_id TEXT NOT NULL UNIQUE, "
                "timestamp REAL NOT NULL, payer TEXT NOT NULL, payee TEXT NOT NULL, "
                "merchant TEXT NOT NULL DEFAULT '', device TEXT NOT NULL DEFAULT '', "
                f"amount REAL NOT NULL, label INTEGER{extra})"
            )
            for col in ("payer", "payee", "merchant", "device", "timestamp"):
                conn.execute(f"CREATE INDEX by_{col} ON transactions ({col})")
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("features", json.dumps(features))],
            )

    @staticmethod
    def _check(path: Path, conn: sqlite3.Connection, features: tuple[str, ...]) -> None:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            meta = {}
        if "schema_version" not in meta:
            raise HistoryError(
                f"{path} has a transactions table but no fedcore meta table; it is not a "
                "fedcore history (see docs/serving.md for the layout)"
            )
        version = int(meta["schema_version"])
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{path} is history layout {version}, newer than this fedcore reads "
                f"({SCHEMA_VERSION}); upgrade fedcore"
            )
        have = tuple(json.loads(meta.get("features", "[]")))
        if have != features:
            raise HistoryError(
                f"{path} holds transactions with features {list(have)}; the model takes "
                f"{list(features)}. Use a history written for this task (history.database), "
                "or move the file away to start a new one"
            )

    def count(self) -> int:
        """Rows in the store."""
        return int(self._conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0])

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` already in the store."""
        found: set[str] = set()
        batch = list(ids)
        for i in range(0, len(batch), 500):
            part = batch[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(
                r[0]
                for r in self._conn.execute(
                    f"SELECT tx_id FROM transactions WHERE tx_id IN ({marks})", part
                )
            )
        return found

    def append(
        self, tx: Transactions, labels: np.ndarray | None = None, *, prune: bool = True
    ) -> int:
        """Add the rows of ``tx`` whose ``tx_id`` is new and that are inside the window, then drop rows that left it.

        Args:
            tx: Rows to add.
            labels: Label per row (``-1``: unknown, stored as NULL); default ``tx.label``.
            prune: Also delete the rows that left the window (a caller that writes often
                may prune now and then instead: :meth:`load` reads the window either way).

        Returns:
            How many rows were added.
        """
        labels = tx.label if labels is None else labels
        seconds = self.spec.window_seconds
        if seconds is not None and len(tx):  # rows already older than the window stay out
            top = self._conn.execute("SELECT MAX(timestamp) FROM transactions").fetchone()[0]
            newest = max(float(tx.timestamp.max()), -np.inf if top is None else float(top))
            recent = tx.timestamp >= newest - seconds
            if not recent.all():
                tx, labels = tx.take(recent), labels[recent]
        cols = ["tx_id", "timestamp", "payer", "payee", "merchant", "device", "amount", "label"]
        cols += [_column(f) for f in self.features]
        rows = zip(
            tx.tx_id.tolist(),
            tx.timestamp.tolist(),
            tx.payer.tolist(),
            tx.payee.tolist(),
            tx.merchant.tolist(),
            tx.device.tolist(),
            tx.amount.tolist(),
            [None if int(v) < 0 else int(v) for v in labels],
            *(tx.features[f].tolist() for f in self.features),
            strict=True,
        )
        marks = ",".join("?" * len(cols))
        with self._conn:
            self._conn.execute("BEGIN")
            cur = self._conn.executemany(
                f"INSERT OR IGNORE INTO transactions ({','.join(cols)}) VALUES ({marks})", rows
            )
            added = max(cur.rowcount, 0)
        if prune:
            self.prune()
        return added

    def set_labels(self, labels: dict[str, int]) -> None:
        """Store labels that arrived after scoring (by ``tx_id``; unknown ids are ignored)."""
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "UPDATE transactions SET label = ? WHERE tx_id = ?",
                [(int(v), k) for k, v in labels.items()],
            )

    def prune(
        self,
        conn: sqlite3.Connection | None = None,
        chunk: int | None = None,
        pause: Callable[[], object] | None = None,
    ) -> int:
        """Delete rows outside the window; returns how many.

        Args:
            conn: The connection to use (default: the store's own).
            chunk: Delete at most this many rows per transaction, so that another
                connection's write never waits long for this one (default: all at once).
            pause: Called between two chunks (to let other writers in).
        """
        conn = self._conn if conn is None else conn
        limit = -1 if chunk is None else chunk
        deleted = 0
        seconds = self.spec.window_seconds
        statements = []
        if seconds is not None:
            statements.append(
                (
                    "DELETE FROM transactions WHERE seq IN (SELECT seq FROM transactions WHERE "
                    "timestamp < (SELECT MAX(timestamp) FROM transactions) - ? LIMIT ?)",
                    (seconds, limit),
                )
            )
        if self.spec.transactions is not None:
            statements.append(
                (
                    "DELETE FROM transactions WHERE seq IN (SELECT seq FROM (SELECT seq, "
                    "timestamp FROM transactions ORDER BY timestamp DESC, seq DESC "
                    "LIMIT -1 OFFSET ?) LIMIT ?)",
                    (self.spec.transactions, limit),
                )
            )
        for sql, args in statements:
            while True:
                with conn:
                    conn.execute("BEGIN")
                    done = max(conn.execute(sql, args).rowcount, 0)
                deleted += done
                if chunk is None or done < chunk:
                    break
                if pause is not None:
                    pause()
        return deleted

    def load(self) -> Transactions:
        """The rows inside the window, in time order (ties: in the order they were stored).

        Unknown labels come back as ``-1``.
        """
        cols = ["tx_id", "payer", "payee", "merchant", "device", "timestamp", "amount", "label"]
        cols += [_column(f) for f in self.features]
        cur = self._conn.execute(
            f"SELECT {','.join(cols)} FROM transactions ORDER BY timestamp, seq"
        )
        data = list(zip(*cur.fetchall(), strict=True)) or [() for _ in cols]
        text = {name: np.array(data[i], dtype=object) for i, name in enumerate(cols[:5])}
        ts = np.asarray(data[5], np.float64)
        start = window_start(ts, self.spec)
        labels = np.array([-1 if v is None else int(v) for v in data[7]], np.int64)
        tx = Transactions(
            tx_id=text["tx_id"],
            payer=text["payer"],
            payee=text["payee"],
            merchant=text["merchant"],
            device=text["device"],
            amount=np.asarray(data[6], np.float64),
            timestamp=ts,
            label=labels,
            features={f: np.asarray(data[8 + i], np.float64) for i, f in enumerate(self.features)},
        )
        return tx if start == 0 else tx.take(np.arange(start, len(tx)))

    def checkpoint_in_background(self, every_s: float = 2.0) -> None:
        """Prune the window and copy the write-ahead log into the database from a thread of
        its own, every ``every_s``.

        Without it SQLite checkpoints inside a commit once the log holds 1,000 pages, and
        pruning deletes thousands of rows at once: a writer that must answer quickly (the
        scoring service) would wait tens to hundreds of milliseconds. The thread has its
        own connection and deletes :data:`PRUNE_CHUNK` rows per transaction; writes by
        :meth:`append` may then skip pruning (``prune=False``). :meth:`close` stops it.
        """
        import threading

        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        stop = threading.Event()

        def run() -> None:
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            try:
                while not stop.wait(every_s):
                    self.prune(conn, chunk=PRUNE_CHUNK, pause=lambda: stop.wait(0.1))
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # the next write's commit checkpoints instead
                self._conn.execute("PRAGMA wal_autocheckpoint=1000")
                log.warning("history checkpoints stopped: %s", exc)
            finally:
                conn.close()

        self._checkpoints = (
            stop,
            threading.Thread(target=run, name="history-checkpoint", daemon=True),
        )
        self._checkpoints[1].start()

    def close(self) -> None:
        """Stop the checkpoint thread (if any), copy the log in, close the connection."""
        checkpoints = getattr(self, "_checkpoints", None)
        if checkpoints is not None:
            checkpoints[0].set()
            checkpoints[1].join()
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._conn.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["HistoryError", "HistoryStore", "history_path", "window_start"]
