"""The selection interface: which candidate sites train in a round, and why the others don't."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """A site that answered telemetry this round.

    Attributes:
        site_id: The site's id.
        node_id: Its Flower node id (differs between engines; never use it to order).
        num_train_examples: Training examples the site holds.
        readings: Telemetry readings (utilization %, memory MiB, ...).
    """

    site_id: str
    node_id: int
    num_train_examples: int
    readings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """A selector's decision, with the reasons for every site left out."""

    chosen: list[Candidate]
    rejected: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for logs and ``summary.json``."""
        return {
            "chosen": [c.site_id for c in self.chosen],
            "rejected": {k: list(v) for k, v in self.rejected.items()},
            "scores": dict(self.scores),
        }


class Selector(ABC):
    """Chooses the sites of one round."""

    name: str = "abstract"

    @abstractmethod
    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        """Choose among ``candidates`` (sorted by site id) for round ``round_``."""
