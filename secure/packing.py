"""Quantize and pack several values into one integer slot, BatchCrypt-style (Zhang et al., USENIX ATC 2020).

Pure numpy, no encryption: :mod:`secure.ckks` encrypts the packed slots.

Each value ``v`` (already weighted by its site's aggregation weight) is clipped to
``[-clip, clip]`` and quantized to ``b`` bits in offset binary,
``q = round((v + clip) / step)`` with ``step = 2 * clip / (2**b - 1)``, so ``q`` lies in
``[0, 2**b - 1]``. ``k`` quantized values share one slot as the integer
``q_0 + q_1 * 2**w + ... + q_(k-1) * 2**((k-1) * w)``, where the lane width ``w``
leaves headroom above ``b`` bits: the sum of the lanes of up to ``max_sites`` sites,
plus one plaintext noise vector clamped to ``[-noise_limit, noise_limit]`` lane units,
always stays inside its lane, so adding packed slots adds every lane at once and never
carries into the neighbouring lane. A lane of a sum of ``n`` sites dequantizes to
``lane * step - n * clip``, within ``n * step / 2`` of the true sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIN_QUANT_BITS = 6
"""Fewest quantization bits :func:`lane_layout` accepts."""

MAX_QUANT_BITS = 24
"""Most quantization bits :func:`lane_layout` uses (float32 updates carry 24 bits)."""

MAX_SLOT_BITS = 52
"""Slot integers stay below ``2**52``: exact in float64 with one bit to spare."""

NOISE_CLAMP_SIGMAS = 8.0
"""Plaintext noise is clamped to this many standard deviations (``P(|z| > 8 sigma) < 1.3e-15``)."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LaneLayout:
    """How values are quantized and laid out in the lanes of one slot.

    Attributes:
        values_per_slot: ``k``, values packed into one slot.
        lane_bits: ``w``, bits of one lane.
        quant_bits: ``b``, quantization bits of one value.
        max_sites: most site updates a sum may hold.
        clip: values are clipped to ``[-clip, clip]`` before quantizing.
        noise_limit: largest magnitude, in quantization steps, of the one plaintext noise
            vector a sum may receive (0: no room for noise).
    """

    values_per_slot: int
    lane_bits: int
    quant_bits: int
    max_sites: int
    clip: float
    noise_limit: int

    @property
    def levels(self) -> int:
        """Largest quantized value, ``2**quant_bits - 1``."""
        return (1 << self.quant_bits) - 1

    @property
    def step(self) -> float:
        """Quantization step, ``2 * clip / levels``."""
        return 2.0 * self.clip / self.levels

    @property
    def headroom_bits(self) -> int:
        """Lane bits above the quantization bits (room for the sum and the noise)."""
        return self.lane_bits - self.quant_bits

    @property
    def slot_bits(self) -> int:
        """Bits of one packed slot integer, ``values_per_slot * lane_bits``."""
        return self.values_per_slot * self.lane_bits

    @property
    def lane_min(self) -> int:
        """Smallest value a lane of any valid sum can hold (``-noise_limit``)."""
        return -self.noise_limit

    def lane_max(self, num_sites: int) -> int:
        """Largest value a lane of the sum of ``num_sites`` updates (plus noise) can hold."""
        return num_sites * self.levels + self.noise_limit


def _lane_need(max_sites: int, quant_bits: int, clip: float, noise_std: float) -> tuple[int, int]:
    """Return (noise limit in steps, number of distinct lane values needed)."""
    levels = (1 << quant_bits) - 1
    step = 2.0 * clip / levels
    noise_limit = math.ceil(NOISE_CLAMP_SIGMAS * noise_std / step) if noise_std > 0.0 else 0
    return noise_limit, max_sites * levels + 2 * noise_limit + 1


