"""The coordinator's side of CKKS aggregation: sums ciphertexts it cannot read, keeps the encrypted transcript."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fedcore import records as R
from fedcore.config import PrivacySpec
from fedcore.storage import atomic_write_bytes

log = logging.getLogger(__name__)


def pack_chunks(chunks: Sequence[bytes]) -> bytes:
    """Frame ciphertext chunks into one file body (count, then length-prefixed chunks)."""
    out = [len(chunks).to_bytes(4, "big")]
    for c in chunks:
        out += [len(c).to_bytes(8, "big"), c]
    return b"".join(out)


def unpack_chunks(blob: bytes) -> list[bytes]:
    """Inverse of :func:`pack_chunks`; ``ValueError`` on a damaged file."""
    if len(blob) < 4:
        raise ValueError("ciphertext file is truncated")
    n = int.from_bytes(blob[:4], "big")
    pos, out = 4, []
    for _ in range(n):
        if pos + 8 > len(blob):
            raise ValueError("ciphertext file is truncated")
        size = int.from_bytes(blob[pos : pos + 8], "big")
        pos += 8
        if pos + size > len(blob):
            raise ValueError("ciphertext file is truncated")
        out.append(blob[pos : pos + size])
        pos += size
    if pos != len(blob):
        raise ValueError("ciphertext file has trailing bytes")
    return out


@dataclass(frozen=True)
class Contribution:
    """One accepted site's encrypted update and the weight it was asked to apply."""

    site_id: str
    chunks: list[bytes]
    weight: float


class CkksAggregator:
    """Adds encrypted updates with a context that holds no secret key.

    The coordinator never holds the global model in clear after round 0: it keeps the
    public round-0 model and, per round, the encrypted aggregate ``sum_i w_i * u_i`` with
    ``W = sum_i w_i``. A site holding the model of round ``r`` applies the aggregates of
    rounds ``r+1..`` it receives, so a site that missed rounds catches up.

    Args:
        privacy: The scenario's privacy section (mode ``ckks``).
        public_context: TenSEAL context without secret key (from the coordinator kit).
        max_sites: Most sites one round may sum (sizes the packing headroom).
        base: The round-0 model (public seeded initial weights).
        directory: Where the encrypted aggregates are kept (``OUT/state/ckks``).
    """

    def __init__(
        self,
        privacy: PrivacySpec,
        public_context: Any,
        max_sites: int,
        base: Mapping[str, np.ndarray],
        directory: Path,
    ) -> None:
        from secure.codecs import make_codec

        if public_context.is_private():
            raise ValueError(
                "the coordinator's CKKS context holds a secret key; it must hold none. "
                "Use the coordinator kit's ckks-public.ctx"
            )
        self.privacy = privacy
        self.codec = make_codec(privacy, public_context, max_sites)
        self.base = {k: np.array(v, copy=True) for k, v in base.items()}
        self.length = int(sum(np.asarray(v).size for v in base.values()))
        self.directory = directory
        self.rounds: list[R.CkksRound] = []

    # ------------------------------------------------------------------ instructions

    def instruction(self, cfg: R.RoundConfig, site_round: int) -> RecordDict:
        """Train/evaluate content for a site holding the model of ``site_round``."""
        missing = [r for r in self.rounds if r.round > site_round]
        if site_round > len(self.rounds):
            # the site claims a round this coordinator never made: resend everything
            missing, site_round = list(self.rounds), 0
        base = self.base if site_round == 0 else None
        return R.ckks_instruction(cfg, R.CkksAggregates(self.length, missing), base)

    # ------------------------------------------------------------------ aggregation

    def check(self, reply: R.TrainReply) -> list[str]:
        """Every reason an encrypted update must be left out (empty: accept)."""
        from secure.ckks import CiphertextError

        if reply.encrypted is None:
            return ["reply carries a clear model; privacy mode 'ckks' accepts only ciphertexts"]
        if reply.length != self.length:
            return [f"update has {reply.length} values; the model has {self.length}"]
        try:
            self.codec.check(reply.encrypted, self.length)
        except CiphertextError as exc:
            return [f"invalid ciphertext: {exc}"]
        return []

    def combine(
        self, round_: int, contributions: Sequence[Contribution], noise: np.ndarray | None = None
    ) -> R.CkksRound:
        """Sum the accepted updates (and the DP noise, if any) into this round's aggregate."""
        if not contributions:
            raise ValueError("no encrypted update to aggregate")
        total = self.codec.add([c.chunks for c in contributions], self.length)
        if noise is not None:
            total = self.codec.add_plain(total, noise, self.length)
        agg = R.CkksRound(
            round=round_,
            chunks=total,
            weight=float(sum(c.weight for c in contributions)),
            count=len(contributions),
        )
        return agg

    # ------------------------------------------------------------------ persistence

    def _path(self, round_: int) -> Path:
        return self.directory / f"aggregate-round-{round_:04d}.bin"

    def commit(self, agg: R.CkksRound) -> dict[str, Any]:
        """Write the aggregate to disk and append it; returns its index entry for the checkpoint."""
        blob = pack_chunks(agg.chunks)
        atomic_write_bytes(self._path(agg.round), blob)
        self.rounds = [r for r in self.rounds if r.round < agg.round] + [agg]
        return {
            "round": agg.round,
            "weight": agg.weight,
            "count": agg.count,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }

    def restore(self, index: Sequence[Mapping[str, Any]]) -> None:
        """Reload the aggregates listed in a checkpoint (``ValueError`` if a file was damaged)."""
        rounds: list[R.CkksRound] = []
        for entry in index:
            path = self._path(int(entry["round"]))
            blob = path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
                raise ValueError(f"{path} does not match the checkpoint's digest")
            rounds.append(
                R.CkksRound(
                    int(entry["round"]),
                    unpack_chunks(blob),
                    float(entry["weight"]),
                    int(entry["count"]),
                )
            )
        self.rounds = rounds
