"""Check a site's data files with the same loaders a run uses, so that ``fedcore validate`` and a run agree."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.config import CsvData, DataSource, DicomData, PacsData, TableData, TaskSpec
from fedcore.data.table import Table
from fedcore.data.transactions import DataError, Transactions


def _readable(path: Path) -> str | None:
    """Why ``path`` (a DICOM folder or DICOMDIR) cannot be read, or ``None`` if it can (cheaply)."""
    if not path.exists():
        return (
            f"{path}: no such folder or DICOMDIR; expected the folder of the site's DICOM "
            "files (or its DICOMDIR): fix data.path"
        )
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            return f"{path}: folder is not readable by this user; fix its permissions"
        if next((p for p in path.rglob("*") if p.is_file()), None) is None:
            return (
                f"{path}: folder holds no files; expected the site's DICOM series: copy them "
                "there or fix data.path"
            )
        return None
    if not os.access(path, os.R_OK):
        return f"{path}: DICOMDIR is not readable by this user; fix its permissions"
    return None


def _candidates_problem(path: Path) -> str | None:
    from fedcore.data.synthetic_ct import read_candidates

    try:
        read_candidates(path)
    except FileNotFoundError:
        return f"{path}: candidates file not found; fix data.candidates"
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        return f"data.candidates: {exc}"
    return None


def train_rows(timestamp: np.ndarray, test_fraction: float) -> np.ndarray:
    """Boolean mask of the training rows: all but the latest ``test_fraction`` by time.

    The split of :func:`fedcore.data.graph.time_split` (rows tied with the first test row
    go to test), without importing the graph code; ``timestamp`` is sorted ascending.
    """
    n = len(timestamp)
    train = np.zeros(n, dtype=bool)
    if n == 0:
        return train
    cut = max(n - max(1, int(round(n * test_fraction))), 0)
    while 0 < cut < n and timestamp[cut - 1] == timestamp[cut]:
        cut -= 1
    train[:cut] = True
    return train


def label_problem(
    tx: Transactions, test_fraction: float, path: Path | str, column: str = "label"
) -> str | None:
    """Why a site cannot train on ``tx``: its training rows lack fraud or legitimate examples.

    Args:
        tx: The site's transactions, sorted by time.
        test_fraction: ``task.test_fraction``: the latest share held out for testing.
        path: The data file, for the message.
        column: The file's label column, for the message.

    Returns:
        The message, or ``None`` when the training rows hold both labels.
    """
    labels = tx.label[train_rows(tx.timestamp, test_fraction)]
    if len(labels) == 0:
        return (
            f"{path}: no training transactions: all {len(tx)} fall in the latest "
            f"{test_fraction:.0%} held out for testing; add earlier transactions"
        )
    classes = sorted({int(v) for v in np.unique(labels)})
    if classes == [0, 1]:
        return None
    one = classes[0]
    kind = "fraud" if one == 1 else "legitimate"
    return (
        f"{path}, column {column!r}: all {len(labels)} training transactions (the earliest "
        f"{1 - test_fraction:.0%} by time) are labelled {one} ({kind}); a site needs both fraud "
        "(1) and legitimate (0) examples to train, so it cannot take part: fix the label "
        "column, or remove the site from the scenario"
    )


def table_label_problem(
    table: Table, test_fraction: float, path: Path | str, column: str
) -> str | None:
    """Why a site cannot train on ``table``: its training rows lack fraud or legitimate rows.

    The training rows are all but the latest ``test_fraction`` by time (rows without a time
    sort last); every row when the table has no time column.

    Args:
        table: The site's rows, in any order.
        test_fraction: ``task.test_fraction``.
        path: The data file, for the message.
        column: The file's label column, for the message.

    Returns:
        The message, or ``None`` when the training rows hold both labels.
    """
    if table.timestamp is None:
        labels, which = table.label, "rows"
    else:
        key = np.where(np.isnan(table.timestamp), np.inf, table.timestamp)
        order = np.argsort(key, kind="stable")
        labels = table.label[order][train_rows(key[order], test_fraction)]
        which = f"rows (the earliest {1 - test_fraction:.0%} by time)"
        if len(labels) == 0:
            return (
                f"{path}: no training rows: all {len(table)} fall in the latest "
                f"{test_fraction:.0%} held out for testing; add earlier rows"
            )
    classes = sorted({int(v) for v in np.unique(labels)})
    if classes == [0, 1] or not classes:
        return None
    kind = "fraud" if classes[0] == 1 else "legitimate"
    return (
        f"{path}, column {column!r}: all {len(labels)} training {which} are {kind}; a site "
        "needs both fraud and legitimate examples to train, so it cannot take part: fix the "
        "label column or its positive/negative values, or remove the site from the scenario"
    )


def _listed(exc: DataError) -> list[str]:
    """The problems of a :class:`DataError`, and a last line counting those not listed."""
    more = exc.total - len(exc.problems)
    tail = [f"... and {more} more problem(s) in this file"] if more > 0 else []
    return [*exc.problems, *tail]


def _cleaning_problems(table: Any, data: TableData, task: TaskSpec | None) -> list[str]:
    """What the task's cleaning step refuses in ``table`` (a rule set to ``fail`` that meets
    a value out of range, missing, non-finite or repeated), as a run would refuse it."""
    from fedcore.data.cleaning import clean

    cleaning = task.cleaning if task is not None and task.is_table else TaskSpec().cleaning
    try:
        clean(table, cleaning, data.columns.ranges)
    except DataError as exc:
        return [f"{data.path}, {m}" for m in _listed(exc)]
    return []


def site_data_problems(
    data: DataSource,
    features: Sequence[str] | None = None,
    test_fraction: float | None = None,
    task: TaskSpec | None = None,
) -> list[str]:
    """What keeps a run from reading this data source, one message per problem (``[]``: none).

    A CSV is read in full by :func:`fedcore.data.csv_loader.load_transactions_csv`, the
    loader of a run: each message names the file, the line and the column, what was
    expected and found, and how to fix it (the first
    :data:`~fedcore.data.csv_loader.MAX_PROBLEMS`, then a count). A CSV that loads must also
    hold both labels among its training rows (:func:`label_problem`). DICOM sources get a
    cheap check (the folder or DICOMDIR is readable and not empty) and their candidates CSV
    is read in full. A table in the site's own schema is read in full by
    :func:`fedcore.data.table_loader.load_table` and must hold both labels among its
    training rows (:func:`table_label_problem`). Generated and synthetic data need no files.

    Args:
        data: The site's data source (paths already resolved).
        features: The task's extra features to read from a CSV; ``None``: every feature
            mapped in ``data.columns.features`` (a site file does not name the task).
        test_fraction: ``task.test_fraction``; ``None``: the default of :class:`TaskSpec`.
        task: The scenario's task: the roles a table must provide; ``None`` (a site file):
            every column the table maps.
    """
    problems: list[str] = []
    if isinstance(data, CsvData):
        from fedcore.data.csv_loader import load_transactions_csv

        names = list(data.columns.features) if features is None else list(features)
        fraction = TaskSpec().test_fraction if test_fraction is None else test_fraction
        try:
            tx = load_transactions_csv(data, names)
        except DataError as exc:
            problems.extend(_listed(exc))
        else:
            why = label_problem(tx, fraction, data.path, data.columns.label)
            if why is not None:
                problems.append(why)
    if isinstance(data, TableData):
        from fedcore.data.table_loader import load_table

        fraction = TaskSpec().test_fraction if test_fraction is None else test_fraction
        try:
            table = load_table(data, task if task is not None and task.is_table else None)
        except DataError as exc:
            problems.extend(_listed(exc))
        else:
            why = table_label_problem(table, fraction, data.path, data.columns.label.column)
            if why is not None:
                problems.append(why)
            problems.extend(_cleaning_problems(table, data, task))
    if isinstance(data, DicomData):
        why = _readable(Path(data.path))
        if why is not None:
            problems.append(why)
    if isinstance(data, DicomData | PacsData):
        why = _candidates_problem(Path(data.candidates))
        if why is not None:
            problems.append(why)
    return problems
