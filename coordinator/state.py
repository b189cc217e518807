"""Coordinator state on disk: per-round checkpoints, round logs and the final result.

Every write is atomic (temporary file, then rename), so a crash at any moment
leaves the last completed round intact and loses at most the round in flight.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.storage import (
    atomic_write_bytes,
    atomic_write_json,
    json_default,
    load_arrays_file,
    save_arrays,
)

__all__ = [
    "ROUND_FIELDS",
    "Checkpoint",
    "StateError",
    "StateStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_arrays_file",
    "save_arrays",
]

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


class StateError(RuntimeError):
    """The state directory holds something this run must not overwrite or cannot read."""


@dataclass
class Checkpoint:
    """What the coordinator needs to continue after a crash."""

    fingerprint: str
    round: int
    history: list[dict[str, Any]] = field(default_factory=list)
    schedule: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Privacy state: the encrypted aggregates' index (``ckks``), the DP accountant."""


class StateStore:
    """The coordinator's run directory.

    Layout::

        OUT/state/checkpoint.json            last completed round, history
        OUT/state/global-round-NNNN.safetensors
        OUT/rounds.jsonl, OUT/rounds.csv     one line per completed round
        OUT/model.safetensors                final global model
        OUT/federation.json                  final status (completed / failed)
    """

    def __init__(self, out_dir: Path, keep: int = 2) -> None:
        self.out = Path(out_dir)
        self.state = self.out / "state"
        self.keep = keep
        self.out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ checkpoints

    def _model_path(self, round_: int) -> Path:
        return self.state / f"global-round-{round_:04d}.safetensors"

    def load(self, fingerprint: str) -> tuple[Checkpoint, dict[str, np.ndarray]] | None:
        """The last checkpoint of this scenario, or ``None`` if the directory holds none.

        Raises:
            StateError: if the directory holds a checkpoint of a different scenario.
        """
        cp = self.checkpoint(fingerprint)
        if cp is None:
            return None
        return cp, load_arrays_file(self._model_path(cp.round))

    def checkpoint(self, fingerprint: str) -> Checkpoint | None:
        """The last completed round's checkpoint of this scenario (without its model), or ``None``.

        Raises:
            StateError: if the directory holds a checkpoint of a different scenario.
        """
        path = self.state / "checkpoint.json"
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            cp = Checkpoint(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise StateError(
                f"{path}: unreadable checkpoint ({exc}); move it away to start afresh"
            ) from exc
        if cp.fingerprint != fingerprint:
            raise StateError(
                f"{self.out} holds the state of a different scenario (fingerprint {cp.fingerprint}, "
                f"this one is {fingerprint}); choose another output directory"
            )
        if cp.round == 0 or not self._model_path(cp.round).exists():
            return None
        return cp

    def save(self, cp: Checkpoint, arrays: Mapping[str, np.ndarray]) -> None:
        """Persist a completed round: model first, then the checkpoint that points at it."""
        save_arrays(self._model_path(cp.round), arrays)
        atomic_write_json(self.state / "checkpoint.json", cp.__dict__)
        for old in sorted(self.state.glob("global-round-*.safetensors"))[: -self.keep]:
            old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ logs and results

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
