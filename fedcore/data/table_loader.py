"""Read a site's own table (CSV or Parquet, streamed) through its column mapping into a :class:`Table`."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.config import TableData, TaskSpec
from fedcore.data.csv_loader import (
    CSV_FIELD_LIMIT,
    _bad_utf8,
    _header_problem,
    _lines,
    _Problems,
    _shown,
    malformed_csv,
    read_header,
    width_problem,
)
from fedcore.data.table import Table
from fedcore.data.table_values import (
    Problem,
    parse_labels,
    parse_numbers,
    parse_texts,
    parse_times,
    times_from_numbers,
)
from fedcore.data.transactions import DataError, DataFileMissing

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
"""Rows parsed at once (CSV) or read per Parquet batch."""

Columns = dict[str, np.ndarray]
"""Role key (``label``, ``timestamp``, ``amount``, ``entities.R``, ``features.F``,
``categorical.C``) -> parsed values."""


def selected_columns(
    src: TableData, task: TaskSpec | None = None
) -> tuple[dict[str, str], list[str]]:
    """Which columns to read: role key -> column, and the task's entity roles the site leaves unmapped.

    Label, timestamp and amount are read when mapped. With a task, only its entity,
    feature and categorical roles are read; without one, every mapped column.

    Raises:
        DataError: a feature or categorical role of the task has no column at this site.
    """
    cols = src.columns
    mapped = cols.columns()
    if task is None:
        return mapped, []
    keep = {k: v for k, v in mapped.items() if k in ("label", "timestamp", "amount")}
    unmapped_entities = [r for r in task.entities if r not in cols.entities]
    keep.update(
        {f"entities.{r}": cols.entities[r].column for r in task.entities if r in cols.entities}
    )
    missing: list[str] = []
    for kind, roles, have in (
        ("features", list(task.features), cols.features),
        ("categorical", list(task.categorical), cols.categorical),
    ):
        for role in roles:
            if role in have:
                keep[f"{kind}.{role}"] = have[role]
            else:
                missing.append(f"{kind}.{role}")
    if missing:
        first = missing[0].split(".", 1)
        raise DataError(
            f"{src.path}: the task's role(s) {', '.join(missing)} have no column at this site "
            f"(mapped: {', '.join(sorted(mapped)) or 'none'}); map each in data.columns, "
            f"e.g. {first[0]}: {{{first[1]}: <column>}}"
        )
    return keep, unmapped_entities


def _text(value: object) -> str:
    """A Parquet value as the text a CSV would hold: a whole float without ``.0`` (``1.0`` -> ``1``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_table(src: TableData, task: TaskSpec | None = None) -> Table:
    """Read a site's table (CSV or Parquet) into a :class:`Table`, rows in file order.

    The file is streamed (CSV line by line with stdlib ``csv``, Parquet batch by batch)
    and only the mapped columns the task needs are read. Missing numbers and timestamps
    (an empty cell, ``NA``, ``NaN``, ``null``, ``none``) become ``nan`` and ``inf`` /
    ``-inf`` / ``infinity`` are kept: the cleaning step decides. Any other unreadable
    value is a problem, and so is a label that is neither positive nor negative.

    Args:
        src: Path, format, delimiter and column mapping from the site's config.
        task: The roles to read (``task.entities``, ``task.features``,
            ``task.categorical``); ``None``: every mapped column. An entity role the site
            does not map gives ``""`` ids; an unmapped feature role is an error.

    Returns:
        The table: ``n`` rows in file order, ``line`` holding the CSV line or the 1-based
        Parquet row.

    Raises:
        DataError: naming the file, and for each problem (the first
            :data:`~fedcore.data.csv_loader.MAX_PROBLEMS`, then a count) the line or row,
            the column, what was found and what was expected.
    """
    path = Path(src.path)
    cols, unmapped = selected_columns(src, task)
    if not path.exists():
        raise DataFileMissing(f"{path}: file not found; check data.path in the site config")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file; data.path must name a CSV or Parquet file")
    problems = _Problems(path)
    if src.file_format == "parquet":
        read = _read_parquet(path, src, cols, problems)
    else:
        read = _read_csv_file(path, src, cols, problems)
    if problems.total:
        raise problems.error()
    assert read is not None
    lines, values = read
    n = len(lines)
    mapping = src.columns
    roles = [k.split(".", 1)[1] for k in cols if k.startswith("entities.")]
    table = Table(
        label=values["label"],
        line=lines,
        timestamp=values.get("timestamp"),
        amount=values.get("amount"),
        entities={
            **{r: values[f"entities.{r}"] for r in roles},
            **{r: np.full(n, "", dtype=object) for r in unmapped},
        },
        entity_types={
            **{r: mapping.entities[r].type for r in roles},
            **{r: "other" for r in unmapped},
        },
        numeric={k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("features.")},
        categorical={
            k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("categorical.")
        },
    )
    log.info("%s: read %d rows (%d fraud)", path, n, table.num_fraud)
    return table


def check_table(src: TableData, task: TaskSpec | None = None) -> list[str]:
    """Every problem that keeps a run from reading the table, one message each (``[]``: none).

    Reads the whole file as :func:`load_table` does (streamed); beyond the first
    :data:`~fedcore.data.csv_loader.MAX_PROBLEMS` a last line counts the rest.
    """
    try:
        load_table(src, task)
    except DataError as exc:
        more = exc.total - len(exc.problems)
        return [
            *exc.problems,
            *([f"... and {more} more problem(s) in this file"] if more > 0 else []),
        ]
    return []


class _Batches:
    """Parsed column pieces and the problems of each piece, added to ``problems`` in row order."""

    def __init__(
        self, src: TableData, cols: dict[str, str], problems: _Problems, unit: str
    ) -> None:
        self.src = src
        self.cols = cols
        self.problems = problems
        self.unit = unit
        self.lines: list[np.ndarray] = []
        self.pieces: dict[str, list[np.ndarray]] = {k: [] for k in cols}
        self.pending: list[tuple[int, int, str]] = []

    def where(self, line: int, key: str) -> str:
        return f"{self.src.path}, {self.unit} {line}, column {self.cols[key]!r}"

    def note(self, line: int, message: str) -> None:
        """A problem of a whole row (reported before the cell problems of that row)."""
        self.pending.append((line, -1, message))

    def add(self, key: str, values: np.ndarray, found: list[Problem], lines: np.ndarray) -> None:
        order = list(self.cols).index(key)
        self.pieces[key].append(values)
        self.pending.extend(
            (int(lines[i]), order, f"{self.where(int(lines[i]), key)}: {m}") for i, m in found
        )

    def flush(self, lines: np.ndarray) -> None:
        self.lines.append(lines)
        for _, _, message in sorted(self.pending):
            self.problems.add(message)
        self.pending = []

    def result(self) -> tuple[np.ndarray, Columns]:
        for _, _, message in sorted(self.pending):
            self.problems.add(message)
        self.pending = []
        lines = np.concatenate(self.lines) if self.lines else np.zeros(0, dtype=np.int64)
        return lines.astype(np.int64), {
            k: np.concatenate(v) if v else np.zeros(0) for k, v in self.pieces.items()
        }

    def parse_text_column(self, key: str, cells: Sequence[str], lines: np.ndarray) -> None:
        """Parse one column of cell texts by its role."""
        mapping = self.src.columns
        if key == "label":
            values, found = parse_labels(cells, mapping.label.positive, mapping.label.negative)
        elif key == "timestamp":
            assert mapping.timestamp is not None
            values, found = parse_times(cells, mapping.timestamp.format, mapping.timestamp.origin)
        elif key == "amount" or key.startswith("features."):
            values, found = parse_numbers(cells, key.replace("features.", "feature "))
        else:
            values, found = parse_texts(cells), []
        self.add(key, values, found, lines)


def _read_csv_file(
    path: Path, src: TableData, cols: dict[str, str], problems: _Problems
) -> tuple[np.ndarray, Columns] | None:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            csv.field_size_limit(CSV_FIELD_LIMIT)
            reader = csv.reader(_lines(fh, path, problems), delimiter=src.delimiter)
            try:
                return _read_csv_rows(reader, path, src, cols, problems)
            except csv.Error as exc:
                problems.add(malformed_csv(path, reader.line_num, exc))
                return None
    except UnicodeDecodeError:
        raise DataError(f"{path}: {_bad_utf8(path)}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


def _read_csv_rows(
    reader: Any, path: Path, src: TableData, cols: dict[str, str], problems: _Problems
) -> tuple[np.ndarray, Columns] | None:
    found = read_header(reader, path, problems, "rows")
    if found is None:
        return None
    header, header_line = found
    why = _header_problem(path, header_line, header, cols, src.delimiter)
    if why is not None:
        problems.add(why)
        return None
    keys = list(cols)
    pick: Callable[[list[str]], Any] = itemgetter(*[header.index(cols[k]) for k in keys])
    single = len(keys) == 1
    width = len(header)
    batches = _Batches(src, cols, problems, "line")
    rows: list[Any] = []
    lines: list[int] = []

    def flush() -> None:
        at = np.array(lines, dtype=np.int64)
        columns = [[r] for r in rows] if single else rows
        for key, cells in zip(keys, zip(*columns, strict=True) if rows else [], strict=False):
            batches.parse_text_column(key, cells, at)
        batches.flush(at)
        rows.clear()
        lines.clear()

    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != width:
            batches.note(reader.line_num, width_problem(path, reader.line_num, width, len(row)))
            continue
        rows.append(pick(row))
        lines.append(reader.line_num)
        if len(rows) >= BATCH_ROWS:
            flush()
    if rows:
        flush()
    out = batches.result()
    if not len(out[0]) and not problems.total:
        problems.add(f"{path}: has a header but no rows; expected rows after line {header_line}")
    return out


_NUMERIC_HINT = "expected a numeric type (integer, floating point or decimal): convert the column or map another"


def _parquet_type_problems(
    path: Path, src: TableData, cols: dict[str, str], schema: Any
) -> list[str]:
    """The mapped columns whose Parquet type their role cannot take."""
    import pyarrow as pa

    out = []
    for key, col in cols.items():
        typ = schema.field(col).type
        numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)
        if (key == "amount" or key.startswith("features.")) and not numeric:
            out.append(f"{path}, column {col!r} ({key}): Parquet type {typ}; {_NUMERIC_HINT}")
        if key == "timestamp" and src.columns.timestamp is not None:
            timed = pa.types.is_timestamp(typ) or pa.types.is_date(typ)
            text = pa.types.is_string(typ) or pa.types.is_large_string(typ)
            if not (numeric or timed or text):
                out.append(
                    f"{path}, column {col!r} (timestamp): Parquet type {typ}; expected a "
                    "timestamp, date, number or text type"
                )
            elif numeric and src.columns.timestamp.format == "iso":
                out.append(
                    f"{path}, column {col!r} (timestamp): holds numbers (Parquet type {typ}) but "
                    "the format is iso; set timestamp format unix_s, unix_ms or offset_s"
                )
    return out


def _parquet_seconds(array: Any) -> np.ndarray:
    """UNIX seconds from an Arrow timestamp or date array; nulls give ``nan``."""
    import pyarrow as pa

    typ = array.type
    if pa.types.is_date32(typ):
        scale = 86_400.0
    elif pa.types.is_date64(typ):
        scale = 1e-3
    else:
        scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[typ.unit]
    ints = array.cast(pa.int64()).cast(pa.float64()).fill_null(float("nan"))
    return np.asarray(ints.to_numpy(zero_copy_only=False), dtype=np.float64) * scale


def _read_parquet(
    path: Path, src: TableData, cols: dict[str, str], problems: _Problems
) -> tuple[np.ndarray, Columns] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{path}: not a readable Parquet file ({exc}); expected Parquet, or set "
            "data.format: csv"
        ) from None
    schema = pf.schema_arrow
    names = list(schema.names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.add(
            f"{path}: the Parquet schema names column(s) {', '.join(map(repr, twice))} more than once; expected unique names"
        )
        return None
    missing = [f"{c!r} (for {k})" for k, c in cols.items() if c not in names]
    if missing:
        problems.add(
            f"{path}: the Parquet schema lacks column(s) {', '.join(missing)}; columns found: "
            f"{', '.join(_shown(h, 200) for h in names[:30])}"
            + (f" and {len(names) - 30} more" if len(names) > 30 else "")
            + ". Fix data.columns in the config"
        )
        return None
    for message in _parquet_type_problems(path, src, cols, schema):
        problems.add(message)
    if problems.total:
        return None
    batches = _Batches(src, cols, problems, "row")
    stamp = src.columns.timestamp
    start = 1
    try:
        for batch in _parquet_batches(pf, sorted(set(cols.values()))):
            at = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            for key, col in cols.items():
                array = batch.column(col)
                typ = array.type
                numeric = not (pa.types.is_timestamp(typ) or pa.types.is_date(typ)) and (
                    pa.types.is_integer(typ)
                    or pa.types.is_floating(typ)
                    or pa.types.is_decimal(typ)
                )
                if key == "timestamp" and stamp is not None and not numeric:
                    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
                        batches.add(key, _parquet_seconds(array), [], at)
                    else:
                        cells = ["" if v is None else v for v in array.to_pylist()]
                        batches.parse_text_column(key, cells, at)
                elif key == "amount" or key.startswith("features.") or key == "timestamp":
                    floats = array.cast(pa.float64()).fill_null(float("nan"))
                    values = np.asarray(floats.to_numpy(zero_copy_only=False), dtype=np.float64)
                    if key == "timestamp" and stamp is not None:
                        values, found = times_from_numbers(values, stamp.format, stamp.origin)
                        batches.add(key, values, found, at)
                    else:
                        batches.add(key, values, [], at)
                else:
                    texts = [None if v is None else _text(v) for v in array.to_pylist()]
                    if key == "label":
                        label = src.columns.label
                        values, found = parse_labels(texts, label.positive, label.negative)
                        batches.add(key, values, found, at)
                    else:
                        batches.add(key, parse_texts(texts), [], at)
            batches.flush(at)
    except (pa.ArrowException, OSError) as exc:
        problems.add(f"{path}: cannot read the Parquet data ({exc}); is the file complete?")
        return None
    out = batches.result()
    if not len(out[0]) and not problems.total:
        problems.add(f"{path}: the Parquet file has no rows; expected the site's rows")
    return out


def _parquet_batches(pf: Any, columns: list[str]) -> Iterator[Any]:
    yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)
