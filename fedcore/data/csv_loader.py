"""Read a bank's own transactions CSV through the scenario's column mapping, and write such CSVs."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fedcore.config import ColumnMapping, CsvData
from fedcore.data.transactions import DataError, DataFileMissing, Transactions

if TYPE_CHECKING:
    from _csv import Reader as _reader

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "t", "yes", "y", "1.0"}
_FALSE = {"0", "false", "f", "no", "n", "0.0"}
_EXAMPLE_TIME = "2024-03-01T12:30:00Z"

MAX_PROBLEMS = 20
"""Problems listed in one :class:`DataError` (the rest are counted)."""
MAX_LINE_CHARS = 65_536
"""Longest line read (characters); a longer one is reported and skipped unread."""
MAX_AMOUNT = 1e12
"""Largest transaction amount accepted (amounts are ``0 <= amount <= MAX_AMOUNT``)."""
MAX_FEATURE = 1e12
"""Largest absolute value of an extra numeric feature."""
EARLIEST_TIME = 631_152_000.0
"""Earliest timestamp accepted: 1990-01-01T00:00:00Z."""
FUTURE_TOLERANCE_S = 86_400.0
"""How far past the reading machine's clock a timestamp may lie (one day, for clock skew)."""
CSV_FIELD_LIMIT = 131_072
"""Longest field (characters), e.g. a quoted value that runs on over many lines."""

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DELIMITERS = (",", ";", "\t", "|")


def _where(path: Path, line: int, column: str) -> str:
    return f"{path}, line {line}, column {column!r}"


def _shown(text: str, limit: int = 40) -> str:
    """``repr`` of a found value, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_number(text: str) -> float:
    """A plain decimal number: digits, an optional sign, decimal point and exponent.

    Stricter than ``float``: ``1_000``, ``0x10``, ``nan``, ``inf`` and ``infinity`` are
    refused, and so is a value that overflows to infinity (``1e400``).

    Raises:
        ValueError: naming what was expected.
    """
    s = text.strip()
    if not _NUMBER.fullmatch(s):
        raise ValueError(f"not a plain decimal number: {text!r}")
    value = float(s)
    if not math.isfinite(value):
        raise ValueError(f"overflows to infinity: {text!r}")
    return value


def parse_timestamp(text: str) -> float:
    """UNIX seconds from ISO-8601 (naive means UTC; ``Z`` and offsets allowed) or UNIX seconds.

    UNIX seconds are a plain decimal number (see :func:`parse_number`).

    Raises:
        ValueError: if ``text`` is neither.
    """
    s = text.strip()
    if _NUMBER.fullmatch(s):
        return parse_number(s)
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class _Problems:
    """The problems of one file: the first :data:`MAX_PROBLEMS` kept, all counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.shown) < MAX_PROBLEMS:
            self.shown.append(message)

    def error(self) -> DataError:
        if self.total == 1:
            return DataError(self.shown[0], self.shown, 1)
        more = self.total - len(self.shown)
        lines = [f"{self.path}: {self.total} problems:", *(f"  {m}" for m in self.shown)]
        if more:
            lines.append(f"  ... and {more} more (the first {len(self.shown)} are shown)")
        return DataError("\n".join(lines), self.shown, self.total)


def _parse_float(
    text: str, where: str, what: str, low: float, high: float, hint: str
) -> float | str:
    """The value, or the message saying why it cannot be used."""
    try:
        value = parse_number(text)
    except ValueError:
        if text.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
            return (
                f"{where}: {what} is {_shown(text)}; expected a finite number (fix or drop the row)"
            )
        return (
            f"{where}: cannot read {what} {_shown(text)}; expected a number such as 12.5 "
            "(digits, an optional sign, decimal point and exponent; no currency symbols, "
            "thousands separators, underscores or hex)"
        )
    if not low <= value <= high:
        return f"{where}: {what} {_shown(text)} is out of range; expected {hint}"
    return value


