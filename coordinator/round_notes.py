"""What a finished round adds to the coordinator's log and round records besides its figures: the log line, the sites' data-quality and serving summaries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("coordinator.driver")


def log_round(done: Mapping[str, Any]) -> None:
    """One log line for a finished round record."""
    log.info(
        "round %d: sites=%s loss=%.4f pr_auc=%.4f %.1fs%s",
        done["round"],
        done["sites"],
        done["loss"],
        done["pr_auc"],
        done["seconds"],
        f" epsilon={done['epsilon']:.3f}" if "epsilon" in done else "",
    )


def quality_note(
    current: Mapping[str, Mapping[str, float]], shown: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The ``data_quality`` entry of a round record: the summaries that are new or changed.

    Each site's data-quality summary (counts, shares, rates, drift: never a row) is
    recorded in the first round it arrives and again only when it changes, so
    ``rounds.jsonl`` shows every summary the coordinator judged without repeating it.

    Args:
        current: Site -> the summary its latest telemetry carried.
        shown: Site -> the summary last recorded; updated in place.

    Returns:
        ``{"data_quality": {site: summary}}``, or ``{}`` when nothing is new.
    """
    new = {site: dict(q) for site, q in current.items() if shown.get(site) != dict(q)}
    shown.update(new)
    return {"data_quality": new} if new else {}


def serving_note(
    current: Mapping[str, Mapping[str, float]], shown: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The ``serving`` entry of a round record: the sites' serving summaries that are new or changed.

    Each site's scoring-service summary (counts, PSI, PR-AUC and its reference, flagged
    rates, ``alarm_psi``, ``alarm_metric`` and ``retrain`` flags: never a transaction or
    a score) is recorded when it first arrives and again when it changes, as
    :func:`quality_note` does; the status board shows a site's alarms from it.

    Args:
        current: Site -> the serving summary its latest telemetry carried.
        shown: Site -> the summary last recorded; updated in place.

    Returns:
        ``{"serving": {site: summary}}``, or ``{}`` when nothing is new.
    """
    new = {site: dict(q) for site, q in current.items() if shown.get(site) != dict(q)}
    for site, summary in new.items():
        if summary.get("retrain") and not shown.get(site, {}).get("retrain"):
            log.warning(
                "site %s: its served model's monitor suggests retraining (%s)",
                site,
                ", ".join(k for k in ("alarm_psi", "alarm_metric") if summary.get(k)) or "alarm",
            )
    shown.update(new)
    return {"serving": new} if new else {}


class SiteSummaries:
    """The sites' latest data-quality and serving summaries, and what the round records showed."""

    def __init__(self) -> None:
        self.quality: dict[str, dict[str, float]] = {}
        self.serving: dict[str, dict[str, float]] = {}
        self._quality_shown: dict[str, dict[str, float]] = {}
        self._serving_shown: dict[str, dict[str, float]] = {}

    def seen(self, site: str, quality: Mapping[str, float], serving: Mapping[str, float]) -> None:
        """Keep what a site's verified telemetry carried (empty summaries change nothing)."""
        if quality:
            self.quality[site] = dict(quality)
        if serving:
            self.serving[site] = dict(serving)

    def notes(self) -> dict[str, Any]:
        """The ``data_quality`` and ``serving`` entries of a round record (new or changed only)."""
        return {
            **quality_note(self.quality, self._quality_shown),
            **serving_note(self.serving, self._serving_shown),
        }
