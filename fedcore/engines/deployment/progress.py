"""What a running deployment writes, read back: log tails, ``OUT/rounds.jsonl`` as it grows, ``OUT/federation.json``."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "RoundsTail",
    "read_federation",
    "read_from",
    "remove_stale_results",
    "tail_text",
    "with_tail",
]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tail_text(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, without ANSI colours ("" if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = _ANSI.sub("", data)
    return "\n".join(text.splitlines()[-lines:])


def with_tail(message: str, path: Path, lines: int = 25) -> str:
    """``message`` followed by the last ``lines`` lines of the log at ``path``, indented."""
    tail = tail_text(path, lines)
    if not tail:
        return f"{message}\n(log: {path}, empty)"
    indented = "\n".join(f"  | {line}" for line in tail.splitlines())
    return f"{message}\nlast lines of {path}:\n{indented}"


class RoundsTail:
    """Follows a JSON-lines file (``OUT/rounds.jsonl``) and yields each new complete object."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """Return the objects appended since the last call (incomplete last lines wait)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() < self._offset:  # replaced or truncated: start over
                    self._offset, self._partial = 0, b""
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        rows: list[dict[str, Any]] = []
        for raw in complete:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                logger.warning("%s: skipping a line that is not JSON (%s)", self.path, exc)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                logger.warning("%s: skipping a line that is not a JSON object", self.path)
        return rows


def read_from(path: Path, offset: int) -> str:
    """The text a log gained after ``offset`` bytes, without ANSI colours."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return _ANSI.sub("", data.decode("utf-8", errors="replace"))


def remove_stale_results(out_dir: Path) -> list[str]:
    """Delete ``rounds.jsonl`` / ``federation.json`` of an earlier run in ``out_dir``; return their names."""
    removed = []
    for name in ("rounds.jsonl", "federation.json"):
        path = out_dir / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed


def read_federation(out_dir: Path) -> dict[str, Any] | None:
    """The parsed ``OUT/federation.json``, or ``None`` if it is missing or not a JSON object."""
    try:
        data = json.loads((out_dir / "federation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