def lane_layout(
    capacity_bits: int,
    max_sites: int,
    values_per_slot: int,
    clip: float,
    noise_std: float = 0.0,
    *,
    min_quant_bits: int = MIN_QUANT_BITS,
) -> LaneLayout:
    """Choose the lane width and the most quantization bits that fit.

    The lane width is ``capacity_bits // values_per_slot``. The quantization bits ``b``
    are the most (up to :data:`MAX_QUANT_BITS`) for which every lane value of a sum of
    up to ``max_sites`` updates plus one clamped noise vector fits the lane:
    ``max_sites * (2**b - 1) + 2 * noise_limit < 2**lane_bits``, with
    ``noise_limit = ceil(8 * noise_std / step)``. Without noise this is
    ``b + ceil(log2(max_sites))`` bits at most.

    Args:
        capacity_bits: bits one slot integer may use (at most 52).
        max_sites: most site updates one sum may hold (>= 1).
        values_per_slot: values packed into one slot (>= 1).
        clip: clipping bound of the (weighted) values (> 0).
        noise_std: standard deviation of the plaintext noise that may be added to a sum,
            in the values' units (0: none).
        min_quant_bits: fewest quantization bits accepted (default 6).

    Returns:
        The layout.

    Raises:
        ValueError: an argument is out of range, or fewer than ``min_quant_bits`` bits fit.
    """
    if not 1 <= capacity_bits <= MAX_SLOT_BITS:
        raise ValueError(
            f"capacity_bits must be in 1..{MAX_SLOT_BITS} (exact in float64); got {capacity_bits}"
        )
    if max_sites < 1:
        raise ValueError(f"max_sites must be at least 1; got {max_sites}")
    if values_per_slot < 1:
        raise ValueError(f"values_per_slot must be at least 1; got {values_per_slot}")
    if not (math.isfinite(clip) and clip > 0.0):
        raise ValueError(f"clip must be a positive number; got {clip}")
    if not (math.isfinite(noise_std) and noise_std >= 0.0):
        raise ValueError(f"noise_std must be a non-negative number; got {noise_std}")
    lane_bits = capacity_bits // values_per_slot
    for bits in range(min(MAX_QUANT_BITS, lane_bits), min_quant_bits - 1, -1):
        noise_limit, need = _lane_need(max_sites, bits, clip, noise_std)
        if need <= 1 << lane_bits:
            return LaneLayout(values_per_slot, lane_bits, bits, max_sites, clip, noise_limit)
    _, need = _lane_need(max_sites, min_quant_bits, clip, noise_std)
    fits = [
        k for k in range(values_per_slot - 1, 0, -1) if need <= 1 << min(capacity_bits // k, 62)
    ]
    hint = f"lower values_per_slot to {fits[0]}" if fits else "lower values_per_slot"
    noise = (
        f" and noise of std {noise_std:g} clamped at {NOISE_CLAMP_SIGMAS:g} sigma"
        if noise_std
        else ""
    )
    raise ValueError(
        f"cannot pack {values_per_slot} values per slot for up to {max_sites} sites{noise}: "
        f"a {capacity_bits}-bit slot gives {lane_bits}-bit lanes, but even "
        f"{min_quant_bits} quantization bits need {math.ceil(math.log2(need))}-bit lanes. "
        f"To fix: {hint}, lower max_sites, lower the noise, or use a chain whose data "
        f"primes leave more bits (a 60-bit first prime)"
    )


def _as_float_vector(values: npt.ArrayLike, what: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector; got shape {arr.shape} (flatten it first)")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(
            f"{what} holds a non-finite value at index {bad} ({arr[bad]}); fix the update"
        )
    return arr


def quantize(values: npt.ArrayLike, layout: LaneLayout) -> IntArray:
    """Clip ``values`` to ``[-clip, clip]`` and quantize them to ``[0, levels]`` (offset binary).

    Args:
        values: 1-D finite values.
        layout: the lane layout.

    Returns:
        int64 ``round((clip(v) + clip) / step)``, each within ``step / 2`` of the clipped value.

    Raises:
        ValueError: ``values`` is not a finite 1-D vector.
    """
    arr = _as_float_vector(values, "values")
    clipped = np.clip(arr, -layout.clip, layout.clip)
    q = np.rint((clipped + layout.clip) / layout.step)
    return np.clip(q, 0, layout.levels).astype(np.int64)


def dequantize_sum(lanes: npt.ArrayLike, num_sites: int, layout: LaneLayout) -> FloatArray:
    """Turn summed lanes of ``num_sites`` updates back into values: ``lane * step - num_sites * clip``."""
    arr = np.asarray(lanes, dtype=np.int64)
    return arr.astype(np.float64) * layout.step - num_sites * layout.clip


def quantization_error_bound(num_sites: int, layout: LaneLayout) -> float:
    """Largest error of a dequantized sum of ``num_sites`` quantized values within the clip.

    ``num_sites * step / 2`` from rounding to the nearest step, plus float64 rounding
    in quantizing and dequantizing (``(num_sites + 1) * clip * 2**-48``, far above it).
    """
    return num_sites * layout.step / 2 + (num_sites + 1) * layout.clip * 2.0**-48


def quantize_noise(noise: npt.ArrayLike, layout: LaneLayout) -> IntArray:
    """Round plaintext noise to whole steps and clamp it to ``[-noise_limit, noise_limit]``.

    The clamp (at 8 standard deviations of the noise the layout was made for) is what
    keeps a noisy lane from overflowing; it changes a Gaussian draw with probability
    below ``1.3e-15`` per value.

    Raises:
        ValueError: the layout has no room for noise, or ``noise`` is not finite and 1-D.
    """
    if layout.noise_limit == 0:
        raise ValueError(
            "this lane layout keeps no room for noise (it was made with noise_std=0); "
            "make it with noise_std set to the noise's standard deviation"
        )
    arr = _as_float_vector(noise, "noise")
    q = np.rint(arr / layout.step)
    return np.clip(q, -layout.noise_limit, layout.noise_limit).astype(np.int64)


def pack(lanes: npt.ArrayLike, layout: LaneLayout) -> FloatArray:
    """Pack lane values, ``values_per_slot`` per slot, into float64 slot integers.

    Lane ``j`` of a slot is weighted by ``2**(j * lane_bits)``; a short last slot is
    padded with zero lanes. Lanes may be negative (noise); every lane must lie in
    ``[lane_min, lane_min + 2**lane_bits - 1]`` for :func:`unpack` to recover it.

    Args:
        lanes: 1-D integer lane values.
        layout: the lane layout.

    Returns:
        float64 slot integers, ``ceil(len(lanes) / values_per_slot)`` of them, exact.
    """
    arr = np.asarray(lanes, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"lanes must be a 1-D vector; got shape {arr.shape}")
    k = layout.values_per_slot
    slots = -(-arr.size // k)
    flat = np.zeros(slots * k, dtype=np.int64)
    flat[: arr.size] = arr
    grid = flat.reshape(slots, k)
    out = np.zeros(slots, dtype=np.int64)
    for j in range(k):
        out += grid[:, j] * (1 << (j * layout.lane_bits))
    return out.astype(np.float64)


def round_slots(decoded: npt.ArrayLike, tolerance: float = 0.25) -> IntArray:
    """Round decrypted slot values to integers, refusing any that is not near one.

    Args:
        decoded: decrypted slot values (integers plus small CKKS noise).
        tolerance: largest accepted distance to the nearest integer.

    Returns:
        The int64 slot integers.

    Raises:
        ValueError: a value is non-finite, beyond ``2**52``, or farther than ``tolerance``
            from an integer; the message names the first such slot.
    """
    arr = np.asarray(decoded, dtype=np.float64)
    rounded = np.rint(arr)
    with np.errstate(invalid="ignore"):  # inf - inf: flagged as non-finite just below
        bad = np.abs(arr - rounded) > tolerance
    bad |= ~np.isfinite(arr) | (np.abs(arr) >= 2.0**MAX_SLOT_BITS)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"slot {i} decrypted to {float(arr[i])!r}, not an integer below 2**{MAX_SLOT_BITS} "
            f"(tolerance {tolerance}); {int(bad.sum())} slot(s) affected"
        )
    return rounded.astype(np.int64)


def unpack(slots: npt.ArrayLike, length: int, layout: LaneLayout) -> IntArray:
    """Split slot integers back into ``length`` lane values (inverse of :func:`pack`).

    Each lane is read as the value in ``[lane_min, lane_min + 2**lane_bits)`` congruent
    to it modulo ``2**lane_bits``, which recovers negative noise lanes without borrow.

    Args:
        slots: integer-valued slots (int64, or float64 holding integers).
        length: number of lane values to return.
        layout: the lane layout.

    Returns:
        int64 lane values, ``length`` of them.

    Raises:
        ValueError: there are too few slots, or a slot is not a valid packing (its value
            lies outside what ``values_per_slot`` lanes can hold).
    """
    x = np.asarray(slots).astype(np.int64)
    k = layout.values_per_slot
    if length < 0 or x.size * k < length:
        raise ValueError(f"{x.size} slot(s) hold at most {x.size * k} values; asked for {length}")
    w = layout.lane_bits
    mask = np.int64((1 << w) - 1)
    offset = np.int64(-layout.lane_min)
    out = np.empty((x.size, k), dtype=np.int64)
    rest = x.copy()
    for j in range(k):
        lane = ((rest + offset) & mask) - offset
        out[:, j] = lane
        rest = (rest - lane) >> w
    if np.any(rest != 0):
        i = int(np.flatnonzero(rest != 0)[0])
        raise ValueError(
            f"slot {i} holds {int(x[i])}, which {k} lanes of {w} bits cannot represent "
            f"(lanes from {layout.lane_min} to {layout.lane_min + (1 << w) - 1})"
        )
    return out.reshape(-1)[:length]
