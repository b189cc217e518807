"""A site's rolling transaction history: how much of it scoring keeps and where it lives."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from fedcore.config.base import _Model


class HistorySpec(_Model):
    """The window of a site's own recent transactions that scoring reads (site config ``history``).

    A transaction's score depends on its accounts', merchant's and device's other
    transactions, so the site keeps the most recent ones after export and scores new
    transactions in their context (``fed-client predict``, ``fed-client serve``). The
    window is the tighter of ``days`` and ``transactions``; rows that fall out of it are
    deleted from the store when new ones are written.
    """

    days: float | None = Field(
        90.0,
        gt=0,
        description="keep transactions at most this many days older than the newest one "
        "(null: no age limit)",
    )
    transactions: int | None = Field(
        None,
        ge=1,
        description="keep at most this many of the newest transactions (null: no count limit)",
    )
    database: Path | None = Field(
        None,
        description="SQLite file of the history (relative: to the site file); default "
        "STATE/history/history.sqlite",
    )

    @model_validator(mode="after")
    def _bounded(self) -> HistorySpec:
        if self.days is None and self.transactions is None:
            raise ValueError(
                "history needs a bound: set days (e.g. 90) or transactions (e.g. 1000000), "
                "or both; with neither the store would grow without end"
            )
        return self

    @property
    def window_seconds(self) -> float | None:
        """``days`` in seconds, or ``None``."""
        return None if self.days is None else float(self.days) * 86_400.0
