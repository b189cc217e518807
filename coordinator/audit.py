"""The coordinator's append-only, hash-chained audit log (``OUT/audit.jsonl``; format in docs/audit.md).

Each line is one JSON object: ``seq`` (0, 1, 2, ...), ``time`` (UTC, ISO 8601), ``event``,
the event's own fields, and ``prev``, the SHA-256 (hex) of the previous line's exact bytes
(without its ``\\n``); the first line's ``prev`` is :data:`GENESIS_PREV`, 64 zeros. Removing,
editing, reordering or inserting a line breaks the chain at that point. An edit of the *last*
line can only be caught against its hash recorded elsewhere (``fedcore audit verify --last``).

The chain maths (:func:`line_hash`, :func:`verify_lines`) are pure functions over bytes; the
file I/O lives in :class:`AuditLog` and :func:`read_log`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from coordinator.state import StateError
from fedcore.round_record import RoundRecord
from fedcore.storage import json_default

__all__ = [
    "AUDIT_FILE",
    "GENESIS_PREV",
    "AuditError",
    "AuditLog",
    "Problem",
    "Verification",
    "line_hash",
    "read_log",
    "split_lines",
    "verify_lines",
]

AUDIT_FILE = "audit.jsonl"
"""The log's file name inside the coordinator's run directory."""

GENESIS_PREV = "0" * 64
"""``prev`` of the first line: 64 zeros (no line comes before it)."""

_RESERVED = ("seq", "time", "event", "prev")


class AuditError(StateError):
    """The audit log cannot be continued: its chain is broken, or it cannot be read.

    A :class:`~coordinator.state.StateError`: the run directory holds something the run must
    not overwrite, so ``fedcore run`` reports it as such (exit 2) and touches nothing.
    """


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a log: the 1-based line it concerns and what was found."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Verification:
    """What :func:`read_log` found in a log file.

    Attributes:
        entries: Every line that parsed as a JSON object, in file order.
        problems: Everything wrong with the chain, by line (empty: intact).
        last_hash: :func:`line_hash` of the last line (:data:`GENESIS_PREV` for an empty log).
    """

    entries: list[dict[str, Any]]
    problems: list[Problem]
    last_hash: str

    @property
    def ok(self) -> bool:
        """``True`` when the chain is intact."""
        return not self.problems

    @property
    def rounds(self) -> list[int]:
        """The rounds with a ``round_completed`` entry, in log order."""
        return [
            int(e["round"])
            for e in self.entries
            if e.get("event") == "round_completed" and isinstance(e.get("round"), int)
        ]


# --------------------------------------------------------------------------- chain maths (pure)


def line_hash(line: bytes) -> str:
    """SHA-256 (hex) of one line's exact bytes, without its terminating ``\\n``.

    Args:
        line: The line's bytes (a trailing ``\\n``, if any, is not hashed).

    Returns:
        64 lowercase hex digits: what the next line carries as ``prev``.
    """
    return hashlib.sha256(line.removesuffix(b"\n")).hexdigest()


def split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Split a log file's bytes into lines.

    Args:
        data: The whole file.

    Returns:
        The lines without their ``\\n``, and whether the last one lacked its ``\\n`` (a write
        cut short). An empty file has no lines.
    """
    if not data:
        return [], False
    lines = data.split(b"\n")
    if lines[-1] == b"":
        return lines[:-1], False
    return lines, True


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The line's JSON object, or ``None`` and why not."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (a {type(obj).__name__})"
    return obj, None


def verify_lines(lines: Sequence[bytes]) -> list[Problem]:
    """Check a log's hash chain and sequence numbers.

    Every line must be a JSON object with an integer ``seq`` one above the highest before it
    (the first: 0), string ``time`` and ``event``, and ``prev`` equal to :func:`line_hash` of
    the line before (the first: :data:`GENESIS_PREV`). Where a link breaks, the problem names
    the line that most likely changed: an edited line (its hash no longer matches the next
    line's ``prev`` while the ``seq`` run is unbroken), a removed line (a ``seq`` gap, a
    ``prev`` matching no line), lines moved (a ``prev`` matching another line, ``seq`` going
    back), or a line that is not JSON.

    Args:
        lines: The log's lines, without their ``\\n``.

    Returns:
        Every problem found, ordered by line number; empty when the chain is intact.
    """
    hashes = [line_hash(x) for x in lines]
    line_of_hash: dict[str, int] = {}
    for i, h in enumerate(hashes, start=1):
        line_of_hash.setdefault(h, i)
    found: list[Problem] = []
    max_seq = -1
    for i, raw in enumerate(lines, start=1):
        obj, why = _parse(raw)
        if obj is None:
            found.append(Problem(i, f"{why}: the line was edited or is not part of the log"))
            continue
        for name in ("time", "event"):
            if not isinstance(obj.get(name), str):
                found.append(Problem(i, f"field {name!r} missing or not a string"))
        seq = obj.get("seq")
        contiguous = False
        if not isinstance(seq, int) or isinstance(seq, bool):
            found.append(Problem(i, f"field 'seq' missing or not an integer (found {seq!r})"))
        elif seq > max_seq + 1:
            missing = seq - max_seq - 1
            found.append(
                Problem(
                    i,
                    f"seq {seq} where {max_seq + 1} was expected: {missing} entr"
                    f"{'y' if missing == 1 else 'ies'} missing before this line "
                    "(lines removed or reordered)",
                )
            )
            max_seq = seq
        elif seq <= max_seq:
            found.append(
                Problem(i, f"seq {seq} after seq {max_seq}: lines reordered or duplicated")
            )
        else:
            contiguous = True
            max_seq = seq
        prev = obj.get("prev")
        want = GENESIS_PREV if i == 1 else hashes[i - 2]
        if not isinstance(prev, str):
            found.append(Problem(i, f"field 'prev' missing or not a string (found {prev!r})"))
        elif prev != want:
            found.append(_broken_link(i, prev, contiguous, line_of_hash))
    return sorted(found, key=lambda p: p.line)


