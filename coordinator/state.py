"""Coordinator state on disk: per-round checkpoints, round logs and the final result.

Every write is atomic (temporary file, then rename), so a crash at any moment
leaves the last completed round intact and loses at most the round in flight.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

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
]


class StateError(RuntimeError):
    """The state directory holds something this run must not overwrite or cannot read."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically save named arrays as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


def load_arrays_file(path: Path) -> dict[str, np.ndarray]:
    """Load named arrays saved by :func:`save_arrays`."""
    return dict(load_file(str(path)))


@dataclass
class Checkpoint:
    """What the coordinator needs to continue after a crash."""

    fingerprint: str
    round: int
    history: list[dict[str, Any]] = field(default_factory=list)
    schedule: list[dict[str, Any]] = field(default_factory=list)


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
        model = self._model_path(cp.round)
        if cp.round == 0 or not model.exists():
            return None
        return cp, load_arrays_file(model)

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
            fh.write(json.dumps(dict(record), default=_json_default) + "\n")
        csv_path = self.out / "rounds.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=ROUND_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            row = dict(record)
            row["sites"] = ";".join(record.get("sites", []))
            w.writerow(row)

    def reset_logs(self, history: list[dict[str, Any]] | None = None) -> None:
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
