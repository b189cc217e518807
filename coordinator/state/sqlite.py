"""The default round store: one embedded SQLite database file, one transaction per round."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.state.base import (
    Checkpoint,
    DamagedRound,
    EncodedRound,
    Recovery,
    RoundStore,
    StateError,
    check_fingerprint,
    decode_round,
    encode_round,
)

__all__ = ["SCHEMA_VERSION", "SQLiteRoundStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS rounds (
        round INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        checkpoint_sha256 TEXT NOT NULL,
        model BLOB NOT NULL,
        model_sha256 TEXT NOT NULL,
        saved_at TEXT NOT NULL
    )""",
)

_COLUMNS = "round, fingerprint, checkpoint, checkpoint_sha256, model, model_sha256"


@dataclass(frozen=True)
class _Found:
    """What a read of the database found: the newest intact round and what was skipped."""

    cp: Checkpoint
    arrays: dict[str, np.ndarray]
    stored: EncodedRound
    skipped: tuple[tuple[int, str], ...]
    integrity: str  # "" when PRAGMA quick_check said ok


class SQLiteRoundStore(RoundStore):
    """Completed rounds in one SQLite file (stdlib ``sqlite3``), e.g. ``OUT/state/state.db``.

    Table ``rounds`` holds one row per kept round: the checkpoint as JSON and the model as
    safetensors bytes, each with its SHA-256; table ``meta`` holds the scenario fingerprint
    and the schema version. Each :meth:`save` is one ``BEGIN IMMEDIATE`` ... ``COMMIT``.

    Journal: the rollback journal (``journal_mode=DELETE``) with ``synchronous=FULL``. The
    journal is fsynced before the database file is touched and the commit is fsynced before
    :meth:`save` returns, so a crash or power cut at any moment leaves the last committed round
    (a hot journal is rolled back on the next open) and a returned :meth:`save` is durable.
    WAL would let readers run beside the writer, which buys nothing here (one writer holding
    ``OUT/.lock``, a save every round, reads at start), while it needs shared memory that
    network file systems do not offer and leaves committed rounds in a ``-wal`` file beside
    the database; with the rollback journal, ``state.db`` alone is the whole state after every
    commit, to copy or back up.

    Args:
        path: The database file; it and its folder are made by the first :meth:`save`
            (permissions 0600: the checkpoint holds the run key and privacy state).
        keep: How many of the newest rounds to keep (at least 1; default 2, so one damaged
            round still leaves one to resume from).

    Raises:
        ValueError: ``keep`` is below 1.
    """

    def __init__(self, path: Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the round to resume from), got {keep!r}")
        self.path = Path(path)
        self.keep = keep
        self.recovered: Recovery | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, keep={self.keep})"

    @property
    def where(self) -> str:
        """The database file."""
        return str(self.path)

    # ------------------------------------------------------------------ reading

    def checkpoint(self, fingerprint: str) -> Checkpoint | None:
        """The newest intact round's checkpoint of this scenario (see :meth:`load`)."""
        found = self._newest_intact(fingerprint)
        return None if found is None else found.cp

    def load(self, fingerprint: str) -> tuple[Checkpoint, dict[str, np.ndarray]] | None:
        """The newest intact round of this scenario with its model, or ``None`` if none is stored.

        The database is checked (``PRAGMA quick_check``) and each round's checkpoint and model
        against their SHA-256, newest first. Damaged rounds are skipped with a logged warning
        and :attr:`recovered` set; a database that fails its integrity check but still holds
        an intact round is moved aside (``state.db.damaged-TIME``) and that round copied into
        a fresh database, so the run never writes into a damaged file.

        Raises:
            StateError: another scenario's state; a file that is not a readable database;
                stored rounds none of which is intact.
        """
        found = self._newest_intact(fingerprint)
        return None if found is None else (found.cp, found.arrays)

    def _newest_intact(self, fingerprint: str) -> _Found | None:
        if not self.path.exists():
            return None
        if self.path.stat().st_size == 0 and not _journal(self.path).exists():
            log.warning("%s is empty: no round stored there yet; starting from round 0", self.path)
            return None
        try:
            found = self._read(fingerprint)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc
        if found is None:
            return None
        if found.integrity:
            self._recover(found, f"{found.integrity}; {self._salvage(found)}")
        elif found.skipped:
            self._recover(found, "")
        return found

    def _read(self, fingerprint: str) -> _Found | None:
        with self._connect() as conn:
            integrity = _quick_check(conn)
            if not _has_schema(conn):
                if integrity:
                    raise sqlite3.DatabaseError(integrity)
                return None
            stored_fp = _meta(conn, "fingerprint")
            if stored_fp is not None:
                check_fingerprint(stored_fp, fingerprint, self.where)
            numbers = [r for (r,) in conn.execute("SELECT round FROM rounds ORDER BY round DESC")]
            skipped: list[tuple[int, str]] = []
            for number in numbers:
                try:
                    stored = _row(conn, number)
                    cp, arrays = decode_round(stored)
                except (DamagedRound, sqlite3.DatabaseError) as exc:
                    skipped.append((number, str(exc) or type(exc).__name__))
                    continue
                check_fingerprint(cp.fingerprint, fingerprint, self.where)
                return _Found(cp, arrays, stored, tuple(skipped), integrity)
        if numbers or integrity:
            raise self._nothing_intact(skipped, integrity)
        return None

    def _recover(self, found: _Found, note: str) -> None:
        recovery = Recovery(found.cp.round, found.skipped, self.where, note)
        if recovery != self.recovered:
            log.warning("%s", recovery.message)
        self.recovered = recovery

    def _salvage(self, found: _Found) -> str:
        """Move the damaged file aside and start a fresh one holding the intact round."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        os.replace(self.path, aside)
        journal = _journal(self.path)
        if journal.exists():
            os.replace(journal, _journal(aside))
        try:
            self._write(found.stored)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path}: expected to copy intact round {found.cp.round} into a fresh "
                f"database after moving the damaged one to {aside}, found an error ({exc}). "
                "Fix: check the disk (space, permissions), then run again"
            ) from exc
        return (
            f"the damaged database was moved to {aside} and round {found.cp.round} "
            f"copied to a fresh {self.path.name}"
        )

    # ------------------------------------------------------------------ writing

    def save(self, cp: Checkpoint, arrays: Mapping[str, np.ndarray]) -> None:
        """Store a completed round in one transaction (see :meth:`RoundStore.save`).

        Raises:
            StateError: the database holds another scenario's state, or cannot be written.
        """
        stored = encode_round(cp, arrays)
        try:
            self._write(stored)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path}: could not store round {cp.round} ({exc}): expected a writable "
                "SQLite database. Fix: check the disk (space, permissions); if the file is "
                "damaged, move it away and resume from a fresh --out"
            ) from exc

    def _write(self, stored: EncodedRound) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_in_transaction(conn, stored)
                self._before_commit(stored.round)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _write_in_transaction(self, conn: sqlite3.Connection, stored: EncodedRound) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        stored_fp = _meta(conn, "fingerprint")
        if stored_fp is not None:
            check_fingerprint(stored_fp, stored.fingerprint, self.where)
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("fingerprint", stored.fingerprint), ("schema_version", str(SCHEMA_VERSION))],
        )
        # a resumed run replaces what came after the round it resumed from
        conn.execute("DELETE FROM rounds WHERE round >= ?", (stored.round,))
        conn.execute(
            f"INSERT INTO rounds ({_COLUMNS}, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                stored.round,
                stored.fingerprint,
                stored.checkpoint_json,
                stored.checkpoint_sha256,
                stored.model,
                stored.model_sha256,
                dt.datetime.now(dt.timezone.utc).isoformat(),
            ),
        )
        conn.execute(
            "DELETE FROM rounds WHERE round NOT IN "
            "(SELECT round FROM rounds ORDER BY round DESC LIMIT ?)",
            (self.keep,),
        )

    def _before_commit(self, round_: int) -> None:
        """Called inside the save transaction just before ``COMMIT`` (a seam for crash tests)."""

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: no implicit transactions, each save spells out its own
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    def _unreadable(self, exc: Exception) -> StateError:
        return StateError(
            f"{self.path}: expected the coordinator's SQLite state database, found an unreadable "
            f"file ({exc}). Fix: move it (or its folder {self.path.parent}) away to start from "
            "round 0, or start with a fresh --out"
        )

    def _nothing_intact(self, skipped: list[tuple[int, str]], integrity: str) -> StateError:
        found = "; ".join(f"round {r}: {why}" for r, why in skipped) or "no readable round"
        if integrity:
            found = f"{integrity}; {found}"
        return StateError(
            f"{self.path}: expected at least one intact round to resume from, found none "
            f"({found}). Fix: move {self.path} away to start from round 0, or start with a "
            "fresh --out"
        )


def _journal(path: Path) -> Path:
    return path.with_name(path.name + "-journal")


def _quick_check(conn: sqlite3.Connection) -> str:
    """``""`` if ``PRAGMA quick_check`` says ok, else its first findings on one line.

    A check that cannot even run (a truncated file: "database disk image is malformed") is a
    finding too: the rounds may still be readable one by one.
    """
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows == ["ok"]:
        return ""
    return "integrity check failed: " + " | ".join(" ".join(r.split()) for r in rows)


def _has_schema(conn: sqlite3.Connection) -> bool:
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {"meta", "rounds"} <= names


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    # a scan, not a lookup through the key's index: a damaged index must not hide the table
    values = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    return values.get(key)


def _row(conn: sqlite3.Connection, number: int) -> EncodedRound:
    row = conn.execute(f"SELECT {_COLUMNS} FROM rounds WHERE round = ?", (number,)).fetchone()
    if row is None:
        raise DamagedRound("row vanished while reading")
    return EncodedRound(
        round=int(row[0]),
        fingerprint=str(row[1]),
        checkpoint_json=str(row[2]),
        checkpoint_sha256=str(row[3]),
        model=bytes(row[4]),
        model_sha256=str(row[5]),
    )
