"""A bank's own table in any schema: which of its columns plays which role (entities, time, amount, label, features), and the data-quality rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedcore.config.base import _Model

ENTITY_TYPES = (
    "account",
    "card",
    "device",
    "merchant",
    "ip",
    "email",
    "user",
    "item",
    "other",
)
"""Kinds of entity a column may hold; each entity role of the task becomes one node type."""


class EntityColumn(_Model):
    """One column of ids (account, card, device, ...): the rows sharing an id are linked."""

    column: str = Field(..., min_length=1, description="the column holding the ids")
    type: Literal[
        "account", "card", "device", "merchant", "ip", "email", "user", "item", "other"
    ] = Field("other", description="what the ids name (documentation and reports)")


class TimestampColumn(_Model):
    """The column of row times and how they are written."""

    column: str = Field(..., min_length=1)
    format: Literal["iso", "unix_s", "unix_ms", "offset_s"] = Field(
        "iso",
        description="iso: ISO 8601 (naive = UTC); unix_s / unix_ms: UNIX seconds / "
        "milliseconds; offset_s: seconds from 'origin' (e.g. 0, 1, 2, ...)",
    )
    origin: str | None = Field(
        None,
        description="offset_s only: the ISO 8601 date-time that offset 0 stands for "
        "(default 1970-01-01T00:00:00Z: the offsets are then kept as they are)",
    )

    @model_validator(mode="after")
    def _origin_only_for_offsets(self) -> TimestampColumn:
        if self.origin is not None and self.format != "offset_s":
            raise ValueError(
                f"origin applies to format offset_s only; found format {self.format!r}: "
                "remove origin or set format: offset_s"
            )
        if self.origin is not None:
            from datetime import datetime

            try:
                datetime.fromisoformat(self.origin.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"origin {self.origin!r} is not an ISO 8601 date-time; expected e.g. "
                    "2013-09-01T00:00:00Z"
                ) from None
        return self


class LabelColumn(_Model):
    """The label column and which of its values mean fraud."""

    column: str = Field(..., min_length=1)
    positive: list[str] = Field(
        default_factory=lambda: ["1", "true", "yes"],
        min_length=1,
        description="values meaning fraud (compared after trimming, case-insensitive)",
    )
    negative: list[str] = Field(
        default_factory=lambda: ["0", "false", "no"],
        min_length=1,
        description="values meaning legitimate; any other value is a problem",
    )

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _as_text(cls, values: Any) -> Any:
        """YAML reads ``yes``, ``1`` or ``-1`` as a boolean or a number: take them as written."""
        if not isinstance(values, list):
            values = [values]
        out: list[Any] = []
        for v in values:
            if isinstance(v, bool):  # YAML 1.1: yes/no/on/off/true/false
                out.extend(["true", "yes", "on", "y"] if v else ["false", "no", "off", "n"])
            elif isinstance(v, int | float):
                out.append(str(v))
            else:
                out.append(v)
        return out

    @model_validator(mode="after")
    def _disjoint(self) -> LabelColumn:
        pos = {v.strip().lower() for v in self.positive}
        neg = {v.strip().lower() for v in self.negative}
        both = sorted(pos & neg)
        if both:
            raise ValueError(
                f"label value(s) {', '.join(map(repr, both))} are both positive and negative"
            )
        return self


class TableColumns(_Model):
    """Which column of the site's table plays which role of the task.

    Roles (``entities``, ``features``, ``categorical``) are named by the task, the same at
    every site; each site maps them to its own column names here. Only ``label`` is
    required: a table without ids, without a time or without an amount still trains.
    """

    label: LabelColumn
    timestamp: TimestampColumn | None = Field(
        None, description="row times; without them the test split is a seeded random one"
    )
    amount: str | None = Field(None, description="transaction amount (numeric, >= 0)")
    entities: dict[str, EntityColumn] = Field(
        default_factory=dict, description="entity role (as in task.entities) -> id column"
    )
    features: dict[str, str] = Field(
        default_factory=dict, description="numeric feature role (as in task.features) -> column"
    )
    categorical: dict[str, str] = Field(
        default_factory=dict,
        description="categorical feature role (as in task.categorical) -> column",
    )
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="allowed [low, high] of a numeric feature role or 'amount'; values "
        "outside are out of range (counted, and cleaned as cleaning.out_of_range says)",
    )

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in ranges.items():
            if not low <= high:
                raise ValueError(f"ranges.{name}: expected [low, high] with low <= high")
        return ranges

    def columns(self) -> dict[str, str]:
        """Role -> column for every mapped column (``label``, ``timestamp``, ``amount``,
        ``entities.R``, ``features.F``, ``categorical.C``)."""
        out = {"label": self.label.column}
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp.column
        if self.amount is not None:
            out["amount"] = self.amount
        out.update({f"entities.{k}": v.column for k, v in self.entities.items()})
        out.update({f"features.{k}": v for k, v in self.features.items()})
        out.update({f"categorical.{k}": v for k, v in self.categorical.items()})
        return out


class TableData(_Model):
    """A bank's own table (CSV or Parquet) in its own schema, mapped to the task's roles."""

    kind: Literal["table"] = "table"
    path: Path = Field(
        ..., description="CSV or Parquet file; relative paths are relative to the config file"
    )
    format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="auto: by the file name (.parquet/.pq: Parquet, else CSV)"
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV only")
    columns: TableColumns

    @property
    def file_format(self) -> str:
        """``csv`` or ``parquet``."""
        if self.format != "auto":
            return self.format
        return "parquet" if Path(self.path).suffix.lower() in (".parquet", ".pq") else "csv"


class CleaningSpec(_Model):
    """What each site does to its table before training; every action is counted in its report."""

    missing: Literal["drop", "impute", "fail"] = Field(
        "impute",
        description="rows with a missing numeric value or timestamp: drop them, impute "
        "(numeric: the column's median over the site's rows; categorical: its own value "
        "'missing'), or fail the load",
    )
    non_finite: Literal["drop", "impute", "fail"] = Field(
        "drop", description="NaN or infinite numbers written in the file"
    )
    out_of_range: Literal["clip", "drop", "keep", "fail"] = Field(
        "clip", description="numbers outside columns.ranges: clip to the range, drop, keep"
    )
    duplicates: Literal["drop", "keep", "fail"] = Field(
        "drop", description="rows repeated exactly: keep the first"
    )


class QualitySpec(_Model):
    """The scenario's ``data_quality`` gate: a site whose report fails a threshold is left out of training, with the reason."""

    enabled: bool = Field(True, description="false: reports are shown, no site is left out")
    max_missing_share: float = Field(
        0.2, ge=0.0, le=1.0, description="largest share of rows with a missing value"
    )
    max_duplicate_share: float = Field(0.1, ge=0.0, le=1.0)
    max_out_of_range_share: float = Field(0.1, ge=0.0, le=1.0)
    max_dropped_share: float = Field(
        0.3, ge=0.0, le=1.0, description="largest share of rows the cleaning step may drop"
    )
    min_rows: int = Field(200, ge=1, description="fewest rows left after cleaning")
    min_label_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="smallest share of fraud among the training rows"
    )
    max_label_rate: float = Field(0.5, ge=0.0, le=1.0)
    max_drift_psi: float | None = Field(
        None,
        ge=0.0,
        description="largest population stability index of a column between the site's "
        "earlier and latest rows; null: reported, never enforced",
    )
