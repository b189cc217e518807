"""The packed CKKS codec: quantized values several to a slot (BatchCrypt; Zhang et al., USENIX ATC 2020)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import tenseal as ts

from secure.ckks.base import _ceil_div, _CodecBase, _Loaded
from secure.ckks.chunks import _KIND_PACKED, CiphertextError
from secure.ckks.params import CkksParams, FloatArray, fresh_noise_std
from secure.packing import (
    MAX_SLOT_BITS,
    LaneLayout,
    dequantize_sum,
    lane_layout,
    pack,
    quantization_error_bound,
    quantize,
    quantize_noise,
    round_slots,
    unpack,
)

logger = logging.getLogger(__name__)

ROUNDING_SIGMAS = 20.0
"""Packed mode: half a unit is this many noise standard deviations of a full sum."""

ROUNDING_TOLERANCE = 0.25
"""Packed mode: a decrypted slot farther than this from an integer is refused (10 sigma)."""

PACKED_MAX_CAPACITY_BITS = 46
"""Packed slot integers stay below ``2**46`` so float64 encoding error stays below ``2**-7``."""


class PackedCodec(_CodecBase):
    """Quantized values packed several to a slot (BatchCrypt; Zhang et al., USENIX ATC 2020).

    Each weighted value is clipped to ``[-clip, clip]``, quantized to ``quant_bits`` bits
    and packed ``values_per_slot`` to a slot (:mod:`secure.packing`). The slot integers
    are encrypted at scale ``2**scale_bits`` with ``scale_bits`` the smallest for which
    half a unit is 20 noise standard deviations of a sum of ``max_sites + 1``
    ciphertexts (:func:`fresh_noise_std`), so a decrypted sum rounds to the exact slot
    integers; what is left fills the slot: ``data_bits - 3 - scale_bits`` bits (at most
    46). Defaults (N=8192, chain (60, 40), symmetric, 3 values per slot): 10 sites ->
    scale 2^15, 14-bit lanes, 10 quantization bits; 3 sites -> 12 bits; 100 sites -> 6.

    Args:
        context: the consortium's secret context (sites) or a public one (coordinator).
        params: the parameters the context was made with (``scale_bits`` is not used).
        max_sites: most updates one sum may hold; the lanes keep room for their sum.
        clip: the weighted values are clipped to ``[-clip, clip]``.
        values_per_slot: values packed into one slot (default 3).
        noise_std: standard deviation of the plaintext noise :meth:`add_plain` may add to
            a sum, in the values' units (default 0: no room for noise).

    Raises:
        ValueError: the context does not match ``params``, or the packing does not fit
            (the message says what to lower).
    """

    _kind = _KIND_PACKED

    def __init__(
        self,
        context: ts.Context,
        params: CkksParams,
        *,
        max_sites: int,
        clip: float,
        values_per_slot: int = 3,
        noise_std: float = 0.0,
    ) -> None:
        if isinstance(max_sites, bool) or max_sites < 1:
            raise ValueError(f"max_sites must be at least 1; got {max_sites!r}")
        sigma = fresh_noise_std(params)
        scale_bits = math.ceil(math.log2(2.0 * ROUNDING_SIGMAS * sigma * math.sqrt(max_sites + 1)))
        capacity = min(params.data_bits - 3 - scale_bits, PACKED_MAX_CAPACITY_BITS, MAX_SLOT_BITS)
        if capacity < 1:
            raise ValueError(
                f"{params.describe()} leaves no room for packed integers at scale 2^{scale_bits}; "
                "use a chain with a larger first prime (e.g. (60, 40))"
            )
        super().__init__(context, params, scale_bits)
        self.capacity_bits = capacity
        self.layout: LaneLayout = lane_layout(capacity, max_sites, values_per_slot, clip, noise_std)
        self.max_sites = max_sites
        self.noise_std = noise_std

    def __repr__(self) -> str:
        return f"PackedCodec({self.description})"

    @property
    def description(self) -> str:
        lay = self.layout
        return (
            f"{self.params.describe()} scale=2^{self.scale_bits} k={lay.values_per_slot} "
            f"lane={lay.lane_bits} b={lay.quant_bits} clip={lay.clip!r} "
            f"sites<={lay.max_sites} noise<={lay.noise_limit}"
        )

    @property
    def quant_bits(self) -> int:
        """Quantization bits of one value."""
        return self.layout.quant_bits

    @property
    def lane_bits(self) -> int:
        """Bits of one lane (quantization bits plus headroom)."""
        return self.layout.lane_bits

    @property
    def step(self) -> float:
        """Quantization step, ``2 * clip / (2**quant_bits - 1)``."""
        return self.layout.step

    @property
    def values_per_chunk(self) -> int:
        """Values one chunk (ciphertext) carries, ``slots * values_per_slot``."""
        return self.params.slots * self.layout.values_per_slot

    def _slot_count(self, length: int) -> int:
        return _ceil_div(length, self.layout.values_per_slot)

    def _check_sites(self, num_sites: int) -> None:
        if isinstance(num_sites, bool) or not 1 <= num_sites <= self.max_sites:
            raise ValueError(
                f"num_sites must be in 1..{self.max_sites} (max_sites); got {num_sites!r}"
            )

    def encrypt(self, values: npt.ArrayLike) -> list[bytes]:
        """Clip, quantize, pack and encrypt a 1-D vector of weighted values.

        Values beyond ``clip`` are clipped (logged as a warning with their count).

        Raises:
            ValueError: ``values`` is empty, not 1-D or not finite.
            NoSecretKeyError: the context holds no key to encrypt with.
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"values must be a non-empty 1-D vector; got shape {arr.shape}")
        q = quantize(arr, self.layout)
        clipped = int(np.count_nonzero(np.abs(arr) > self.layout.clip))
        if clipped:
            logger.warning(
                "%d of %d values exceed the packing clip %g and were clipped",
                clipped,
                arr.size,
                self.layout.clip,
            )
        slots = pack(q, self.layout)
        return self._encrypt_slots(slots, arr.size, self._chunk_sizes(arr.size))

    def add(self, updates: Sequence[Sequence[bytes]], length: int) -> list[bytes]:
        """Check every update and return their sum; refuses sums beyond ``max_sites``.

        Raises:
            CiphertextError: an update is bad (the message names update and chunk).
            ValueError: ``updates`` is empty, or they hold more than ``max_sites`` updates
                or more than one noise vector together (lanes could overflow).
        """
        summed, sites, noise = self._add_loaded(updates, length)
        if sites > self.max_sites or noise > 1:
            raise ValueError(
                f"the sum would hold {sites} update(s) and {noise} noise vector(s); the lanes "
                f"keep room for {self.max_sites} and 1: make the codec with max_sites >= {sites}"
            )
        return self._reframe(summed, length, sites=sites, noise=noise)

    def add_plain(self, chunks: Sequence[bytes], values: npt.ArrayLike, length: int) -> list[bytes]:
        """Add a plaintext noise vector to an encrypted sum; no key needed.

        The noise is rounded to whole quantization steps and clamped to
        ``[-noise_limit, noise_limit]`` steps (8 standard deviations of ``noise_std``),
        then added in the packed integer domain; the clamp keeps the lanes from
        overflowing and alters a Gaussian draw with probability below ``1.3e-15`` per value.
        A sum takes one noise vector.

        Raises:
            CiphertextError: a chunk is bad.
            ValueError: the codec keeps no room for noise, the chunks already hold noise,
                or ``values`` has the wrong length or is not finite.
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (length,):
            raise ValueError(
                f"noise must hold {length} values (one per value of the sum); got shape {arr.shape}"
            )
        noise = quantize_noise(arr, self.layout)
        clamped = int(np.count_nonzero(np.abs(np.rint(arr / self.step)) > self.layout.noise_limit))
        if clamped:
            logger.warning(
                "%d noise value(s) clamped to %d steps", clamped, self.layout.noise_limit
            )
        loaded = self._load(chunks, length)
        if loaded.noise:
            raise ValueError(
                "these chunks already hold a noise vector; the lanes keep room for one"
            )
        slots = pack(noise, self.layout)
        start = 0
        vectors = []
        for v in loaded.vectors:
            n = v.size()
            vectors.append(v + slots[start : start + n].tolist())
            start += n
        return self._reframe(_Loaded(vectors, loaded.sites, 1), length, sites=loaded.sites, noise=1)

    def decrypt(self, chunks: Sequence[bytes], length: int, num_sites: int) -> FloatArray:
        """Decrypt a sum of ``num_sites`` updates into ``length`` float64 values (needs the secret key).

        The slots are rounded to integers (refused if any is farther than 0.25 from one),
        unpacked, and offset-corrected: ``lane * step - num_sites * clip``.

        Raises:
            CiphertextError: a chunk is bad, the chunks hold another number of updates,
                or the decrypted slots are not valid packed integers (encrypted under
                another key, altered, or overflowed).
            NoSecretKeyError: the context holds no secret key.
            ValueError: ``num_sites`` is not in ``1..max_sites``.
        """
        self._check_sites(num_sites)
        self._require_secret()
        loaded = self._load(chunks, length)
        if num_sites != loaded.sites:
            raise CiphertextError(
                f"the chunks hold a sum of {loaded.sites} update(s), but num_sites={num_sites}"
            )
        lay = self.layout
        lo = lay.lane_min * loaded.noise
        hi = num_sites * lay.levels + lay.noise_limit * loaded.noise
        out = []
        start = 0
        for i, part in enumerate(self._decrypt_chunks(loaded)):
            n = min(part.size * lay.values_per_slot, length - start)
            try:
                lanes = unpack(round_slots(part, ROUNDING_TOLERANCE), n, lay)
            except ValueError as exc:
                raise CiphertextError(
                    f"decrypted to invalid packed slots ({exc}): encrypted under another secret "
                    "key, altered, or summed over more than max_sites updates",
                    chunk=i,
                ) from exc
            if lanes.size and (lanes.min() < lo or lanes.max() > hi):
                raise CiphertextError(
                    f"decrypted lanes span {lanes.min()}..{lanes.max()}, outside {lo}..{hi} for "
                    f"{num_sites} update(s): encrypted under another secret key or altered",
                    chunk=i,
                )
            out.append(lanes)
            start += n
        return dequantize_sum(np.concatenate(out), num_sites, lay)

    def error_bound(self, num_sites: int) -> float:
        """Bound on the max abs error of a decrypted sum of ``num_sites`` updates: ``num_sites * step / 2``.

        Quantization rounds each value to the nearest step; the CKKS noise is removed
        exactly by rounding the slots (failure probability below ``1e-80`` per slot at
        20 sigma). Holds for values within ``[-clip, clip]``; clipped values add their
        excess. Noise added by :meth:`add_plain` is rounded to a step too, so a noisy
        sum lies within ``(num_sites + 1) * step / 2`` of sum plus noise. An absolute
        ``(num_sites + 1) * clip * 2**-48`` covers float64 rounding.
        """
        self._check_sites(num_sites)
        return quantization_error_bound(num_sites, self.layout)
