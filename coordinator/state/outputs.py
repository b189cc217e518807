"""The files users read in a run directory: round logs, the final status and model."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.storage import atomic_write_json, json_default, save_arrays

__all__ = ["ROUND_FIELDS", "RunOutputs"]

ROUND_FIELDS = [
    "round",
    "sites",
    "loss",
    "eval_loss",
    "pr_auc",
    "roc_auc",
    "seconds",
    "bytes_up",
    "bytes_down",
    "epsilon",
    "virtual_time_s",
]


class RunOutputs:
    """``rounds.jsonl``, ``rounds.csv``, ``federation.json`` and ``model.safetensors`` in ``out``.

    These stay plain files whatever store keeps the rounds: people, scripts and tests read them.
    ``rounds.*`` are rebuilt from the checkpoint's history on resume (:meth:`reset_logs`).

    Args:
        out_dir: The run directory; made if missing.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Append one round to ``rounds.jsonl`` and ``rounds.csv``."""
        with open(self.out / "rounds.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(record), default=json_default) + "\n")
        csv_path = self.out / "rounds.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=ROUND_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            row = dict(record)
            row["sites"] = ";".join(record.get("sites", []))
            w.writerow(row)

    def reset_logs(self, history: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Start the round logs afresh, holding ``history`` (the checkpoint's rounds on resume)."""
        for name in ("rounds.jsonl", "rounds.csv", "federation.json"):
            (self.out / name).unlink(missing_ok=True)
        for record in history or []:
            self.append_round(record)

    def write_result(self, result: Mapping[str, Any]) -> None:
        """Write ``federation.json``."""
        atomic_write_json(self.out / "federation.json", dict(result))

    def save_model(self, arrays: Mapping[str, np.ndarray]) -> Path:
        """Write the final global model; returns its path."""
        path = self.out / "model.safetensors"
        save_arrays(path, arrays)
        return path
