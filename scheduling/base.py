"""The selection interface: which candidate sites train in a round, and why the others don't."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
    """A selector's decision, with the reasons for every site left out.

    Attributes:
        chosen: Sites that train this round.
        rejected: Every site left out, with all its reasons.
        scores: Score per site (0-100, higher = better), where the selector scores.
        epochs: Local epochs per chosen site; a site absent here runs the scenario's
            ``training.local_epochs``.
        devices: Device index within the site's pool per chosen site; absent: the
            site's own choice.
        predicted_s: Predicted round seconds per chosen site.
        deadline_s: The round deadline the work was sized for, if any.
        headroom: Share of each chosen site's device to leave free for its own work.
        details: Anything else worth keeping in ``summary.json`` (plugin weights,
            scale/migrate decisions).
    """

    chosen: list[Candidate]
    rejected: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    devices: dict[str, int] = field(default_factory=dict)
    predicted_s: dict[str, float] = field(default_factory=dict)
    deadline_s: float | None = None
    headroom: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for logs and ``summary.json`` (empty parts left out)."""
        out: dict[str, object] = {
            "chosen": [c.site_id for c in self.chosen],
            "rejected": {k: list(v) for k, v in self.rejected.items()},
            "scores": dict(self.scores),
        }
        if self.epochs:
            out["epochs"] = dict(self.epochs)
        if self.devices:
            out["devices"] = dict(self.devices)
        if self.predicted_s:
            out["predicted_s"] = {k: round(v, 3) for k, v in self.predicted_s.items()}
        if self.deadline_s is not None:
            out["deadline_s"] = round(self.deadline_s, 3)
        if self.headroom:
            out["headroom"] = self.headroom
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class SiteResult:
    """How one chosen site's round went, as the coordinator saw it.

    Attributes:
        site_id: The site.
        seconds: Its measured round seconds (reported by the site: wall time, or the
            simulator's virtual time); ``None`` when no valid update came back.
        loss: Its mean local training loss; ``None`` if unknown.
        epochs: Local epochs it was asked to run.
        num_examples: Its training examples.
        failed: Why its update is missing or was refused; ``None`` when it counted.
    """

    site_id: str
    seconds: float | None
    loss: float | None
    epochs: int
    num_examples: int
    failed: str | None = None


def by_site_id(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates sorted by site id.

    Raises:
        ValueError: if a site id occurs more than once (two nodes claiming one site).
    """
    ordered = sorted(candidates, key=lambda c: c.site_id)
    ids = [c.site_id for c in ordered]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise ValueError(f"site ids must be unique; found {', '.join(dupes)} more than once")
    return ordered


def check_job_size(policy: str, fraction: float, min_sites: int) -> None:
    """Refuse a job size a selector cannot use, naming the policy.

    Raises:
        ValueError: ``fraction`` outside (0, 1] or ``min_sites`` below 1.
    """
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"{policy}: fraction must be in (0, 1]; found {fraction!r}")
    if min_sites < 1:
        raise ValueError(f"{policy}: min_sites must be >= 1; found {min_sites!r}")


class Selector(ABC):
    """Chooses the sites of one round."""

    name: str = "abstract"

    @abstractmethod
    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        """Choose among ``candidates`` (sorted by site id) for round ``round_``."""

    def observe(self, round_: int, results: Mapping[str, SiteResult]) -> None:
        """Learn from how round ``round_`` went (default: nothing to learn)."""
        del round_, results

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state to keep with the coordinator's checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output on resume (default: nothing)."""
        del state


def schedule_digest(
    policy: str, selection: Selection, results: Mapping[str, SiteResult], candidates: int
) -> dict[str, Any]:
    """A round's scheduling decision in a few numbers, for the progress display and ``rounds.jsonl``."""
    measured = [r.seconds for r in results.values() if r.seconds is not None]
    out: dict[str, Any] = {
        "policy": policy,
        "chosen": len(selection.chosen),
        "candidates": candidates,
    }
    if selection.epochs:
        out["epochs"] = [min(selection.epochs.values()), max(selection.epochs.values())]
    if selection.deadline_s is not None:
        out["deadline_s"] = round(selection.deadline_s, 3)
    if selection.predicted_s:
        out["predicted_max_s"] = round(max(selection.predicted_s.values()), 3)
    if measured:
        out["measured_max_s"] = round(max(measured), 3)
    scaling = selection.details.get("scaling")
    if isinstance(scaling, dict):
        out["scaling"] = scaling.get("action")
    return out
