"""Coordinator state: completed rounds in a transactional store, and the files users read.

The rounds (checkpoint and model) live in a :class:`RoundStore`: SQLite in
``OUT/state/state.db`` by default, one transaction per round, checked on load with a fall
back to the newest intact round. Round logs, the final status and the final model stay
plain files in ``OUT`` (:class:`RunOutputs`). See ``docs/state.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from coordinator.state.base import (
    Checkpoint,
    Recovery,
    RoundStore,
    StateError,
)
from coordinator.state.legacy import LEGACY_CHECKPOINT, read_legacy
from coordinator.state.outputs import ROUND_FIELDS, RunOutputs
from coordinator.state.sqlite import SQLiteRoundStore
from fedcore.storage import atomic_write_bytes, atomic_write_json, load_arrays_file, save_arrays

__all__ = [
    "ROUND_FIELDS",
    "Checkpoint",
    "Recovery",
    "RoundStore",
    "RunOutputs",
    "SQLiteRoundStore",
    "StateError",
    "StateStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_arrays_file",
    "save_arrays",
]

log = logging.getLogger(__name__)

STATE_DB = "state.db"


class StateStore(RunOutputs):
    """The coordinator's run directory: its round store and the files users read.

    Layout::

        OUT/state/state.db                   completed rounds: checkpoint + model (SQLite)
        OUT/state/ckks/                      encrypted aggregates (CKKS mode)
        OUT/rounds.jsonl, OUT/rounds.csv     one line per completed round
        OUT/model.safetensors                final global model
        OUT/federation.json                  final status (completed / failed)

    A directory written by the file layout of earlier versions (``state/checkpoint.json``
    and ``state/global-round-NNNN.safetensors``) is read once, copied into the round store,
    and its ``checkpoint.json`` renamed ``checkpoint.json.imported``.

    Args:
        out_dir: The run directory; made if missing.
        keep: How many of the newest rounds the default store keeps (default 2).
        rounds: The round store; default :class:`SQLiteRoundStore` in ``OUT/state/state.db``.
    """

    def __init__(self, out_dir: Path, keep: int = 2, rounds: RoundStore | None = None) -> None:
        super().__init__(out_dir)
        self.state = self.out / "state"
        self.keep = keep
        self.rounds = (
            rounds if rounds is not None else SQLiteRoundStore(self.state / STATE_DB, keep)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.out)!r}, rounds={self.rounds!r})"

    @property
    def recovered(self) -> Recovery | None:
        """How the last load fell back past damaged rounds, or ``None`` (see :class:`Recovery`)."""
        return self.rounds.recovered

    def load(self, fingerprint: str) -> tuple[Checkpoint, dict[str, np.ndarray]] | None:
        """The newest intact round of this scenario with its model, or ``None`` if none is stored.

        Raises:
            StateError: another scenario's state, or state that exists but cannot be used.
        """
        self._import_legacy(fingerprint)
        return self.rounds.load(fingerprint)

    def checkpoint(self, fingerprint: str) -> Checkpoint | None:
        """The newest intact round's checkpoint of this scenario (without its model), or ``None``.

        Raises:
            StateError: another scenario's state, or state that exists but cannot be used.
        """
        self._import_legacy(fingerprint)
        return self.rounds.checkpoint(fingerprint)

    def save(self, cp: Checkpoint, arrays: Mapping[str, np.ndarray]) -> None:
        """Persist a completed round, checkpoint and model in one transaction."""
        self.rounds.save(cp, arrays)

    def _import_legacy(self, fingerprint: str) -> None:
        legacy = read_legacy(self.state, fingerprint)
        if legacy is None:
            return
        if self.rounds.checkpoint(fingerprint) is None:
            self.rounds.save(*legacy)
            log.info(
                "%s: copied round %d from the earlier file layout into %s",
                self.state,
                legacy[0].round,
                self.rounds.where,
            )
        old = self.state / LEGACY_CHECKPOINT
        os.replace(old, old.with_name(old.name + ".imported"))
