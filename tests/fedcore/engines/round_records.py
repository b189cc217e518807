"""Round records as the coordinator writes them to rounds.jsonl, for the metrics and status tests."""

from __future__ import annotations

from typing import Any


def round_record(rnd: int, **extra: Any) -> dict[str, Any]:
    """A plausible round record of round ``rnd`` (two sites aggregated, nothing rejected)."""
    record: dict[str, Any] = {
        "round": rnd,
        "sites": ["bank-a", "bank-b"],
        "loss": 0.5,
        "eval_loss": 0.4,
        "pr_auc": 0.8,
        "roc_auc": 0.9,
        "seconds": 4.0,
        "bytes_up": 1000,
        "bytes_down": 3000,
        "rejected": {},
        "per_site": {},
        "schedule": {"policy": "all", "chosen": 2, "candidates": 3},
    }
    return record | extra
