"""The in-memory table of one site in any schema: label, optional time and amount, entity ids, numeric and categorical features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Table:
    """``n`` rows of one site, in file order (sort with :meth:`sorted_by_time`).

    Missing values are kept, so the quality report can count them and the cleaning step
    can act on them: ``nan`` in a numeric column or in ``timestamp``, ``""`` in an entity
    or categorical column.

    Attributes:
        label: ``int64 [n]``: 1 fraud, 0 legitimate.
        line: ``int64 [n]``: where the row comes from (CSV: the 1-based line; Parquet:
            the 1-based row number), for messages.
        timestamp: ``float64 [n]`` UNIX seconds (or seconds from the mapped origin), or
            ``None`` when the site maps no time column.
        amount: ``float64 [n]``, or ``None`` when the site maps no amount.
        entities: Entity role -> ``object [n]`` of ``str`` ids.
        entity_types: Entity role -> its type (``account``, ``card``, ``user``, ...).
        numeric: Numeric feature role -> ``float64 [n]``.
        categorical: Categorical feature role -> ``object [n]`` of ``str``.
    """

    label: np.ndarray
    line: np.ndarray
    timestamp: np.ndarray | None = None
    amount: np.ndarray | None = None
    entities: dict[str, np.ndarray] = field(default_factory=dict)
    entity_types: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.label)
        cols: dict[str, np.ndarray] = {"line": self.line}
        if self.timestamp is not None:
            cols["timestamp"] = self.timestamp
        if self.amount is not None:
            cols["amount"] = self.amount
        cols.update({f"entities[{k!r}]": v for k, v in self.entities.items()})
        cols.update({f"numeric[{k!r}]": v for k, v in self.numeric.items()})
        cols.update({f"categorical[{k!r}]": v for k, v in self.categorical.items()})
        bad = {name: len(c) for name, c in cols.items() if len(c) != n}
        if bad:
            found = ", ".join(f"{k} has {v}" for k, v in bad.items())
            raise ValueError(f"all Table columns must have {n} rows (as label); found {found}")

    def __len__(self) -> int:
        return len(self.label)

    @property
    def num_fraud(self) -> int:
        """Rows labelled fraud."""
        return int(self.label.sum())

    def take(self, index: np.ndarray) -> Table:
        """The rows at ``index`` (integer positions or a boolean mask), in that order."""
        return Table(
            label=self.label[index],
            line=self.line[index],
            timestamp=None if self.timestamp is None else self.timestamp[index],
            amount=None if self.amount is None else self.amount[index],
            entities={k: v[index] for k, v in self.entities.items()},
            entity_types=dict(self.entity_types),
            numeric={k: v[index] for k, v in self.numeric.items()},
            categorical={k: v[index] for k, v in self.categorical.items()},
        )

    def sorted_by_time(self) -> Table:
        """Rows sorted by time ascending (stable; rows without a time go last); unchanged without a time column."""
        if self.timestamp is None:
            return self
        ts = np.where(np.isnan(self.timestamp), np.inf, self.timestamp)
        return self.take(np.argsort(ts, kind="stable"))
