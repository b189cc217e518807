"""CKKS protection: the coordinator sums ciphertexts it cannot read and keeps the encrypted transcript."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from coordinator.protection.base import Collected, Noise, Protection, TrainRound, send_train
from coordinator.validation import check_reply_figures
from fedcore import records as R
from fedcore.config import PrivacySpec
from fedcore.storage import atomic_write_bytes
from scheduling.base import Candidate

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


class Ckks(Protection):
    """Adds encrypted updates with a context that holds no secret key.

    The coordinator never holds the global model in clear after round 0: it keeps the
    public round-0 model and, per round, the encrypted aggregate ``sum_i w_i * u_i`` with
    ``W = sum_i w_i`` (its transcript, on disk under ``directory``). A site holding the
    model of round ``r`` applies the aggregates of rounds ``r+1..`` it receives, so a site
    that missed rounds catches up. Replies are held to the same bounds as clear ones
    (example count, finite loss) besides the ciphertext checks.

    Args:
        privacy: The scenario's privacy section (mode ``ckks``).
        public_context: TenSEAL context without secret key (from the coordinator kit).
        max_sites: Most sites one round may sum (sizes the packing headroom).
        base: The round-0 model (public seeded initial weights).
        directory: Where the encrypted aggregates are kept (``OUT/state/ckks``).

    Raises:
        ValueError: the context holds a secret key, or the settings cannot run.
    """

    name = "ckks"

    def __init__(
        self,
        privacy: PrivacySpec,
        public_context: Any,
        max_sites: int,
        base: Mapping[str, np.ndarray],
        directory: Path,
    ) -> None:
        from secure.codecs import make_codec

        super().__init__()
        if public_context is None:
            raise ValueError(
                "privacy mode 'ckks' needs the coordinator kit's public CKKS context "
                "(fed-coordinator --kit, or let `fedcore run` provision one)"
            )
        if public_context.is_private():
            raise ValueError(
                "the coordinator's CKKS context holds a secret key; it must hold none. "
                "Use the coordinator kit's ckks-public.ctx"
            )
        self.privacy = privacy
        self.max_sites = max_sites
        self.codec = make_codec(privacy, public_context, max_sites)
        self.base = {k: np.array(v, copy=True) for k, v in base.items()}
        self.length = int(sum(np.asarray(v).size for v in base.values()))
        self.directory = directory
        self.rounds: list[R.CkksRound] = []
        self._index: list[dict[str, Any]] = []
        self._site_rounds: dict[str, int] = {}

    # ------------------------------------------------------------------ instructions

    @property
    def global_arrays(self) -> dict[str, np.ndarray]:
        return self.base

    @property
    def holds_global_model(self) -> bool:
        return False

    def instruction(self, cfg: R.RoundConfig, site: Candidate) -> RecordDict:
        """Content for a site: the aggregates it lacks (and the base model if it holds none).

        With ``site_clip`` set, the round config carries it: the site clips its update and
        refuses to apply an aggregate whose mean update is longer than the bound.
        """
        site_round = self._site_rounds.get(site.site_id, 0)
        missing = [r for r in self.rounds if r.round > site_round]
        if site_round > len(self.rounds):
            # the site claims a round this coordinator never made: resend everything
            missing, site_round = list(self.rounds), 0
        base = self.base if site_round == 0 else None
        return R.ckks_instruction(
            self.site_bounds(cfg), R.CkksAggregates(self.length, missing), base
        )

    def observe_telemetry(self, telemetry: R.Telemetry) -> None:
        self._site_rounds[telemetry.site_id] = telemetry.model_round

    def check_evaluations(self, round_: int, replies: Sequence[R.EvalReply]) -> list[str]:
        """Every evaluating site now holds this round's model; all must hold the same one."""
        for p in replies:
            self._site_rounds[p.site_id] = round_
        digests = {p.site_id: p.model_digest for p in replies}
        if len(set(digests.values())) > 1:
            log.warning("round %d: sites hold different global models: %s", round_, digests)
            return [f"sites disagree on the model: {digests}"]
        return []

    # ------------------------------------------------------------------ aggregation

    def check(self, reply: R.TrainReply) -> list[str]:
        """Every reason an encrypted update must be left out (empty: accept)."""
        from secure.ckks import CiphertextError

        if reply.encrypted is None:
            reasons = ["reply carries a clear model; privacy mode 'ckks' accepts only ciphertexts"]
        elif reply.length != self.length:
            reasons = [f"update has {reply.length} values; the model has {self.length}"]
        else:
            reasons = []
            try:
                self.codec.check(reply.encrypted, self.length)
            except CiphertextError as exc:
                reasons = [f"invalid ciphertext: {exc}"]
        return reasons + check_reply_figures(reply)

    def collect(self, rnd: TrainRound) -> Collected:
        return send_train(self, rnd, self.check)

    def combine(
        self,
        round_: int,
        updates: Sequence[tuple[list[bytes], float]],
        noise: np.ndarray | None = None,
    ) -> R.CkksRound:
        """Sum encrypted updates ``(chunks, weight)`` (and plain DP ``noise``) into an aggregate."""
        if not updates:
            raise ValueError("no encrypted update to aggregate")
        total = self.codec.add([chunks for chunks, _ in updates], self.length)
        if noise is not None:
            total = self.codec.add_plain(total, noise, self.length)
        return R.CkksRound(
            round=round_,
            chunks=total,
            weight=float(sum(w for _, w in updates)),
            count=len(updates),
        )

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        agg = self.combine(
            round_,
            [(r.encrypted or [], collected.weights[s]) for s, r in collected.accepted],
            None if noise is None else noise.on_sum(self.length),
        )
        self._index = [e for e in self._index if e["round"] < round_]
        self._index.append(self._commit(agg))

    # ------------------------------------------------------------------ transcript

    def _path(self, round_: int) -> Path:
        return self.directory / f"aggregate-round-{round_:04d}.bin"

    def _commit(self, agg: R.CkksRound) -> dict[str, Any]:
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

    def summary(self) -> dict[str, Any]:
        ck = self.privacy.ckks
        return {
            "ckks": {
                "poly_modulus_degree": ck.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(ck.coeff_mod_bit_sizes),
                "packing": ck.packing,
                "values_per_slot": ck.values_per_slot if ck.packing else 1,
                "error_bound": self.codec.error_bound(self.max_sites),
                "coordinator_holds_secret_key": False,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {"ckks": list(self._index)}

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Reload the aggregates a checkpoint lists (``ValueError`` if a file was damaged)."""
        index = list(state.get("ckks", []))
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
        self.rounds, self._index = rounds, index
