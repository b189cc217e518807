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


@dataclass
class GlobalModelStore:
    """The site's copy of the global model of one run.

    Layout: ``STATE/global/<run_key>/model.safetensors`` and ``state.json`` (round, digest),
    written atomically, model first.
    """

    directory: Path

    @classmethod
    def for_run(cls, state_dir: Path, run_key: str) -> GlobalModelStore:
        """The store of run ``run_key`` under the site's state directory."""
        return cls(state_dir / "global" / (run_key or "default"))

    def load(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(round, model), or ``None`` when the site holds none (or it does not match its digest)."""
        meta = self.directory / "state.json"
        model = self.directory / "model.safetensors"
        if not meta.exists() or not model.exists():
            return None
        from safetensors.numpy import load_file

        info = json.loads(meta.read_text())
        arrays = dict(load_file(str(model)))
        if digest_hex(arrays) != info.get("digest"):
            log.warning("%s does not match its state.json; starting from the base model", model)
            return None
        return int(info["round"]), arrays

    def save(self, round_: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep the model of ``round_`` (model first, then the state that names it)."""
        from fedcore.storage import atomic_write_json, save_arrays

        save_arrays(self.directory / "model.safetensors", arrays)
        atomic_write_json(
            self.directory / "state.json", {"round": round_, "digest": digest_hex(arrays)}
        )

    def round(self) -> int:
        """The last round whose aggregate the site applied (0: none yet)."""
        meta = self.directory / "state.json"
        if not meta.exists():
            return 0
        try:
            return int(json.loads(meta.read_text())["round"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