def _broken_link(i: int, prev: str, contiguous: bool, line_of_hash: Mapping[str, int]) -> Problem:
    """Say what most likely broke the link into line ``i`` (whose ``prev`` did not match)."""
    if prev == GENESIS_PREV:
        return Problem(i, "'prev' is the genesis hash but this is not the first line")
    j = line_of_hash.get(prev)
    if j is not None:
        return Problem(
            i, f"'prev' is the hash of line {j}, but this line follows line {i - 1}: lines moved"
        )
    if i == 1:
        if contiguous:
            return Problem(
                1, "'prev' of the first line is not the genesis hash: the line was edited"
            )
        return Problem(1, "'prev' is not the genesis hash: the log's first lines were removed")
    if contiguous:
        return Problem(
            i - 1,
            f"edited: the hash of this line does not match the 'prev' of line {i} "
            f"(this line, or line {i}'s 'prev', was changed)",
        )
    return Problem(
        i, f"'prev' matches no line of the log: the line(s) before line {i} were removed"
    )


# --------------------------------------------------------------------------- file I/O


def read_log(path: Path) -> Verification:
    """Read and check an audit log file.

    Args:
        path: The log (``OUT/audit.jsonl``).

    Returns:
        Its entries, its problems (including a last line cut short) and its last hash.

    Raises:
        OSError: The file is missing or unreadable.
    """
    data = Path(path).read_bytes()
    lines, torn = split_lines(data)
    problems = verify_lines(lines)
    if torn:
        problems.append(
            Problem(len(lines), "the line has no terminating newline: a write was cut short")
        )
    entries = [obj for obj in (_parse(x)[0] for x in lines) if obj is not None]
    last = line_hash(lines[-1]) if lines else GENESIS_PREV
    return Verification(entries, problems, last)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (the log stays strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class AuditLog:
    """Appends hash-chained entries to an audit log file, continuing the chain already there.

    On open an existing log is read and verified: an intact one is continued (a resumed run
    appends to the same chain); a broken one is refused with :class:`AuditError`, never
    rewritten. The file is only ever opened for appending, and every entry is flushed and
    fsynced before :meth:`append` returns.

    Args:
        path: The log file (``OUT/audit.jsonl``); its folder is made.
        clock: Returns the current time (UTC); for tests.

    Raises:
        AuditError: The existing log is broken or unreadable.
    """

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            found = (
                read_log(self.path) if self.path.exists() else Verification([], [], GENESIS_PREV)
            )
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc}") from exc
        if found.problems:
            listed = "; ".join(str(p) for p in found.problems[:5])
            more = len(found.problems) - 5
            raise AuditError(
                f"the audit log {self.path} is broken ({listed}"
                f"{f'; {more} more' if more > 0 else ''}); it is never rewritten: keep it as "
                "evidence, move it away and start the run again, or use another output directory"
            )
        self._seq = len(found.entries)
        self._prev = found.last_hash
        self.sites_seen: set[str] = set()
        for e in found.entries:
            if e.get("event") == "sites_joined" and isinstance(e.get("sites"), list):
                self.sites_seen.update(str(s) for s in e["sites"])
        self._fh = open(self.path, "ab")  # noqa: SIM115 - held for the run; closed by close()

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next entry gets (the number of entries so far)."""
        return self._seq

    @property
    def last_hash(self) -> str:
        """The hash of the last line written (:data:`GENESIS_PREV` for an empty log)."""
        return self._prev

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry: ``seq``, ``time``, ``event``, ``fields``, ``prev``; flushed and fsynced.

        Args:
            event: What happened (``run_started``, ``sites_joined``, ...).
            **fields: The event's own fields (JSON-serialisable; NaN and infinities become null).

        Returns:
            The entry as written.

        Raises:
            ValueError: A field uses a reserved name (``seq``, ``time``, ``event``, ``prev``).
        """
        clash = sorted(set(fields) & set(_RESERVED))
        if clash:
            raise ValueError(f"audit fields {clash} are reserved; rename them")
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": self.clock().astimezone(timezone.utc).isoformat(timespec="microseconds"),
            "event": event,
            **_finite(fields),
            "prev": self._prev,
        }
        line = json.dumps(entry, default=json_default, allow_nan=False).encode("utf-8")
        self._fh.write(line + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._seq += 1
        self._prev = line_hash(line)
        return entry

    def record_round(self, record: RoundRecord) -> None:
        """Log a finished round: ``sites_joined`` for sites first seen, then ``round_completed``.

        Args:
            record: The round as the driver recorded it.
        """
        present = set(record.get("sites", [])) | set(record.get("per_site", {}))
        new = sorted(present - self.sites_seen)
        if new:
            self.append("sites_joined", round=record["round"], sites=new)
            self.sites_seen.update(new)
        fields: dict[str, Any] = {
            "round": record["round"],
            "sites": sorted(record.get("sites", [])),
            "rejected": {k: list(v) for k, v in sorted(record.get("rejected", {}).items())},
        }
        if "epsilon" in record:
            fields["epsilon"] = record["epsilon"]
        self.append("round_completed", **fields)

    def close(self) -> None:
        """Close the file (appending afterwards raises ``ValueError``)."""
        self._fh.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, entries={self._seq})"
