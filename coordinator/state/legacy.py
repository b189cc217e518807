"""Read-once support for run directories written before the SQLite store (checkpoint.json + files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coordinator.state.base import Checkpoint, StateError, check_fingerprint
from fedcore.storage import load_arrays_file

__all__ = ["LEGACY_CHECKPOINT", "legacy_model_path", "read_legacy"]

LEGACY_CHECKPOINT = "checkpoint.json"


def legacy_model_path(state: Path, round_: int) -> Path:
    """Where the file layout kept a round's model: ``STATE/global-round-NNNN.safetensors``."""
    return state / f"global-round-{round_:04d}.safetensors"


def read_legacy(state: Path, fingerprint: str) -> tuple[Checkpoint, dict[str, np.ndarray]] | None:
    """The last round saved in the file layout, or ``None`` when ``state`` holds none.

    Args:
        state: The state folder (``OUT/state``).
        fingerprint: This scenario's fingerprint.

    Raises:
        StateError: the checkpoint is unreadable, belongs to another scenario, or its model
            file is missing or unreadable.
    """
    path = state / LEGACY_CHECKPOINT
    if not path.exists():
        return None
    try:
        cp = Checkpoint(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(
            f"{path}: expected a checkpoint written by an earlier fedcore, found an unreadable "
            f"file ({exc}). Fix: move it away to start afresh, or start with a fresh --out"
        ) from exc
    check_fingerprint(cp.fingerprint, fingerprint, str(state.parent))
    if cp.round == 0:
        return None
    model = legacy_model_path(state, cp.round)
    try:
        arrays = load_arrays_file(model)
    except Exception as exc:  # OSError, or safetensors' own error type
        raise StateError(
            f"{path} says round {cp.round} is complete: expected its model {model.name}, found "
            f"it missing or unreadable ({exc}). Fix: restore the file, or move {state} away "
            "to start from round 0"
        ) from exc
    return cp, arrays
