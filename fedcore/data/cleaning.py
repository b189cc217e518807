"""A site's cleaning step: exact duplicates, non-finite numbers, numbers out of range and missing values, each dropped, imputed, clipped or failed as ``task.cleaning`` says, and counted."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedcore.config.table import CleaningSpec
from fedcore.data.table import Table
from fedcore.data.transactions import DataError

log = logging.getLogger(__name__)

__all__ = [
    "AMOUNT_RANGE",
    "CleaningCounts",
    "clean",
    "duplicate_mask",
    "number_columns",
    "out_of_range_mask",
    "range_of",
]

AMOUNT_RANGE = (0.0, 1e12)
"""Allowed amounts when ``columns.ranges`` names no ``amount`` range."""


@dataclass(frozen=True)
class CleaningCounts:
    """What :func:`clean` did; ``dropped`` counts every row removed, duplicates included.

    Attributes:
        rows: Rows before cleaning.
        rows_after: Rows after.
        dropped_missing: Rows dropped for a missing number (``missing: drop``).
        dropped_no_time: Rows dropped for a missing or infinite time (always).
        dropped_non_finite: Rows dropped for an infinite number (``non_finite: drop``).
        dropped_out_of_range: Rows dropped for a number out of range (``out_of_range: drop``).
        deduplicated: Later copies of a repeated row dropped (``duplicates: drop``).
        imputed: Values replaced by their column's median.
        clipped: Values clipped into their range.
    """

    rows: int = 0
    rows_after: int = 0
    dropped_missing: int = 0
    dropped_no_time: int = 0
    dropped_non_finite: int = 0
    dropped_out_of_range: int = 0
    deduplicated: int = 0
    imputed: int = 0
    clipped: int = 0

    @property
    def dropped(self) -> int:
        """Rows removed in all."""
        return self.rows - self.rows_after

    @property
    def dropped_share(self) -> float:
        """``dropped / rows`` (0 for an empty table)."""
        return self.dropped / self.rows if self.rows else 0.0

    def __str__(self) -> str:
        return (
            f"{self.rows} rows, {self.dropped} dropped ({self.dropped_missing} missing, "
            f"{self.dropped_no_time} without a time, {self.dropped_non_finite} non-finite, "
            f"{self.dropped_out_of_range} out of range, {self.deduplicated} duplicates), "
            f"{self.imputed} values imputed, {self.clipped} clipped"
        )


def number_columns(table: Table) -> dict[str, np.ndarray]:
    """Role -> ``float64 [n]`` column of every number: ``amount`` and the numeric features."""
    out: dict[str, np.ndarray] = {"amount": table.amount} if table.amount is not None else {}
    out.update(table.numeric)
    return out


def range_of(role: str, ranges: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    """The allowed ``[low, high]`` of ``role``: from ``ranges``; amounts default to
    :data:`AMOUNT_RANGE`; ``None``: no range."""
    if role in ranges:
        return ranges[role]
    return AMOUNT_RANGE if role == "amount" else None


def out_of_range_mask(x: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """``bool [n]``: finite values outside ``bounds`` (never NaN or infinite ones)."""
    if bounds is None:
        return np.zeros(len(x), dtype=bool)
    finite = np.isfinite(x)
    mask: np.ndarray = finite & ((x < bounds[0]) | (x > bounds[1]))
    return mask


def duplicate_mask(table: Table) -> np.ndarray:
    """``bool [n]``: rows equal in every mapped column (label included) to an earlier row."""
    cols: list[np.ndarray] = [table.label]
    if table.timestamp is not None:
        cols.append(table.timestamp)
    cols.extend(number_columns(table).values())
    cols.extend(table.entities.values())
    cols.extend(table.categorical.values())
    seen: set[tuple[Any, ...]] = set()
    dup = np.zeros(len(table), dtype=bool)
    # NaN is repeated exactly too: a sentinel string compares equal where NaN does not
    rows = zip(*[c.tolist() for c in cols], strict=True)
    for i, row in enumerate(rows):
        key = tuple("<nan>" if isinstance(v, float) and math.isnan(v) else v for v in row)
        if key in seen:
            dup[i] = True
        else:
            seen.add(key)
    return dup


# --------------------------------------------------------------------------- cleaning


def _fail(what: str, mask: np.ndarray, table: Table, fix: str) -> DataError:
    lines = table.line[mask]
    first = int(lines[0])
    return DataError(
        f"{int(mask.sum())} row(s) with {what} (first at line {first}); expected none as "
        f"task.cleaning says fail: {fix}",
        [f"line {int(x)}: {what}" for x in lines[:10]],
        int(mask.sum()),
    )


def _median(x: np.ndarray, role: str) -> float:
    fin = x[np.isfinite(x)]
    if len(fin) == 0:
        log.warning("column %r has no finite value to impute from: imputing 0.0", role)
        return 0.0
    return float(np.median(fin))


def _with_numbers(table: Table, numbers: Mapping[str, np.ndarray]) -> Table:
    """``table`` with its amount and numeric columns replaced by ``numbers``."""
    return replace(
        table,
        amount=numbers.get("amount", table.amount),
        numeric={k: numbers.get(k, v) for k, v in table.numeric.items()},
    )


def clean(
    table: Table, cleaning: CleaningSpec, ranges: Mapping[str, tuple[float, float]]
) -> tuple[Table, CleaningCounts]:
    """The table cleaned as ``cleaning`` says, and what was done (``table`` is left as is).

    In order: exact duplicates (later copies), non-finite numbers, numbers out of range,
    missing numbers; a row without a time (missing or infinite) is dropped whenever the
    table has times (``fail`` fails instead). Imputing uses the column's median over the
    rows that have a finite value; an empty category stays ``""`` (its own value). The
    rows keep their ``line``.

    Args:
        table: The site's rows as loaded.
        cleaning: What to do with each kind of problem.
        ranges: Role (or ``amount``) -> allowed ``[low, high]`` (amount default
            :data:`AMOUNT_RANGE`).

    Raises:
        DataError: a kind of problem set to ``fail`` is present; names the count and the
            first line.
    """
    counts: dict[str, int] = {"rows": len(table)}
    dup = duplicate_mask(table)
    if dup.any() and cleaning.duplicates == "fail":
        raise _fail("a repeated row", dup, table, "remove them or set cleaning.duplicates: drop")
    if cleaning.duplicates == "drop":
        counts["deduplicated"] = int(dup.sum())
        table = table.take(~dup)

    def inf_rows(t: Table) -> np.ndarray:
        mask = np.zeros(len(t), dtype=bool)
        for x in number_columns(t).values():
            mask |= np.isinf(x)
        return mask

    inf = inf_rows(table)
    ts_inf = np.isinf(table.timestamp) if table.timestamp is not None else np.zeros_like(inf)
    if (inf | ts_inf).any() and cleaning.non_finite == "fail":
        raise _fail(
            "an infinite number", inf | ts_inf, table, "fix them or set cleaning.non_finite"
        )
    if cleaning.non_finite == "drop":
        counts["dropped_non_finite"] = int(inf.sum())
        table = table.take(~inf)
    elif inf.any():  # impute
        numbers = {}
        for role, x in number_columns(table).items():
            bad = np.isinf(x)
            counts["imputed"] = counts.get("imputed", 0) + int(bad.sum())
            numbers[role] = np.where(bad, _median(x, role), x) if bad.any() else x
        table = _with_numbers(table, numbers)

    oor = np.zeros(len(table), dtype=bool)
    where: list[str] = []  # the roles with values out of range, and their ranges
    for role, x in number_columns(table).items():
        bounds = range_of(role, ranges)
        bad = out_of_range_mask(x, bounds)
        if bounds is not None and bad.any():
            where.append(f"{role} outside [{bounds[0]:g}, {bounds[1]:g}]")
        oor |= bad
    if oor.any() and cleaning.out_of_range == "fail":
        raise _fail(
            f"a number out of its range ({'; '.join(where)})",
            oor,
            table,
            "fix them or set cleaning.out_of_range",
        )
    if cleaning.out_of_range == "drop":
        counts["dropped_out_of_range"] = int(oor.sum())
        table = table.take(~oor)
    elif cleaning.out_of_range == "clip" and oor.any():
        numbers = {}
        for role, x in number_columns(table).items():
            bounds = range_of(role, ranges)
            bad = out_of_range_mask(x, bounds)
            if bounds is not None and bad.any():
                counts["clipped"] = counts.get("clipped", 0) + int(bad.sum())
                x = np.where(bad, np.clip(x, bounds[0], bounds[1]), x)
            numbers[role] = x
        table = _with_numbers(table, numbers)

    nan = np.zeros(len(table), dtype=bool)
    for x in number_columns(table).values():
        nan |= np.isnan(x)
    no_time = ~np.isfinite(table.timestamp) if table.timestamp is not None else np.zeros_like(nan)
    if (nan | no_time).any() and cleaning.missing == "fail":
        raise _fail(
            "a missing number or time", nan | no_time, table, "fill them or set cleaning.missing"
        )
    counts["dropped_no_time"] = int(no_time.sum())
    if cleaning.missing == "drop":
        counts["dropped_missing"] = int((nan & ~no_time).sum())
        table = table.take(~(nan | no_time))
    else:  # impute
        table = table.take(~no_time)
        numbers = {}
        for role, x in number_columns(table).items():
            bad = np.isnan(x)
            counts["imputed"] = counts.get("imputed", 0) + int(bad.sum())
            numbers[role] = np.where(bad, _median(x, role), x) if bad.any() else x
        table = _with_numbers(table, numbers)
    return table, CleaningCounts(rows_after=len(table), **counts)
