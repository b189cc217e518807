"""The site's side of the privacy modes: its kit, its copy of the global model (CKKS), update protection."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict

from fedcore import records as R
from fedcore.config import PrivacySpec, SiteConfig

log = logging.getLogger(__name__)

_KITS: dict[str, Any] = {}
_CONTEXTS: dict[str, Any] = {}


# --------------------------------------------------------------------------- kit and keys


def site_kit(context: Context, site_id: str) -> Any | None:
    """The site's kit named by node config ``kit`` (loaded once per process), or ``None``.

    Raises:
        ValueError: the kit was made for another site.
    """
    path = str(context.node_config.get("kit", "") or "")
    if not path:
        return None
    if path not in _KITS:
        from secure.kit import load_kit

        _KITS[path] = load_kit(Path(path), role="site")
    kit = _KITS[path]
    if kit.site_id != site_id:
        raise ValueError(
            f"the kit in {path} belongs to site {kit.site_id!r}, but this node serves site "
            f"{site_id!r}; give each site its own kit (fedcore provision)"
        )
    return kit


def sign_reply(context: Context, site_id: str, content: RecordDict, payload: bytes) -> RecordDict:
    """Sign ``payload`` with the site's node key when the site has a kit (returns ``content``)."""
    kit = site_kit(context, site_id)
    if kit is None:
        return content
    from secure.kit import sign

    return R.attach_signature(content, sign(kit, payload))


def secret_context(context: Context, site_id: str) -> Any:
    """The consortium's CKKS secret context from the site kit (loaded once per process)."""
    kit = site_kit(context, site_id)
    if kit is None:
        raise ValueError(
            "privacy mode 'ckks' needs the site's kit (node config 'kit'): it holds the CKKS "
            "secret key. Run `fedcore provision` and start the site with --kit"
        )
    key = str(kit.path)
    if key not in _CONTEXTS:
        from secure import kitfiles
        from secure.ckks import context_from_bytes

        data = (Path(kit.path) / kitfiles.CKKS_SECRET).read_bytes()
        _CONTEXTS[key] = context_from_bytes(data, expect_secret=True)
    return _CONTEXTS[key]


# --------------------------------------------------------------------------- flat vectors


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All arrays, names sorted, as one float64 vector."""
    if not arrays:
        return np.zeros(0)
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in sorted(arrays)])


def unflatten(vector: np.ndarray, template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`, shapes and dtypes taken from ``template``."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    for k in sorted(template):
        ref = np.asarray(template[k])
        out[k] = vector[pos : pos + ref.size].reshape(ref.shape).astype(ref.dtype)
        pos += ref.size
    if pos != vector.size:
        raise ValueError(f"vector has {vector.size} values; the model has {pos}")
    return out


def digest_hex(arrays: Mapping[str, np.ndarray]) -> str:
    """Short hex digest of a model (sites compare theirs through the coordinator)."""
    return R.arrays_digest(arrays).hex()[:16]


# --------------------------------------------------------------------------- the site's global model


def site_state_dir(site: SiteConfig, site_config_path: str) -> Path:
    """The site's state directory: ``state_dir``, else ``<site-id>-state`` next to its config."""
    if site.state_dir is not None:
        return Path(site.state_dir)
    return Path(site_config_path).resolve().parent / f"{site.id}-state"


@dataclass
class GlobalModelStore:
    """The site's copy of the global model in ``ckks`` mode (the coordinator holds none).

    Layout: ``STATE/global/<run_key>/model.safetensors`` and ``state.json`` (round, digest),
    written atomically, model first.
    """

    directory: Path

    @classmethod
    def for_site(cls, site: SiteConfig, site_config_path: str, run_key: str) -> GlobalModelStore:
        return cls(site_state_dir(site, site_config_path) / "global" / (run_key or "default"))

    def load(self) -> tuple[int, dict[str, np.ndarray]] | None:
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
        from fedcore.storage import atomic_write_json, save_arrays

        save_arrays(self.directory / "model.safetensors", arrays)
        atomic_write_json(
            self.directory / "state.json", {"round": round_, "digest": digest_hex(arrays)}
        )


def model_round(store: GlobalModelStore) -> int:
    """The last round whose aggregate the site applied (0: none yet)."""
    meta = store.directory / "state.json"
    if not meta.exists():
        return 0
    try:
        return int(json.loads(meta.read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def make_codec(privacy: PrivacySpec, ckks_context: Any, max_sites: int) -> Any:
    """The CKKS codec both sides build from the same settings (same packing layout)."""
    from secure.codecs import make_codec as _make

    return _make(privacy, ckks_context, max_sites)


def bring_up_to_date(
    store: GlobalModelStore, content: RecordDict, codec: Any
) -> tuple[int, dict[str, np.ndarray]]:
    """Apply the encrypted aggregates the site lacks; returns (round, global model).

    The base model (round 0) comes in clear in the instruction when the site holds none.
    Aggregates the site already applied are skipped, so a repeated message is harmless.
    """
    held = store.load()
    aggregates = R.CkksAggregates.from_content(content)
    if held is None:
        if R.ARRAYS not in content.array_records:
            raise ValueError(
                "this site holds no global model for the run and the instruction carries no base "
                "model; the coordinator must resend round 0"
            )
        current, arrays = 0, R.record_to_arrays(content.array_records[R.ARRAYS])
    else:
        current, arrays = held
    changed = held is None
    vec = flatten(arrays)
    for agg in aggregates.rounds:
        if agg.round <= current:
            continue
        if agg.round != current + 1:
            raise ValueError(
                f"missing encrypted aggregate: the site holds round {current}, next sent is "
                f"{agg.round}"
            )
        if aggregates.length != vec.size:
            raise ValueError(
                f"aggregate of round {agg.round} has {aggregates.length} values; the model has "
                f"{vec.size}"
            )
        total = codec.decrypt(agg.chunks, aggregates.length, agg.count)
        vec = vec + total / agg.weight
        current = agg.round
        changed = True
    arrays = unflatten(vec, arrays)
    if changed:
        store.save(current, arrays)
    return current, arrays
