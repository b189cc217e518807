"""The site's own copy of the global model (kept where the coordinator holds none, e.g. under CKKS)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcore import records as R

log = logging.getLogger(__name__)


def digest_hex(arrays: Mapping[str, np.ndarray]) -> str:
    """Short hex digest of a model (sites compare theirs through the coordinator)."""
    return R.arrays_digest(arrays).hex()[:16]


ROUND_KEY = "fedcore.round"
DIGEST_KEY = "fedcore.digest"
"""Keys of the model file's own metadata: the round it is the model of, and its digest."""


@dataclass
class GlobalModelStore:
    """The site's copy of the global model of one run.

    Layout: ``STATE/global/<run_key>/model.safetensors``, whose metadata names its round and
    digest, so that one atomic write replaces model and round together: a write that fails
    half-way leaves the previous model and round. ``state.json`` repeats round and digest for
    people and tools; the model file is what counts.
    """

    directory: Path

    @classmethod
    def for_run(cls, state_dir: Path, run_key: str) -> GlobalModelStore:
        """The store of run ``run_key`` under the site's state directory."""
        return cls(state_dir / "global" / (run_key or "default"))

    @property
    def model_path(self) -> Path:
        return self.directory / "model.safetensors"

    def load(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(round, model), or ``None`` when the site holds none (or it is damaged)."""
        meta = self._metadata()
        if meta is None:
            return None
        from safetensors.numpy import load_file

        try:
            arrays = dict(load_file(str(self.model_path)))
        except Exception as exc:  # damaged on disk: the coordinator resends the base model
            log.warning("%s is not readable (%s); holding no model", self.model_path, exc)
            return None
        if digest_hex(arrays) != meta[1]:
            log.warning("%s does not match its digest; holding no model", self.model_path)
            return None
        return meta[0], arrays

    def save(self, round_: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep the model of ``round_`` (one atomic write; then ``state.json`` for reference)."""
        from safetensors.numpy import save_file

        from fedcore.storage import atomic_path, atomic_write_json

        digest = digest_hex(arrays)
        tensors = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}
        with atomic_path(self.model_path) as tmp:
            save_file(tensors, str(tmp), metadata={ROUND_KEY: str(round_), DIGEST_KEY: digest})
        atomic_write_json(self.directory / "state.json", {"round": round_, "digest": digest})

    def round(self) -> int:
        """The round of the model the site holds: 0 when it holds none or the one it holds is
        damaged (the coordinator then sends the base model and every aggregate again)."""
        held = self.load()
        return 0 if held is None else held[0]

    def _metadata(self) -> tuple[int, str] | None:
        """(round, digest) of the model file, from its header (or ``state.json`` for a file
        written before the header held them); ``None`` when there is no readable model."""
        header = _safetensors_metadata(self.model_path)
        if header is None:
            return None
        try:
            if ROUND_KEY in header:
                return int(header[ROUND_KEY]), str(header[DIGEST_KEY])
            info = json.loads((self.directory / "state.json").read_text())
            return int(info["round"]), str(info["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file's header (``{}`` if none), or ``None`` when
    the file is absent or its header is not readable. Reads the header only."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 1 << 24:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None