def _check_time(value: float, text: str, where: str, now: float) -> str | None:
    if value < EARLIEST_TIME:
        return (
            f"{where}: timestamp {_shown(text)} is before 1990-01-01; expected a date-time "
            f"such as {_EXAMPLE_TIME} or UNIX seconds such as 1709296200"
        )
    if value > now + FUTURE_TOLERANCE_S:
        hint = " (UNIX milliseconds? divide by 1000)" if 1e12 <= value < 1e14 else ""
        return (
            f"{where}: timestamp {_shown(text)} lies in the future (more than a day past this "
            f"machine's clock){hint}; fix the value or the clock"
        )
    return None


def _parse_label(text: str, where: str) -> int | str:
    s = text.strip().lower()
    if s in _TRUE:
        return 1
    if s in _FALSE:
        return 0
    return (
        f"{where}: cannot read label {_shown(text)}; expected 1 (fraud) or 0 (legitimate), "
        "or true/false"
    )


def _required_columns(mapping: ColumnMapping, feature_names: Sequence[str]) -> dict[str, str]:
    """Field -> CSV column for everything the loader reads."""
    cols: dict[str, str] = {
        "payer": mapping.payer,
        "payee": mapping.payee,
        "amount": mapping.amount,
        "timestamp": mapping.timestamp,
        "label": mapping.label,
    }
    for name in ("transaction_id", "merchant", "device"):
        value = getattr(mapping, name)
        if value is not None:
            cols[name] = value
    for name in feature_names:
        cols[f"features.{name}"] = mapping.features[name]
    return cols


