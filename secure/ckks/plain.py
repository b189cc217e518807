"""The plain CKKS codec: one float per slot, error bounded by the CKKS noise model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import tenseal as ts

from secure.ckks.base import _CodecBase, _Loaded
from secure.ckks.chunks import _KIND_FLOAT, CiphertextError
from secure.ckks.params import CkksParams, FloatArray, fresh_noise_std

ERROR_BOUND_SIGMAS = 10.0
""":meth:`CkksCodec.error_bound` allows this many noise standard deviations (``P < 2e-23`` per value)."""


class CkksCodec(_CodecBase):
    """One float per slot: ``N / 2`` values per ciphertext, CKKS scale ``2**scale_bits``.

    Args:
        context: the consortium's secret context (sites) or a public one (coordinator).
        params: the parameters the context was made with.

    Raises:
        ValueError: the context does not match ``params``.
    """

    _kind = _KIND_FLOAT

    def __init__(self, context: ts.Context, params: CkksParams) -> None:
        super().__init__(context, params, params.scale_bits)

    def __repr__(self) -> str:
        return f"CkksCodec({self.description})"

    @property
    def description(self) -> str:
        return f"{self.params.describe()} scale=2^{self.scale_bits}"

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude a value, or any sum of values, may reach (``2**(data_bits - 3 - scale_bits)``).

        Beyond it the ciphertext modulus wraps and the sum is garbage.
        """
        return 2.0 ** (self.params.data_bits - 3 - self.scale_bits)

    def _slot_count(self, length: int) -> int:
        return length

    def encrypt(self, values: npt.ArrayLike) -> list[bytes]:
        """Encrypt a 1-D vector into ``ceil(len / slots)`` chunks.

        Raises:
            ValueError: ``values`` is empty, not 1-D, not finite, or reaches ``max_abs_sum``.
            NoSecretKeyError: the context holds no key to encrypt with.
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"values must be a non-empty 1-D vector; got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(
                f"values hold a non-finite value at index {bad} ({arr[bad]}); fix the update"
            )
        peak = float(np.max(np.abs(arr)))
        if peak >= self.max_abs_sum:
            raise ValueError(
                f"a value of magnitude {peak:g} reaches the limit {self.max_abs_sum:g} of scale "
                f"2^{self.scale_bits} with {self.params.data_bits}-bit ciphertexts; lower scale_bits"
            )
        return self._encrypt_slots(arr, arr.size, self._chunk_sizes(arr.size))

    def decrypt(
        self, chunks: Sequence[bytes], length: int, num_sites: int | None = None
    ) -> FloatArray:
        """Check and decrypt chunks into ``length`` float64 values (needs the secret key).

        Args:
            chunks: the chunks of one vector or sum.
            length: values in the vector.
            num_sites: if given, the number of updates the chunks must hold.

        Raises:
            CiphertextError: a chunk is bad, the decrypted values reach ``max_abs_sum``
                (not encrypted under this key), or ``num_sites`` disagrees.
            NoSecretKeyError: the context holds no secret key.
        """
        self._require_secret()
        loaded = self._load(chunks, length)
        if num_sites is not None and num_sites != loaded.sites:
            raise CiphertextError(
                f"the chunks hold a sum of {loaded.sites} update(s), but num_sites={num_sites}"
            )
        parts = self._decrypt_chunks(loaded)
        for i, part in enumerate(parts):
            if not np.all(np.abs(part) < self.max_abs_sum):
                raise CiphertextError(
                    f"decrypted to values beyond {self.max_abs_sum:g}: encrypted under another "
                    "secret key, or the sum overflowed",
                    chunk=i,
                )
        return np.concatenate(parts)

    def add_plain(self, chunks: Sequence[bytes], values: npt.ArrayLike, length: int) -> list[bytes]:
        """Add a plaintext vector (e.g. Gaussian noise) to encrypted chunks; no key needed.

        Raises:
            CiphertextError: a chunk is bad.
            ValueError: ``values`` has the wrong length or is not finite.
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (length,) or not np.all(np.isfinite(arr)):
            raise ValueError(
                f"values must be {length} finite floats (one per value of the sum); got shape {arr.shape}"
            )
        loaded = self._load(chunks, length)
        start = 0
        vectors = []
        for v in loaded.vectors:
            n = v.size()
            vectors.append(v + arr[start : start + n].tolist())
            start += n
        noise = min(loaded.noise + 1, 255)
        return self._reframe(
            _Loaded(vectors, loaded.sites, noise), length, sites=loaded.sites, noise=noise
        )

    def error_bound(self, num_sites: int) -> float:
        """Bound on the max abs error of a decrypted sum of ``num_sites`` updates.

        ``10 * sigma * sqrt(num_sites + 1) / 2**scale_bits`` with ``sigma`` from
        :func:`fresh_noise_std` (the ``+ 1`` covers one plaintext addition); a Gaussian
        exceeds 10 sigma with probability below ``2e-23``. Holds for sums below
        ``max_abs_sum`` (float64 rounding of the inputs is far below it). For the
        defaults (N=8192, symmetric, 2^40): 3.7e-9 for 3 sites, 6.2e-9 for 10, measured
        maxima 2 to 2.6 times smaller; for COMMON_DEFAULT (public key) 2.5e-7 for 10
        sites, measured 6 times smaller.
        """
        if num_sites < 1:
            raise ValueError(f"num_sites must be at least 1; got {num_sites}")
        sigma = fresh_noise_std(self.params)
        return ERROR_BOUND_SIGMAS * sigma * math.sqrt(num_sites + 1) / 2.0**self.scale_bits
