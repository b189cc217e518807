"""The coordinator's round store: the interface, its records, and the checks every store shares."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcore.storage import arrays_from_bytes, arrays_to_bytes, json_default

__all__ = [
    "Checkpoint",
    "DamagedRound",
    "EncodedRound",
    "Recovery",
    "RoundStore",
    "StateError",
    "check_fingerprint",
    "decode_checkpoint",
    "decode_round",
    "encode_round",
]


class StateError(RuntimeError):
    """The state directory holds something this run must not overwrite or cannot read."""


class DamagedRound(Exception):
    """One stored round cannot be used (unreadable, or its bytes do not match their digest)."""


@dataclass
class Checkpoint:
    """What the coordinator needs to continue after a crash."""

    fingerprint: str
    round: int
    history: list[dict[str, Any]] = field(default_factory=list)
    schedule: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Privacy state: the encrypted aggregates' index (``ckks``), the DP accountant."""


@dataclass(frozen=True)
class EncodedRound:
    """A completed round as a store keeps it: checkpoint JSON and model bytes, each with its digest."""

    round: int
    fingerprint: str
    checkpoint_json: str
    checkpoint_sha256: str
    model: bytes
    model_sha256: str


@dataclass(frozen=True)
class Recovery:
    """The store fell back from damaged rounds to an older intact one.

    Attributes:
        round: The round the run resumes after (the newest intact one).
        skipped: Each newer round that could not be used, with the reason.
        where: The store (e.g. the database file) for the message.
        note: What else was found and done (e.g. a failed integrity check and where the
            damaged file was moved); empty when nothing.
    """

    round: int
    skipped: tuple[tuple[int, str], ...]
    where: str
    note: str = ""

    @property
    def message(self) -> str:
        """One line for the log, the audit and the operator."""
        parts = [f"{self.where}: resuming after round {self.round}, the newest intact round"]
        if self.skipped:
            bad = "; ".join(f"round {r}: {why}" for r, why in self.skipped)
            parts.append(f"newer round(s) skipped as damaged ({bad})")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_round(cp: Checkpoint, arrays: Mapping[str, np.ndarray]) -> EncodedRound:
    """A checkpoint and its model as stored bytes with their SHA-256 digests (pure, no I/O)."""
    text = json.dumps(cp.__dict__, default=json_default)
    model = arrays_to_bytes(arrays)
    return EncodedRound(
        round=cp.round,
        fingerprint=cp.fingerprint,
        checkpoint_json=text,
        checkpoint_sha256=_sha256(text.encode()),
        model=model,
        model_sha256=_sha256(model),
    )


def decode_checkpoint(stored: EncodedRound) -> Checkpoint:
    """The checkpoint of a stored round, after checking its digest.

    Raises:
        DamagedRound: the JSON does not match its digest, does not parse, or names another round.
    """
    if _sha256(stored.checkpoint_json.encode()) != stored.checkpoint_sha256:
        raise DamagedRound("checkpoint does not match its SHA-256 digest")
    try:
        cp = Checkpoint(**json.loads(stored.checkpoint_json))
    except (ValueError, TypeError) as exc:
        raise DamagedRound(f"checkpoint unreadable ({exc})") from exc
    if cp.round != stored.round:
        raise DamagedRound(f"checkpoint says round {cp.round}, stored as round {stored.round}")
    return cp


def decode_round(stored: EncodedRound) -> tuple[Checkpoint, dict[str, np.ndarray]]:
    """The checkpoint and model of a stored round, after checking both digests.

    Raises:
        DamagedRound: either part does not match its digest or does not parse.
    """
    cp = decode_checkpoint(stored)
    if _sha256(stored.model) != stored.model_sha256:
        raise DamagedRound("model does not match its SHA-256 digest")
    try:
        arrays = arrays_from_bytes(stored.model)
    except Exception as exc:  # safetensors raises its own error type
        raise DamagedRound(f"model unreadable ({exc})") from exc
    return cp, arrays


def check_fingerprint(found: str, expected: str, where: str) -> None:
    """Refuse the state of another scenario.

    Raises:
        StateError: ``found`` differs from ``expected``; the message says expected / found / fix.
    """
    if found != expected:
        raise StateError(
            f"{where} holds the state of a different scenario: expected fingerprint {expected}, "
            f"found {found}. Fix: choose another output directory (--out), or run the scenario "
            "that wrote it"
        )


class RoundStore(ABC):
    """Where the coordinator keeps its completed rounds, one transaction per round.

    SQLite (:class:`~coordinator.state.sqlite.SQLiteRoundStore`) is the default; a PostgreSQL
    store would implement the same four methods over a table of the same columns as
    :class:`EncodedRound` (see ``docs/state.md``). A store guarantees:

    - :meth:`save` is all or nothing: after a crash at any moment, :meth:`load` returns
      the round saved before or the round being saved, never a mix;
    - :meth:`load` verifies what it returns (each round's digests) and falls back past
      damaged rounds to the newest intact one, setting :attr:`recovered` and logging a
      warning; it raises :class:`StateError` when state exists but none of it is usable;
    - another scenario's state is refused with :class:`StateError`.

    Attributes:
        recovered: Set by :meth:`load` / :meth:`checkpoint` when they fell back past damaged
            rounds; ``None`` when the newest round was intact (or nothing is stored).
    """

    recovered: Recovery | None = None

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the state lives, for messages (a path, a database URL without password)."""

    @abstractmethod
    def checkpoint(self, fingerprint: str) -> Checkpoint | None:
        """The newest intact round's checkpoint of this scenario, or ``None`` if none is stored.

        Raises:
            StateError: another scenario's state, or state that exists but cannot be used.
        """

    @abstractmethod
    def load(self, fingerprint: str) -> tuple[Checkpoint, dict[str, np.ndarray]] | None:
        """The newest intact round of this scenario with its model, or ``None`` if none is stored.

        Raises:
            StateError: another scenario's state, or state that exists but cannot be used.
        """

    @abstractmethod
    def save(self, cp: Checkpoint, arrays: Mapping[str, np.ndarray]) -> None:
        """Store a completed round (checkpoint and model) in one transaction.

        Rounds numbered ``cp.round`` or later are replaced (a resumed run rewrites what came
        after its start); only the newest rounds the store keeps remain.

        Raises:
            StateError: the store holds another scenario's state.
        """
