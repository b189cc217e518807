"""Read a bank's own transactions CSV through the scenario's column mapping, and write such CSVs."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np

from fedcore.config import ColumnMapping, CsvData
from fedcore.data.transactions import DataError, Transactions

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "t", "yes", "y", "1.0"}
_FALSE = {"0", "false", "f", "no", "n", "0.0"}
_EXAMPLE_TIME = "2024-03-01T12:30:00Z"


def _where(path: Path, line: int, column: str) -> str:
    return f"{path}, line {line}, column {column!r}"


def _parse_float(text: str, path: Path, line: int, column: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise DataError(
            f"{_where(path, line, column)}: cannot read {what} {text!r}; expected a number "
            "such as 12.5 (no currency symbols or thousands separators)"
        ) from None
    if not math.isfinite(value):
        raise DataError(
            f"{_where(path, line, column)}: {what} is {text!r}; expected a finite number "
            "(fix or drop the row)"
        )
    return value


def parse_timestamp(text: str) -> float:
    """UNIX seconds from ISO-8601 (naive means UTC; ``Z`` and offsets allowed) or UNIX seconds.

    Raises:
        ValueError: if ``text`` is neither.
    """
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"non-finite timestamp {text!r}")
        return value
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _parse_label(text: str, path: Path, line: int, column: str) -> int:
    s = text.strip().lower()
    if s in _TRUE:
        return 1
    if s in _FALSE:
        return 0
    raise DataError(
        f"{_where(path, line, column)}: cannot read label {text!r}; expected 1 (fraud) or "
        "0 (legitimate), or true/false"
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

    Timestamps may be ISO-8601 (naive values are UTC) or UNIX seconds; labels 0/1 or
    true/false. Unmapped merchant/device columns become ``""``; an unmapped transaction
    id becomes ``line-N``. Blank lines are skipped. Rows are sorted by time (stable).

    Args:
        src: Path, delimiter and column mapping from the scenario or site config.
        feature_names: Canonical extra feature names to read (``task.features``); each
            must be mapped in ``src.columns.features``.

    Returns:
        The transactions, sorted by time.

    Raises:
        DataError: for a missing or empty file, header columns that are missing (listing
            them and the columns found), or a value that cannot be parsed or is not
            finite (naming line, column and value).
    """
    path = Path(src.path)
    mapping = src.columns
    unmapped = [f for f in feature_names if f not in mapping.features]
    if unmapped:
        raise DataError(
            f"{path}: task feature(s) {', '.join(unmapped)} have no column in data.columns.features "
            f"(mapped: {', '.join(sorted(mapping.features)) or 'none'}); add e.g. "
            f"'{unmapped[0]}: <csv column>' there"
        )
    if not path.exists():
        raise DataError(f"{path}: file not found; check data.path in the site config")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file; data.path must name a CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return _read(
                fh, path, src.delimiter, _required_columns(mapping, feature_names), feature_names
            )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None


def _read(
    fh: TextIO, path: Path, delimiter: str, cols: dict[str, str], feature_names: Sequence[str]
) -> Transactions:
    reader = csv.reader(fh, delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [c.strip() for c in row]
            header_line = reader.line_num
            break
    if header is None:
        raise DataError(f"{path}: file is empty; expected a header line and transactions")
    missing = [f"{col!r} (for {field})" for field, col in cols.items() if col not in header]
    if missing:
        raise DataError(
            f"{path}, line {header_line}: header lacks column(s) {', '.join(missing)}; "
            f"columns found: "
            f"{', '.join(repr(h) for h in header)}. Fix data.columns in the config or the CSV header"
            + (f" (delimiter is {delimiter!r})" if len(header) == 1 else "")
        )
    pos = {field: header.index(col) for field, col in cols.items()}
    width = len(header)
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
        if len(row) < width:
            raise DataError(
                f"{path}, line {line}: expected {width} fields as in the header, found {len(row)}; "
                "check for a missing delimiter or an unquoted value"
            )
        for field in ("payer", "payee"):
            if not row[pos[field]].strip():
                raise DataError(
                    f"{_where(path, line, cols[field])}: {field} account id is empty; every "
                    "transaction needs one"
                )
        ids.append(
            row[pos["transaction_id"]].strip() if "transaction_id" in pos else f"line-{line}"
        )
        payer.append(row[pos["payer"]].strip())
        payee.append(row[pos["payee"]].strip())
        merchant.append(row[pos["merchant"]].strip() if "merchant" in pos else "")
        device.append(row[pos["device"]].strip() if "device" in pos else "")
        amount.append(_parse_float(row[pos["amount"]], path, line, cols["amount"], "amount"))
        raw_ts = row[pos["timestamp"]]
        try:
            stamp.append(parse_timestamp(raw_ts))
        except (ValueError, OverflowError, OSError):
            raise DataError(
                f"{_where(path, line, cols['timestamp'])}: cannot read timestamp {raw_ts!r}; "
                f"expected ISO-8601 such as {_EXAMPLE_TIME} or UNIX seconds such as 1709296200"
            ) from None
        label.append(_parse_label(row[pos["label"]], path, line, cols["label"]))
        for f in feature_names:
            key = f"features.{f}"
            feats[f].append(_parse_float(row[pos[key]], path, line, cols[key], f"feature {f}"))
    if not ids:
        raise DataError(f"{path}: has a header but no transactions")
    tx = Transactions(
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
    log.info("%s: read %d transactions (%d fraud)", path, len(tx), tx.num_fraud)
    return tx.sorted_by_time()


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
