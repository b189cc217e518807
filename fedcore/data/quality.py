"""A site's data-quality report and the coordinator's gate on its summary (drift as the population stability index, Siddiqi 2006, *Credit Risk Scorecards*); the cleaning step is in :mod:`fedcore.data.cleaning`."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from fedcore.config.table import QualitySpec
from fedcore.data.checks import train_rows
from fedcore.data.cleaning import (
    AMOUNT_RANGE,
    CleaningCounts,
    clean,
    duplicate_mask,
    number_columns,
    out_of_range_mask,
    range_of,
)
from fedcore.data.table import Table

log = logging.getLogger(__name__)

__all__ = [
    "AMOUNT_RANGE",
    "CleaningCounts",
    "PSI_BINS",
    "PSI_EPS",
    "QualityReport",
    "clean",
    "gate_reasons",
    "psi",
    "quality_report",
    "summary_key_known",
]

PSI_BINS = 10
"""Quantile bins of the population stability index."""
PSI_EPS = 1e-4
"""Floor of a bin's share in the PSI (an empty bin would make it infinite)."""
PROFILE_VERSION = 1

SUMMARY_KEYS = frozenset(
    {
        "rows",
        "missing_share",
        "duplicate_share",
        "out_of_range_share",
        "non_finite_share",
        "rows_missing",
        "rows_non_finite",
        "rows_out_of_range",
        "duplicates",
        "label_rate",
        "train_label_rate",
        "out_of_order",
        "max_gap_s",
        "median_gap_s",
        "span_s",
        "max_psi",
        "dropped",
        "dropped_share",
        "imputed",
        "clipped",
        "deduplicated",
        "rows_after",
    }
)
"""Keys of :meth:`QualityReport.summary` without a column role."""
SUMMARY_PREFIXES = frozenset(
    {"missing", "missing_ids", "non_finite", "out_of_range", "psi", "psi_ref"}
)
"""Per-column keys of the summary: ``<prefix>:<role>``."""
_KEY = re.compile(r"([a-z_]{1,32})(?::([A-Za-z_][A-Za-z0-9_]{0,63}))?")


def summary_key_known(key: str) -> bool:
    """Whether ``key`` is one :meth:`QualityReport.summary` may hold (a bounded alphabet)."""
    m = _KEY.fullmatch(key)
    if m is None:
        return False
    return m[2] is None and m[1] in SUMMARY_KEYS or m[2] is not None and m[1] in SUMMARY_PREFIXES


