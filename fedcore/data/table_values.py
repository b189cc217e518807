"""Parse one column of a site's table at a time: numbers, timestamps in each format, labels and ids, reporting each bad cell."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from fedcore.data.csv_loader import _NUMBER, _shown, parse_number

MISSING = frozenset({"", "na", "nan", "null", "none"})
"""Cell texts (trimmed, lower-cased) that mean a missing value."""
INFINITE = {
    "inf": math.inf,
    "+inf": math.inf,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-inf": -math.inf,
    "-infinity": -math.inf,
}
"""Cell texts (trimmed, lower-cased) that mean an infinite number."""
MILLISECONDS_HINT = 1e12
"""UNIX seconds at or above this (year 33658) are taken for milliseconds written as seconds."""

_EXAMPLES = {
    "iso": "ISO 8601 such as 2024-03-01T12:30:00Z (no zone: UTC; Z or +01:00 allowed)",
    "unix_s": "UNIX seconds such as 1709296200",
    "unix_ms": "UNIX milliseconds such as 1709296200000",
    "offset_s": "seconds from the origin such as 0, 1, 86400",
}
_NUMBER_FORM = (
    "a plain number such as 12.5 (digits, an optional sign, decimal point and exponent; "
    "no currency symbols, thousands separators or units); an empty cell or NA means missing"
)
_NOT_PLAIN = re.compile(r"[^0-9eE.+\- \t\n]")
"""A character no plain number holds: its absence lets a column be parsed at once."""

Problem = tuple[int, str]
"""``(index of the cell in the column, message)``; the caller adds file, line and column."""


def parse_numbers(cells: Sequence[str], what: str) -> tuple[np.ndarray, list[Problem]]:
    """A column of numbers: missing markers give ``nan``, ``inf``/``-inf`` give infinities.

    A column whose cells hold only digits, signs, points, exponents and blanks is parsed
    at once (a text of those characters that ``float`` reads is a plain number); any
    other column, or one that does not convert, cell by cell.

    Args:
        cells: ``[n]`` cell texts.
        what: The role, for messages (``feature income``, ``amount``).

    Returns:
        ``float64 [n]`` values (``nan`` where missing or unreadable) and the problems.
    """
    if cells and _NOT_PLAIN.search("\n".join(cells)) is None:
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = None
        if values is not None and np.isfinite(values).all():
            return values, []
    out = np.full(len(cells), np.nan)
    problems: list[Problem] = []
    for i, text in enumerate(cells):
        key = text.strip().lower()
        if key in MISSING:
            continue
        if key in INFINITE:
            out[i] = INFINITE[key]
            continue
        try:
            out[i] = parse_number(text)
        except ValueError as exc:
            why = "overflows to infinity" if "overflows" in str(exc) else "cannot be read"
            problems.append((i, f"{what} {_shown(text)} {why}; expected {_NUMBER_FORM}"))
    return out, problems


def _iso(text: str) -> float:
    s = text.strip()
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def origin_seconds(origin: str | None) -> float:
    """UNIX seconds of an ``offset_s`` origin (``None``: 0, i.e. 1970-01-01T00:00:00Z)."""
    return 0.0 if origin is None else _iso(origin)


def times_from_numbers(
    values: np.ndarray, fmt: str, origin: str | None, texts: Sequence[str] | None = None
) -> tuple[np.ndarray, list[Problem]]:
    """UNIX seconds from numbers written in ``fmt`` (``unix_s``, ``unix_ms`` or ``offset_s``).

    Args:
        values: ``float64 [n]`` numbers as written (``nan``: missing, kept).
        fmt: The column's format.
        origin: ``offset_s`` only: the ISO 8601 time of offset 0 (``None``: the UNIX epoch).
        texts: The cells as written, for messages (default: the numbers).

    Returns:
        ``float64 [n]`` seconds and the problems (infinite values; for ``unix_s``, values
        that look like milliseconds).
    """

    def shown(i: int) -> str:
        return _shown(texts[i]) if texts is not None else repr(float(values[i]))

    problems: list[Problem] = [
        (int(i), f"timestamp {shown(int(i))} is infinite; expected {_EXAMPLES[fmt]}")
        for i in np.flatnonzero(np.isinf(values))
    ]
    if fmt == "unix_ms":
        return values / 1000.0, problems
    if fmt == "offset_s":
        return values + origin_seconds(origin), problems
    for i in np.flatnonzero(np.isfinite(values) & (np.abs(values) >= MILLISECONDS_HINT)):
        problems.append(
            (
                int(i),
                f"timestamp {shown(int(i))} looks like UNIX milliseconds, not seconds; set "
                "timestamp format: unix_ms in data.columns",
            )
        )
    problems.sort()
    return values, problems


def parse_times(
    cells: Sequence[str], fmt: str, origin: str | None
) -> tuple[np.ndarray, list[Problem]]:
    """UNIX seconds from a column of timestamps written as ``fmt``; missing markers give ``nan``.

    Formats: ``iso`` (ISO 8601; naive means UTC; ``Z`` and offsets allowed), ``unix_s``,
    ``unix_ms`` (divided by 1000), ``offset_s`` (seconds from ``origin``; ``None``: the
    offsets are kept as they are).

    Returns:
        ``float64 [n]`` seconds and the problems, each naming the expected form.
    """
    if fmt != "iso":
        numbers, problems = parse_numbers(cells, "timestamp")
        problems = [(i, m.replace(_NUMBER_FORM, _EXAMPLES[fmt])) for i, m in problems]
        values, more = times_from_numbers(numbers, fmt, origin, cells)
        return values, sorted(problems + more)
    out = np.full(len(cells), np.nan)
    problems = []
    for i, text in enumerate(cells):
        if text.strip().lower() in MISSING:
            continue
        try:
            out[i] = _iso(text)
        except (ValueError, OverflowError, OSError):
            hint = (
                "; it looks like a number: set timestamp format unix_s, unix_ms or offset_s"
                if _NUMBER.fullmatch(text.strip())
                else ""
            )
            problems.append(
                (i, f"cannot read timestamp {_shown(text)}; expected {_EXAMPLES['iso']}{hint}")
            )
    return out, problems


def parse_labels(
    cells: Sequence[str | None], positive: Sequence[str], negative: Sequence[str]
) -> tuple[np.ndarray, list[Problem]]:
    """1 (fraud) / 0 (legitimate) from label texts, compared trimmed and case-insensitive.

    Args:
        cells: ``[n]`` label texts (``None``: a null in a Parquet file).
        positive: The values meaning fraud.
        negative: The values meaning legitimate.

    Returns:
        ``int64 [n]`` labels (``-1`` where unreadable) and the problems: every value
        that is neither positive nor negative, a missing one included.
    """
    known = {v.strip().lower(): 0 for v in negative} | {v.strip().lower(): 1 for v in positive}
    out = np.array([known.get((c or "").strip().lower(), -1) for c in cells], dtype=np.int64)
    allowed = (
        f"expected {' / '.join(map(repr, positive))} (fraud) or "
        f"{' / '.join(map(repr, negative))} (legitimate): fix the row or list the value in "
        "data.columns.label.positive or .negative"
    )
    problems: list[Problem] = []
    for i in np.flatnonzero(out < 0):
        text = cells[int(i)]
        found = "is missing" if text is None or not text.strip() else f"{_shown(text)} is unknown"
        problems.append((int(i), f"label {found}; {allowed}"))
    return out, problems


def parse_texts(cells: Sequence[str | None]) -> np.ndarray:
    """Ids or categories: ``object [n]`` of trimmed ``str``; ``None`` (a null) gives ``""``."""
    return np.array(["" if c is None else str(c).strip() for c in cells], dtype=object)
