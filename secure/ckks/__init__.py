"""CKKS homomorphic aggregation of site updates (TenSEAL), with optional BatchCrypt packing (Zhang et al., USENIX ATC 2020).

Sites share one secret CKKS context. Each site encrypts its weighted update into a list
of byte *chunks* (one ciphertext each, framed with a small header and a CRC-32); the
coordinator holds a context without any key, checks and adds the chunks, may add a
plaintext noise vector, and returns the sum, which the sites decrypt.

Two codecs share the wire format:

* :class:`CkksCodec` puts one float in each slot (``N / 2`` values per ciphertext).
* :class:`PackedCodec` quantizes values and packs several into each slot
  (:mod:`secure.packing`); the slot integers come back exactly, so the only error is
  quantization.

Noise model (measured with TenSEAL 0.3.18, N = 4096, 8192, 16384): a fresh
symmetric-key ciphertext decrypts with Gaussian slot noise of standard deviation
``sqrt(3.2**2 + 1/12) * sqrt(N / 2)`` in scaled units (207 for N = 8192; theory 206).
Public-key encryption adds the mod-switch rounding times the secret key: average
``N / 6``, worst slot measured ``0.54 N``; the model takes ``N``. Sums of ``n``
ciphertexts grow as ``sqrt(n)``.

The chunk header is for accidents (damage, mix-ups, wrong parameters), not for an
attacker: its CRC can be recomputed. Authenticity comes from the authenticated channel.
"""

# The package's parts: parameters and contexts, the chunk wire format, what both codecs share,
# the plain and the packed codec. Build a codec with secure.codecs.make_codec.
from secure.ckks.chunks import _HEADER, CiphertextError, _frame, _unframe
from secure.ckks.packed import (
    PACKED_MAX_CAPACITY_BITS,
    ROUNDING_SIGMAS,
    ROUNDING_TOLERANCE,
    PackedCodec,
)
from secure.ckks.params import (
    COMMON_DEFAULT,
    SEAL_ERROR_STD,
    CkksParams,
    FloatArray,
    NoSecretKeyError,
    context_from_bytes,
    context_to_bytes,
    fresh_noise_std,
    new_secret_context,
    public_context,
)
from secure.ckks.plain import ERROR_BOUND_SIGMAS, CkksCodec

__all__ = [
    "COMMON_DEFAULT",
    "ERROR_BOUND_SIGMAS",
    "PACKED_MAX_CAPACITY_BITS",
    "ROUNDING_SIGMAS",
    "ROUNDING_TOLERANCE",
    "SEAL_ERROR_STD",
    "_HEADER",
    "CiphertextError",
    "CkksCodec",
    "CkksParams",
    "FloatArray",
    "NoSecretKeyError",
    "PackedCodec",
    "_frame",
    "_unframe",
    "context_from_bytes",
    "context_to_bytes",
    "fresh_noise_std",
    "new_secret_context",
    "public_context",
]