def summary_share(key: str) -> bool:
    """Whether the summary value at ``key`` is a share or a rate (within [0, 1])."""
    return key.endswith("_share") or key.endswith("_rate")


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class QualityReport:
    """Counts and rates of one site's table as loaded (and what cleaning did to it).

    Per-column mappings are keyed by role (``amount``, ``timestamp`` or the task's role).
    Timestamp figures are ``None`` without a time column.
    """

    rows: int
    missing: dict[str, int]
    missing_ids: dict[str, int]
    non_finite: dict[str, int]
    out_of_range: dict[str, int]
    rows_missing: int
    rows_non_finite: int
    rows_out_of_range: int
    duplicates: int
    label_rate: float
    train_label_rate: float
    out_of_order: int | None
    max_gap_s: float | None
    median_gap_s: float | None
    span_s: float | None
    psi: dict[str, float]
    psi_ref: dict[str, float]
    cleaning: CleaningCounts | None = None
    columns_profile: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Role -> bin edges and shares (quantiles of the site's data): see :meth:`profile`."""

    def _share(self, count: int) -> float:
        return count / self.rows if self.rows else 0.0

    @property
    def missing_share(self) -> float:
        """Rows with any missing value (number, time or category; never an id) / rows."""
        return self._share(self.rows_missing)

    @property
    def duplicate_share(self) -> float:
        """Later copies of repeated rows / rows."""
        return self._share(self.duplicates)

    @property
    def out_of_range_share(self) -> float:
        """Rows with a number out of its range / rows."""
        return self._share(self.rows_out_of_range)

    @property
    def non_finite_share(self) -> float:
        """Rows with an infinite number / rows."""
        return self._share(self.rows_non_finite)

    @property
    def max_psi(self) -> float:
        """Largest PSI over columns, halves and reference alike (0 without any)."""
        return max([*self.psi.values(), *self.psi_ref.values()], default=0.0)

    def with_cleaning(self, counts: CleaningCounts) -> QualityReport:
        """This report completed with the cleaning step's counts (a new report)."""
        return replace(self, cleaning=counts)

    def summary(self) -> dict[str, float]:
        """The flat numbers that leave the site: counts, shares, rates, gaps and PSI.

        Never a value of a row, a quantile, a minimum or maximum, an id or a line number.
        Every key passes :func:`summary_key_known`.
        """
        out: dict[str, float] = {
            "rows": float(self.rows),
            "missing_share": self.missing_share,
            "duplicate_share": self.duplicate_share,
            "out_of_range_share": self.out_of_range_share,
            "non_finite_share": self.non_finite_share,
            "rows_missing": float(self.rows_missing),
            "rows_non_finite": float(self.rows_non_finite),
            "rows_out_of_range": float(self.rows_out_of_range),
            "duplicates": float(self.duplicates),
            "label_rate": self.label_rate,
            "train_label_rate": self.train_label_rate,
            "max_psi": self.max_psi,
        }
        for name in ("out_of_order", "max_gap_s", "median_gap_s", "span_s"):
            value = getattr(self, name)
            if value is not None:
                out[name] = float(value)
        for prefix in sorted(SUMMARY_PREFIXES):
            out.update({f"{prefix}:{k}": float(v) for k, v in getattr(self, prefix).items()})
        c = self.cleaning
        if c is not None:
            out.update(
                dropped=float(c.dropped),
                dropped_share=c.dropped_share,
                imputed=float(c.imputed),
                clipped=float(c.clipped),
                deduplicated=float(c.deduplicated),
                rows_after=float(c.rows_after),
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report for the site's own state folder: the summary and the cleaning detail."""
        out: dict[str, Any] = {"summary": self.summary()}
        if self.cleaning is not None:
            out["cleaning"] = asdict(self.cleaning)
        return out

    def profile(self) -> dict[str, Any]:
        """Bin edges and shares per number column (quantiles of the site's own data): the
        reference for drift at the site's next load. Stays in the site's state folder and
        is never sent."""
        return {"version": PROFILE_VERSION, "columns": dict(self.columns_profile)}


# --------------------------------------------------------------------------- measures


def _edges(x: np.ndarray) -> np.ndarray:
    """The distinct interior quantile edges of :data:`PSI_BINS` bins of ``x`` (finite)."""
    qs = np.quantile(x, np.arange(1, PSI_BINS) / PSI_BINS)
    return np.unique(qs)


def _shares(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``x`` in each bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    bins = np.searchsorted(edges, x, side="left")
    return np.bincount(bins, minlength=len(edges) + 1) / max(len(x), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of ``actual`` against ``expected`` (shares per bin).

    ``sum((a - e) * ln(a / e))`` with each share floored at :data:`PSI_EPS`; below 0.1 is
    commonly read as stable, above 0.25 as a shift.

    Args:
        expected: ``float [B]`` reference shares.
        actual: ``float [B]`` shares of the data compared.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def _reference_columns(reference: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Role -> (edges, shares) of a stored profile; an unusable profile is ignored, logged."""
    if reference is None:
        return {}
    cols = reference.get("columns") if reference.get("version") == PROFILE_VERSION else None
    if not isinstance(cols, Mapping):
        log.warning("ignoring a quality profile of another version or shape")
        return {}
    out: dict[str, tuple[Any, Any]] = {}
    for role, col in cols.items():
        try:
            edges = np.asarray(col["edges"], dtype=np.float64)
            shares = np.asarray(col["shares"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring the quality profile of column %r: not edges and shares", role)
            continue
        if edges.ndim == 1 and shares.shape == (len(edges) + 1,) and np.isfinite(edges).all():
            out[str(role)] = (edges, shares)
    return out


def _time_stats(ts: np.ndarray) -> tuple[int, float, float, float]:
    """Rows earlier than the row before (file order), largest and median gap, span (s)."""
    finite = ts[np.isfinite(ts)]
    out_of_order = int(np.sum(finite[1:] < finite[:-1]))
    if len(finite) < 2:
        return out_of_order, 0.0, 0.0, 0.0
    gaps = np.diff(np.sort(finite))
    return (
        out_of_order,
        float(gaps.max()),
        float(np.median(gaps)),
        float(finite.max() - finite.min()),
    )


def quality_report(
    table: Table,
    ranges: Mapping[str, tuple[float, float]],
    *,
    test_fraction: float,
    reference: Mapping[str, Any] | None = None,
) -> QualityReport:
    """Count the problems of ``table`` as loaded, before cleaning.

    Args:
        table: The site's rows in file order.
        ranges: Role (or ``amount``) -> allowed ``[low, high]``; amounts default to
            :data:`AMOUNT_RANGE`.
        test_fraction: Latest share of rows held out; the training label rate is taken
            over the others (all rows without a time column).
        reference: A profile an earlier report stored (:meth:`QualityReport.profile`):
            each column's PSI against it is reported too.

    Returns:
        The report; drift compares the earliest half of the rows by time (file order
        without times) with the latest half, and the whole table with ``reference``.
    """
    n = len(table)
    numbers = number_columns(table)
    missing: dict[str, int] = {}
    non_finite: dict[str, int] = {}
    out_of_range: dict[str, int] = {}
    any_missing = np.zeros(n, dtype=bool)
    any_inf = np.zeros(n, dtype=bool)
    any_oor = np.zeros(n, dtype=bool)
    timed = {"timestamp": table.timestamp} if table.timestamp is not None else {}
    for role, x in {**timed, **numbers}.items():
        nan, inf = np.isnan(x), np.isinf(x)
        missing[role], non_finite[role] = int(nan.sum()), int(inf.sum())
        any_missing |= nan
        any_inf |= inf
        if role != "timestamp":
            oor = out_of_range_mask(x, range_of(role, ranges))
            out_of_range[role] = int(oor.sum())
            any_oor |= oor
    for role, c in table.categorical.items():
        empty = c == ""
        missing[role] = int(empty.sum())
        any_missing |= empty
    missing_ids = {role: int(np.sum(ids == "")) for role, ids in table.entities.items()}

    order = (
        np.argsort(np.where(np.isnan(table.timestamp), np.inf, table.timestamp), kind="stable")
        if table.timestamp is not None
        else np.arange(n)
    )
    train = np.ones(n, dtype=bool)
    stats: tuple[int, float, float, float] | tuple[None, None, None, None] = (None,) * 4
    if table.timestamp is not None:
        train[:] = False
        train[order[train_rows(table.timestamp[order], test_fraction)]] = True
        stats = _time_stats(table.timestamp)
    label = table.label.astype(np.float64)
    early, late = order[: n // 2], order[n // 2 :]

    halves: dict[str, float] = {}
    against_ref: dict[str, float] = {}
    profile: dict[str, Any] = {}
    refs = _reference_columns(reference)
    for role, x in numbers.items():
        fin = np.isfinite(x)
        a, b = x[early][fin[early]], x[late][fin[late]]
        if len(a) >= 2 and len(b) >= 2:
            edges = _edges(a)
            halves[role] = psi(_shares(a, edges), _shares(b, edges))
        if fin.sum() >= 2:
            edges = _edges(x[fin])
            profile[role] = {
                "edges": edges.tolist(),
                "shares": _shares(x[fin], edges).tolist(),
            }
            if role in refs:
                ref_edges, ref_shares = refs[role]
                against_ref[role] = psi(ref_shares, _shares(x[fin], ref_edges))
    return QualityReport(
        rows=n,
        missing=missing,
        missing_ids=missing_ids,
        non_finite=non_finite,
        out_of_range=out_of_range,
        rows_missing=int(any_missing.sum()),
        rows_non_finite=int(any_inf.sum()),
        rows_out_of_range=int(any_oor.sum()),
        duplicates=int(duplicate_mask(table).sum()),
        label_rate=float(label.mean()) if n else 0.0,
        train_label_rate=float(label[train].mean()) if train.any() else 0.0,
        out_of_order=stats[0],
        max_gap_s=stats[1],
        median_gap_s=stats[2],
        span_s=stats[3],
        psi=halves,
        psi_ref=against_ref,
        columns_profile=profile,
    )


# --------------------------------------------------------------------------- the gate


def gate_reasons(summary: Mapping[str, float], spec: QualitySpec) -> list[str]:
    """Every threshold of ``spec`` the site's ``summary`` fails, each with its fix.

    A measure the summary lacks is not judged. ``[]`` when ``spec.enabled`` is false.

    Args:
        summary: :meth:`QualityReport.summary` as the site's telemetry carried it.
        spec: The scenario's ``data_quality``.
    """
    if not spec.enabled:
        return []
    out: list[str] = []

    def above(key: str, limit: float | None, setting: str, fix: str) -> None:
        value = summary.get(key)
        if value is not None and limit is not None and value > limit:
            out.append(f"{key} {value:.4g} > data_quality.{setting} {limit:g}: {fix}")

    def below(key: str, limit: float, setting: str, fix: str) -> None:
        value = summary.get(key)
        if value is not None and value < limit:
            out.append(f"{key} {value:.4g} < data_quality.{setting} {limit:g}: {fix}")

    raise_ = "or raise the threshold"
    above(
        "missing_share",
        spec.max_missing_share,
        "max_missing_share",
        f"fix the site's missing values {raise_}",
    )
    above(
        "duplicate_share",
        spec.max_duplicate_share,
        "max_duplicate_share",
        f"remove the site's repeated rows {raise_}",
    )
    above(
        "out_of_range_share",
        spec.max_out_of_range_share,
        "max_out_of_range_share",
        f"fix the site's values or its columns.ranges, {raise_}",
    )
    above(
        "dropped_share",
        spec.max_dropped_share,
        "max_dropped_share",
        f"fix the site's data, set task.cleaning to impute or clip, {raise_}",
    )
    rows = "rows_after" if "rows_after" in summary else "rows"
    below(
        rows,
        float(spec.min_rows),
        "min_rows",
        "add rows to the site's table or lower the threshold",
    )
    rate = "train_label_rate" if "train_label_rate" in summary else "label_rate"
    below(
        rate,
        spec.min_label_rate,
        "min_label_rate",
        "check columns.label.positive / negative or lower the threshold",
    )
    above(
        rate,
        spec.max_label_rate,
        "max_label_rate",
        f"check columns.label.positive / negative {raise_}",
    )
    above(
        "max_psi",
        spec.max_drift_psi,
        "max_drift_psi",
        f"check the site's recent rows for a change of source or units {raise_}",
    )
    return out
