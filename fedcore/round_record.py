"""The record of one finished round: what ``rounds.jsonl``, the checkpoint's history,
``summary.json``'s ``rounds``, the progress display and the operator's views read.

Apart from the message records (:mod:`fedcore.records`, which re-exports it): this is the
coordinator's outcome of a round, not anything sent over the wire.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["RoundRecord"]


class _RoundRecordRequired(TypedDict):
    round: int
    sites: list[str]
    """Sites whose update entered the aggregate (sorted)."""
    loss: float
    """Mean training loss of the contributing sites (example-weighted; NaN: none)."""
    eval_loss: float
    pr_auc: float
    """Pooled PR-AUC of the global model over every evaluating site's test data."""
    roc_auc: float
    seconds: float
    """Wall seconds the round took at the coordinator."""
    bytes_up: int
    """Bytes the sites sent in the round's exchanges (telemetry query, train, evaluate)."""
    bytes_down: int
    """Bytes sent to the sites in the round's exchanges."""
    rejected: dict[str, list[str]]
    """Sites (or nodes) left out this round, with every reason."""
    per_site: dict[str, dict[str, float]]
    """Each evaluating site's own metrics."""
    schedule: dict[str, Any]
    """The scheduling decision in a few numbers (``scheduling.base.schedule_digest``)."""


class RoundRecord(_RoundRecordRequired, total=False):
    """One finished round as the driver records it: ``rounds.jsonl``, the checkpoint's
    history, ``summary.json``'s ``rounds`` and the progress display all read this shape."""

    epsilon: float
    """Privacy spent so far (DP only)."""
    virtual_time_s: float
    """A simulated consortium's virtual clock after this round."""
    exchanges: int
    """Exchanges with the sites the round took (each SecAgg+ stage counts once): train and
    evaluate, plus a telemetry query where a connected node had no telemetry from the last
    evaluation (every node in a run's first round)."""
    eval_problems: dict[str, list[str]]
    """Sites whose evaluation of this round's model was left out of the pooled metrics
    (malformed, unsigned, signed for another site or round), with every reason."""
    telemetry_problems: dict[str, list[str]]
    """Sites whose telemetry was refused this round (out-of-range readings, a bad
    signature), with every reason; a refused carried telemetry is asked for again."""
    robust: dict[str, Any]
    """Robust aggregation's account of the round: ``rule`` applied, ``norm_bound`` (or
    ``None``), sites ``clipped`` to it and sites ``left_out`` by the rule with the reason."""