def load_transactions_csv(src: CsvData, feature_names: Sequence[str]) -> Transactions:
    """Read a bank's transactions CSV (stdlib ``csv``) into :class:`Transactions`.

    The file is UTF-8 (a byte-order mark is allowed); its first non-blank line is the
    header, whose column names must be unique; columns not in the mapping are ignored.
    Every line has as many fields as the header. Amounts and features are plain decimal
    numbers (no ``1_000``, hex, NaN or infinity), amounts within ``[0, MAX_AMOUNT]`` and
    features within ``[-MAX_FEATURE, MAX_FEATURE]``. Timestamps may be ISO-8601 (naive
    values are UTC) or UNIX seconds, from 1990-01-01 to one day past this machine's clock;
    rows may come in any order (they are sorted by time, stable). Labels are 0/1 or
    true/false. Transaction ids, when mapped, are unique; a row repeated exactly is
    refused too. Unmapped merchant/device columns become ``""``; an unmapped transaction
    id becomes ``line-N``. Blank lines are skipped. The file is read line by line, a line
    longer than :data:`MAX_LINE_CHARS` is reported without being kept in memory.

    Args:
        src: Path, delimiter and column mapping from the scenario or site config.
        feature_names: Canonical extra feature names to read (``task.features``); each
            must be mapped in ``src.columns.features``.

    Returns:
        The transactions, sorted by time.

    Raises:
        DataError: naming the file, and for each problem (the first :data:`MAX_PROBLEMS`,
            then a count) the line, the column, what was found and what was expected.
    """
    path = Path(src.path)
    mapping = src.columns
    feature_names = list(dict.fromkeys(feature_names))  # a feature named twice is read once
    unmapped = [f for f in feature_names if f not in mapping.features]
    if unmapped:
        raise DataError(
            f"{path}: task feature(s) {', '.join(unmapped)} have no column in data.columns.features "
            f"(mapped: {', '.join(sorted(mapping.features)) or 'none'}); add e.g. "
            f"'{unmapped[0]}: <csv column>' there"
        )
    if not path.exists():
        raise DataFileMissing(f"{path}: file not found; check data.path in the site config")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file; data.path must name a CSV file")
    problems = _Problems(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            tx = _read(
                fh,
                path,
                src.delimiter,
                _required_columns(mapping, feature_names),
                feature_names,
                problems,
            )
    except UnicodeDecodeError:
        raise DataError(f"{path}: {_bad_utf8(path)}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if problems.total:
        raise problems.error()
    assert tx is not None
    log.info("%s: read %d transactions (%d fraud)", path, len(tx), tx.num_fraud)
    return tx.sorted_by_time()


def _bad_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 lies, as a message (read in bounded pieces)."""
    line, column = 1, 1
    with path.open("rb") as fb:
        while piece := fb.readline(1 << 20):
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data" or piece.endswith(b"\n"):
                    return (
                        f"not UTF-8 text: byte {piece[exc.start : exc.start + 1]!r} at line "
                        f"{line}, byte {column + exc.start} of the line (binary data?); "
                        "expected a CSV saved as UTF-8"
                    )
            if piece.endswith(b"\n"):
                line, column = line + 1, 1
            else:
                column += len(piece)
    return "not UTF-8 text; expected a CSV saved as UTF-8"


def _lines(fh: TextIO, path: Path, problems: _Problems) -> Iterator[str]:
    """The file's lines for ``csv.reader``, one per physical line so its line numbers hold.

    A line longer than :data:`MAX_LINE_CHARS` or holding a control character (a NUL byte,
    binary data) is reported and given as a blank line, which the reader skips.
    """
    number = 0
    while line := fh.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            length = len(line)
            while line and not line.endswith(("\n", "\r")):
                line = fh.readline(MAX_LINE_CHARS + 1)
                length += len(line)
            problems.add(
                f"{path}, line {number}: longer than {MAX_LINE_CHARS} characters "
                f"({length}); expected one transaction per line: is this the right file?"
            )
            yield "\n"
            continue
        bad = _CONTROL.search(line)
        if bad is not None:
            problems.add(
                f"{path}, line {number}, character {bad.start() + 1}: control character "
                f"{bad.group()!r} (binary data or a NUL byte); expected text: remove it"
            )
            yield "\n"
            continue
        yield line


def _header_problem(
    path: Path, line: int, header: list[str], cols: dict[str, str], delimiter: str
) -> str | None:
    """Why ``header`` cannot be read with ``cols`` (duplicate or missing columns), or ``None``."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name and name in seen:
            return (
                f"{path}, line {line}: the header names column {name!r} twice (columns "
                f"{seen[name]} and {i}); expected unique column names: rename or drop one"
            )
        seen[name] = i
    missing = [f"{col!r} (for {field})" for field, col in cols.items() if col not in header]
    if not missing:
        return None
    guess = ""
    for other in _DELIMITERS:
        if other == delimiter:
            continue
        split = {c.strip() for cell in header for c in cell.split(other)}
        if len(split) > len(header) and set(cols.values()) <= split:
            guess = (
                f"; the file looks delimited by {other!r}, not {delimiter!r}: set "
                f"data.delimiter: {other!r}"
            )
            break
    if not guess and len(header) == 1:
        guess = f" (delimiter is {delimiter!r}: is that the file's?)"
    return (
        f"{path}, line {line}: header lacks column(s) {', '.join(missing)}; "
        f"columns found: {', '.join(_shown(h, 200) for h in header[:30])}"
        + (f" and {len(header) - 30} more" if len(header) > 30 else "")
        + f". Fix data.columns in the config or the CSV header{guess}"
    )


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _repeats(keys: np.ndarray) -> list[tuple[int, int]]:
    """``(first, later)`` index pairs of equal ``keys``, ordered by ``later``."""
    if len(keys) < 2:
        return []
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    run_first = order[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    later = np.flatnonzero(~starts)
    pairs = sorted((int(order[i]), int(run_first[i])) for i in later)
    return [(first, dup) for dup, first in pairs]


def _read(
    fh: TextIO,
    path: Path,
    delimiter: str,
    cols: dict[str, str],
    feature_names: Sequence[str],
    problems: _Problems,
) -> Transactions | None:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(_lines(fh, path, problems), delimiter=delimiter)
    try:
        return _read_rows(reader, path, delimiter, cols, feature_names, problems)
    except csv.Error as exc:
        problems.add(malformed_csv(path, reader.line_num, exc))
        return None


def malformed_csv(path: Path, line: int, exc: csv.Error) -> str:
    """The message for a line the ``csv`` module cannot parse (an unclosed quote, mostly)."""
    hint = (
        "; a quoted value runs on (an unclosed quote?): close the quote"
        if "field larger" in str(exc)
        else ""
    )
    return f"{path}, line {line}: malformed CSV ({exc}){hint}"


def width_problem(path: Path, line: int, width: int, found: int) -> str:
    """The message for a line with ``found`` fields where the header has ``width``."""
    fix = (
        "check for a missing delimiter or an unquoted value"
        if found < width
        else "a delimiter inside a value? quote the value, or drop the extra field"
    )
    return f"{path}, line {line}: expected {width} fields as in the header, found {found}; {fix}"


def read_header(
    reader: _reader, path: Path, problems: _Problems, rows: str
) -> tuple[list[str], int] | None:
    """The first non-blank line's cells (trimmed) and its line number; ``None`` (a problem
    noted) when the file has none. ``rows`` names what the file holds, for the message."""
    for row in reader:
        if any(cell.strip() for cell in row):
            return [c.strip() for c in row], reader.line_num
    if not problems.total:
        problems.add(f"{path}: file is empty; expected a header line and {rows}")
    return None


def _read_rows(
    reader: _reader,
    path: Path,
    delimiter: str,
    cols: dict[str, str],
    feature_names: Sequence[str],
    problems: _Problems,
) -> Transactions | None:
    found = read_header(reader, path, problems, "transactions")
    if found is None:
        return None
    header, header_line = found
    why = _header_problem(path, header_line, header, cols, delimiter)
    if why is not None:
        problems.add(why)
        return None
    pos = {field: header.index(col) for field, col in cols.items()}
    width = len(header)
    now = time.time()
    lines: list[int] = []
    row_keys: list[int] = []
    ids: list[str] = []
    payer: list[str] = []
    payee: list[str] = []
    merchant: list[str] = []
    device: list[str] = []
    amount: list[float] = []
    stamp: list[float] = []
    label: list[int] = []
    feats: dict[str, list[float]] = {f: [] for f in feature_names}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != width:
            problems.add(width_problem(path, line, width, len(row)))
            continue
        bad = False

        def report(message: str) -> None:
            nonlocal bad
            bad = True
            problems.add(message)

        for field in ("payer", "payee", "transaction_id"):
            if field in pos and not row[pos[field]].strip():
                report(
                    f"{_where(path, line, cols[field])}: {field.replace('_', ' ')} is empty; "
                    "every transaction needs one"
                )
        money = _parse_float(
            row[pos["amount"]],
            _where(path, line, cols["amount"]),
            "amount",
            0.0,
            MAX_AMOUNT,
            f"0 <= amount <= {MAX_AMOUNT:g}",
        )
        if isinstance(money, str):
            report(money)
        raw_ts = row[pos["timestamp"]]
        when = _where(path, line, cols["timestamp"])
        try:
            ts = parse_timestamp(raw_ts)
        except (ValueError, OverflowError, OSError):
            report(
                f"{when}: cannot read timestamp {_shown(raw_ts)}; expected ISO-8601 such as "
                f"{_EXAMPLE_TIME} or UNIX seconds such as 1709296200"
            )
            ts = 0.0
        else:
            if (why := _check_time(ts, raw_ts, when, now)) is not None:
                report(why)
        lab = _parse_label(row[pos["label"]], _where(path, line, cols["label"]))
        if isinstance(lab, str):
            report(lab)
        values: dict[str, float] = {}
        for f in feature_names:
            key = f"features.{f}"
            v = _parse_float(
                row[pos[key]],
                _where(path, line, cols[key]),
                f"feature {f}",
                -MAX_FEATURE,
                MAX_FEATURE,
                f"|value| <= {MAX_FEATURE:g}",
            )
            if isinstance(v, str):
                report(v)
            else:
                values[f] = v
        if bad or isinstance(money, str) or isinstance(lab, str):
            continue
        lines.append(line)
        row_keys.append(_digest("\x00".join(c.strip() for c in row)))
        ids.append(
            row[pos["transaction_id"]].strip() if "transaction_id" in pos else f"line-{line}"
        )
        payer.append(row[pos["payer"]].strip())
        payee.append(row[pos["payee"]].strip())
        merchant.append(row[pos["merchant"]].strip() if "merchant" in pos else "")
        device.append(row[pos["device"]].strip() if "device" in pos else "")
        amount.append(money)
        stamp.append(ts)
        label.append(lab)
        for f in feature_names:
            feats[f].append(values[f])
    _report_repeats(path, cols, lines, row_keys, ids, problems)
    if problems.total:
        return None
    if not ids:
        problems.add(
            f"{path}: has a header but no transactions; expected rows after line {header_line}"
        )
        return None
    return Transactions(
        tx_id=np.array(ids, dtype=object),
        payer=np.array(payer, dtype=object),
        payee=np.array(payee, dtype=object),
        merchant=np.array(merchant, dtype=object),
        device=np.array(device, dtype=object),
        amount=np.array(amount, dtype=np.float64),
        timestamp=np.array(stamp, dtype=np.float64),
        label=np.array(label, dtype=np.int64),
        features={f: np.array(v, dtype=np.float64) for f, v in feats.items()},
    )


def _report_repeats(
    path: Path,
    cols: dict[str, str],
    lines: list[int],
    row_keys: list[int],
    ids: list[str],
    problems: _Problems,
) -> None:
    """Report rows repeated exactly and transaction ids used twice, in file order."""
    keys = np.array(row_keys, dtype=np.uint64)
    same_row = set(_repeats(keys))
    for first, dup in same_row:
        problems.add(
            f"{path}, line {lines[dup]}: repeats line {lines[first]} exactly (the same "
            "transaction twice); remove one of them"
        )
    if "transaction_id" not in cols:
        return
    id_keys = np.array([_digest(i) for i in ids], dtype=np.uint64)
    for first, dup in _repeats(id_keys):
        if ids[first] != ids[dup] or (first, dup) in same_row:
            continue
        problems.add(
            f"{_where(path, lines[dup], cols['transaction_id'])}: transaction id "
            f"{_shown(ids[dup])} is also on line {lines[first]}; expected unique ids: fix one"
        )


def default_mapping(feature_names: Sequence[str]) -> ColumnMapping:
    """The column names :func:`write_transactions_csv` uses by default."""
    return ColumnMapping(
        transaction_id="tx_id",
        payer="payer",
        payee="payee",
        merchant="merchant",
        device="device",
        amount="amount",
        timestamp="timestamp",
        label="label",
        features={f: f for f in feature_names},
    )


def _iso(ts: float) -> str:
    text = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def write_transactions_csv(
    tx: Transactions, path: Path, mapping: ColumnMapping | None = None
) -> ColumnMapping:
    """Write ``tx`` as a CSV that :func:`load_transactions_csv` reads back.

    Timestamps are written as ISO-8601 UTC with milliseconds (``2024-01-01T08:15:00.000Z``).

    Args:
        tx: The transactions.
        path: Output file (parent folders are created).
        mapping: Column names to use; default :func:`default_mapping` of all features.
            Optional columns mapped to ``None`` and unmapped features are left out.

    Returns:
        The mapping that reads the file back.
    """
    mapping = mapping or default_mapping(sorted(tx.features))
    fields: list[tuple[str, list[str]]] = []
    if mapping.transaction_id is not None:
        fields.append((mapping.transaction_id, [str(v) for v in tx.tx_id]))
    fields.append((mapping.payer, [str(v) for v in tx.payer]))
    fields.append((mapping.payee, [str(v) for v in tx.payee]))
    if mapping.merchant is not None:
        fields.append((mapping.merchant, [str(v) for v in tx.merchant]))
    if mapping.device is not None:
        fields.append((mapping.device, [str(v) for v in tx.device]))
    fields.append((mapping.amount, [repr(float(v)) for v in tx.amount]))
    fields.append((mapping.timestamp, [_iso(float(v)) for v in tx.timestamp]))
    fields.append((mapping.label, [str(int(v)) for v in tx.label]))
    for name, col in mapping.features.items():
        if name in tx.features:
            fields.append((col, [repr(float(v)) for v in tx.features[name]]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in fields])
        writer.writerows(zip(*(values for _, values in fields), strict=True))
    return mapping
