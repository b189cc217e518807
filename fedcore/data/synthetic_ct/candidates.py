"""The ``candidates.csv`` of a site: one :class:`Candidate` per row, written and read back."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from fedcore.storage import atomic_path

CANDIDATE_COLUMNS = (
    "series_uid",
    "x_mm",
    "y_mm",
    "z_mm",
    "nodule",
    "malignant",
    "diameter_mm",
    "kind",
)
"""Header of ``candidates.csv``, in order."""
REQUIRED_COLUMNS = CANDIDATE_COLUMNS[:5]
"""Columns a candidates file must have; the others may be absent (see :func:`read_candidates`)."""


@dataclass(frozen=True)
class Candidate:
    """One candidate location in a written series, in the patient frame of its headers (mm).

    Attributes:
        series_uid: ``SeriesInstanceUID`` of the series holding the candidate.
        x_mm: Patient x (LPS) of the centre.
        y_mm: Patient y (LPS) of the centre.
        z_mm: Patient z (LPS) of the centre.
        nodule: 1 for a true nodule, 0 for a look-alike.
        malignant: 1 for a malignant nodule (never for a look-alike).
        diameter_mm: Nodule diameter; for a look-alike its apparent size (vessel diameter,
            scar length).
        kind: ``"solid"``, ``"part-solid"``, ``"vessel"``, ``"crossing"`` or ``"scar"``
            (``"unknown"`` when a hand-made candidates file leaves it out).
    """

    series_uid: str
    x_mm: float
    y_mm: float
    z_mm: float
    nodule: int
    malignant: int
    diameter_mm: float
    kind: str


def _write_candidates(path: Path, candidates: list[Candidate]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CANDIDATE_COLUMNS)
        for c in candidates:
            writer.writerow(
                [
                    c.series_uid,
                    f"{c.x_mm:.3f}",
                    f"{c.y_mm:.3f}",
                    f"{c.z_mm:.3f}",
                    c.nodule,
                    c.malignant,
                    f"{c.diameter_mm:.3f}",
                    c.kind,
                ]
            )


def read_candidates(path: Path | str) -> list[Candidate]:
    """Read a ``candidates.csv`` written by :func:`generate_site`, or a hospital's own list.

    Columns :data:`REQUIRED_COLUMNS` must be present; ``malignant`` (default 0),
    ``diameter_mm`` (default 0, unknown) and ``kind`` (default ``"unknown"``) may be absent or
    left empty; extra columns are ignored. ``nodule`` and ``malignant`` must be 0 or 1, and
    only nodules can be malignant.

    Args:
        path: The CSV file (UTF-8, comma-separated, one header line).

    Returns:
        The candidates, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The header lacks a column or a value is malformed; the message names the
            file, the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"candidates file {path} not found; generate_site writes it as <out_dir>/candidates.csv"
        )
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            raise ValueError(
                f"{path}: file is empty; expected a header line {','.join(CANDIDATE_COLUMNS)}"
            )
        reader.fieldnames = header
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: line 1: missing column(s) {', '.join(repr(m) for m in missing)}; "
                f"found {','.join(header)}, expected at least {','.join(REQUIRED_COLUMNS)}"
            )
        out: list[Candidate] = []
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                found = len([v for v in row.values() if v is not None]) + len(row.get(None) or [])
                raise ValueError(
                    f"{path}: line {line}: expected {len(header)} fields like the header, "
                    f"found {found}"
                )
            out.append(_parse_row(path, line, row))
    return out


def _parse_row(path: Path, line: int, row: dict[str, str]) -> Candidate:
    def text(column: str, default: str = "") -> str:
        value = (row.get(column) or "").strip()
        return value or default

    def number(column: str, default: str = "") -> float:
        raw = text(column, default)
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"{path}: line {line}, column {column!r}: expected a number, found {raw!r}"
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"{path}: line {line}, column {column!r}: expected a finite number, found {raw!r}"
            )
        return value

    def flag(column: str, default: str = "") -> int:
        raw = text(column, default)
        if raw not in ("0", "1"):
            raise ValueError(
                f"{path}: line {line}, column {column!r}: expected 0 or 1, found {raw!r}"
            )
        return int(raw)

    series_uid = text("series_uid")
    if not series_uid:
        raise ValueError(f"{path}: line {line}, column 'series_uid': expected a UID, found ''")
    nodule, malignant = flag("nodule"), flag("malignant", "0")
    if malignant and not nodule:
        raise ValueError(
            f"{path}: line {line}, column 'malignant': found 1 for a candidate with nodule=0; "
            "only nodules can be malignant"
        )
    diameter = number("diameter_mm", "0")
    if diameter < 0:
        raise ValueError(
            f"{path}: line {line}, column 'diameter_mm': expected >= 0, found {text('diameter_mm')!r}"
        )
    return Candidate(
        series_uid=series_uid,
        x_mm=number("x_mm"),
        y_mm=number("y_mm"),
        z_mm=number("z_mm"),
        nodule=nodule,
        malignant=malignant,
        diameter_mm=diameter,
        kind=text("kind", "unknown"),
    )
