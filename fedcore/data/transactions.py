"""The in-memory table of one site's bank transactions, shared by the generator, the CSV loader and the graph builder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

TEXT_COLUMNS = ("tx_id", "payer", "payee", "merchant", "device")
"""Columns holding strings (numpy ``object`` arrays)."""


class DataError(Exception):
    """Bad site data; the message names file, row (1-based line), column, found value and how to fix it.

    Attributes:
        problems: One message per problem found (at most the first few of them), each
            naming the file, line and column; ``[str(self)]`` when built from one message.
        total: How many problems were found in all (``>= len(problems)``).
    """

    def __init__(self, message: str, problems: list[str] | None = None, total: int = 0) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]
        self.total = max(total, len(self.problems))


class DataFileMissing(DataError):
    """The site's data file (or folder) is not there."""


@dataclass(frozen=True)
class Transactions:
    """``n`` transactions of one site, sorted by timestamp ascending (stable).

    Attributes:
        tx_id: Transaction ids, ``object`` array of ``str``, shape ``[n]``.
        payer: Paying account ids, ``object`` ``str`` ``[n]``.
        payee: Receiving account ids, ``object`` ``str`` ``[n]``.
        merchant: Merchant ids, ``object`` ``str`` ``[n]``; ``""`` means none.
        device: Device / session fingerprint ids, ``object`` ``str`` ``[n]``; ``""`` means none.
        amount: Amounts, ``float64`` ``[n]``.
        timestamp: UNIX seconds (UTC), ``float64`` ``[n]``, non-decreasing.
        label: ``int64`` ``[n]``, 1 for fraud and 0 for legitimate.
        features: Extra numeric features by canonical name, each ``float64`` ``[n]``.
    """

    tx_id: np.ndarray
    payer: np.ndarray
    payee: np.ndarray
    merchant: np.ndarray
    device: np.ndarray
    amount: np.ndarray
    timestamp: np.ndarray
    label: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.tx_id)
        columns: dict[str, np.ndarray] = {
            "payer": self.payer,
            "payee": self.payee,
            "merchant": self.merchant,
            "device": self.device,
            "amount": self.amount,
            "timestamp": self.timestamp,
            "label": self.label,
        }
        columns.update({f"features[{k!r}]": v for k, v in self.features.items()})
        bad = {name: len(col) for name, col in columns.items() if len(col) != n}
        if bad:
            found = ", ".join(f"{k} has {v}" for k, v in bad.items())
            raise ValueError(
                f"all Transactions columns must have {n} rows (as tx_id); found {found}"
            )

    def __len__(self) -> int:
        return len(self.tx_id)

    @property
    def num_fraud(self) -> int:
        """Number of rows labelled fraud."""
        return int(self.label.sum())

    def take(self, index: np.ndarray) -> Transactions:
        """Return the rows at ``index`` (integer positions or a boolean mask), in that order."""
        return Transactions(
            tx_id=self.tx_id[index],
            payer=self.payer[index],
            payee=self.payee[index],
            merchant=self.merchant[index],
            device=self.device[index],
            amount=self.amount[index],
            timestamp=self.timestamp[index],
            label=self.label[index],
            features={k: v[index] for k, v in self.features.items()},
        )

    @classmethod
    def concat(cls, parts: Sequence[Transactions]) -> Transactions:
        """The rows of ``parts`` one after the other (each with the features of the first)."""
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            tx_id=cat("tx_id"),
            payer=cat("payer"),
            payee=cat("payee"),
            merchant=cat("merchant"),
            device=cat("device"),
            amount=cat("amount"),
            timestamp=cat("timestamp"),
            label=cat("label"),
            features={k: np.concatenate([p.features[k] for p in parts]) for k in parts[0].features},
        )

    def sorted_by_time(self) -> Transactions:
        """Return a copy sorted by timestamp ascending; ties keep their order (stable sort)."""
        order = np.argsort(self.timestamp, kind="stable")
        return self.take(order)
