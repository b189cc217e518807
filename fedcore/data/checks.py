"""Check a site's data files with the same loaders a run uses, so that ``fedcore validate`` and a run agree."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedcore.config import CsvData, DataSource, DicomData, PacsData


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


def site_data_problems(data: DataSource, features: Sequence[str] | None = None) -> list[str]:
    """What keeps a run from reading this data source, one message per problem (``[]``: none).

    A CSV is read in full by :func:`fedcore.data.csv_loader.load_transactions_csv`, the
    loader of a run, so its message names the file, the line and the column, what was
    expected and found, and how to fix it; the loader stops at the first problem. DICOM
    sources get a cheap check (the folder or DICOMDIR is readable and not empty) and their
    candidates CSV is read in full. Generated and synthetic data need no files.

    Args:
        data: The site's data source (paths already resolved).
        features: The task's extra features to read from a CSV; ``None``: every feature
            mapped in ``data.columns.features`` (a site file does not name the task).
    """
    problems: list[str] = []
    if isinstance(data, CsvData):
        from fedcore.data.csv_loader import load_transactions_csv
        from fedcore.data.transactions import DataError

        names = list(data.columns.features) if features is None else list(features)
        try:
            load_transactions_csv(data, names)
        except DataError as exc:
            problems.append(str(exc))
    if isinstance(data, DicomData):
        why = _readable(Path(data.path))
        if why is not None:
            problems.append(why)
    if isinstance(data, DicomData | PacsData):
        why = _candidates_problem(Path(data.candidates))
        if why is not None:
            problems.append(why)
    return problems
