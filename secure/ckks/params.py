"""CKKS parameters, their noise model, and the TenSEAL contexts built from them (secret, public, bytes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import tenseal as ts

if TYPE_CHECKING:
    from fedcore.config import CkksSpec

FloatArray = npt.NDArray[np.float64]

SEAL_ERROR_STD = 3.2
"""Standard deviation of SEAL's encryption error per coefficient."""

_SECURITY_LIMIT_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
"""Largest total coefficient modulus for 128-bit security (HomomorphicEncryption.org standard)."""


class NoSecretKeyError(ValueError):
    """Decryption (or encryption) was asked of a context that holds no key for it."""


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters for add-only aggregation.

    Attributes:
        poly_modulus_degree: ring dimension ``N`` (default 8192); ``N / 2`` slots.
        coeff_mod_bit_sizes: modulus chain (default ``(60, 40)``). The last prime is the
            special (key-switching) prime; ciphertexts live on the others, so a sum
            needs only the first: ``(60, 40)`` gives 60-bit ciphertexts.
        scale_bits: log2 of the CKKS scale in unpacked mode (default 40).
        symmetric: symmetric-key encryption (default; about 3x faster and less noise);
            ``False`` for public-key encryption.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40)
    scale_bits: int = 40
    symmetric: bool = True

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in _SECURITY_LIMIT_BITS:
            raise ValueError(
                f"poly_modulus_degree must be one of {sorted(_SECURITY_LIMIT_BITS)}; got {n}"
            )
        chain = self.coeff_mod_bit_sizes
        if len(chain) < 2 or any(not 20 <= b <= 60 for b in chain):
            raise ValueError(
                f"coeff_mod_bit_sizes must hold at least 2 sizes, each in 20..60; got {list(chain)}"
            )
        if sum(chain) > _SECURITY_LIMIT_BITS[n]:
            raise ValueError(
                f"coeff_mod_bit_sizes {list(chain)} total {sum(chain)} bits, above the "
                f"{_SECURITY_LIMIT_BITS[n]} bits that keep 128-bit security at N={n}; "
                "drop primes or raise poly_modulus_degree"
            )
        if not 16 <= self.scale_bits <= self.data_bits - 3:
            raise ValueError(
                f"scale_bits must be in 16..{self.data_bits - 3} for chain {list(chain)} "
                f"(the data primes hold {self.data_bits} bits); got {self.scale_bits}"
            )

    @property
    def slots(self) -> int:
        """Values one ciphertext holds, ``N / 2``."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the ciphertext modulus (all primes but the last, special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    def describe(self) -> str:
        """Short text naming the parameters, e.g. ``N=8192 chain=60-40``."""
        chain = "-".join(str(b) for b in self.coeff_mod_bit_sizes)
        return f"N={self.poly_modulus_degree} chain={chain}"

    @classmethod
    def from_spec(cls, spec: CkksSpec) -> CkksParams:
        """Parameters of a scenario's ``privacy.ckks`` section (symmetric-key encryption)."""
        return cls(
            poly_modulus_degree=spec.poly_modulus_degree,
            coeff_mod_bit_sizes=tuple(spec.coeff_mod_bit_sizes),
            scale_bits=spec.scale_bits,
            symmetric=True,
        )


COMMON_DEFAULT = CkksParams(8192, (60, 40, 40, 60), 40, symmetric=False)
"""The usual CKKS setting for machine learning (depth for multiplications, public key); for comparison."""


def fresh_noise_std(params: CkksParams) -> float:
    """Model of one fresh ciphertext's slot noise standard deviation, in scaled units.

    Symmetric: ``sqrt(3.2**2 + 1/12) * sqrt(N / 2)`` (measured equal). Public key:
    ``N``, about twice the worst slot measured (see the module docstring).
    """
    n = params.poly_modulus_degree
    if params.symmetric:
        return math.sqrt(SEAL_ERROR_STD**2 + 1.0 / 12.0) * math.sqrt(n / 2)
    return float(n)


def new_secret_context(params: CkksParams, *, n_threads: int = 1) -> ts.Context:
    """Make a fresh CKKS context with new keys (secret key; public key if not symmetric).

    No Galois or relinearization keys are made: sums need neither.

    Args:
        params: the parameters.
        n_threads: TenSEAL worker threads (default 1: the codecs encrypt one
            ciphertext at a time).

    Returns:
        A private context (``is_private()`` is True), global scale ``2**scale_bits``.
    """
    enc = ts.ENCRYPTION_TYPE.SYMMETRIC if params.symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=enc,
        n_threads=n_threads,
    )
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def public_context(params: CkksParams, *, n_threads: int = 1) -> ts.Context:
    """Make a keyless context with ``params``: it loads and adds ciphertexts, nothing more.

    CKKS ciphertexts depend on the parameters, not on who made the context, so this
    context adds ciphertexts made under the consortium's secret context without ever
    seeing its keys. It can neither decrypt nor encrypt.
    """
    donor = new_secret_context(replace(params, symmetric=True), n_threads=n_threads)
    data = donor.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    ctx = ts.context_from(data, n_threads=n_threads)
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def _has_public_key(ctx: ts.Context) -> bool:
    try:
        return bool(ctx.has_public_key())
    except ValueError:  # symmetric contexts refuse the question
        return False


def context_to_bytes(ctx: ts.Context, *, secret: bool) -> bytes:
    """Serialize a context, with its secret key only when ``secret`` is True.

    Without the secret key the bytes keep the public key, if the context has one
    (public-key mode), and never Galois or relinearization keys.

    Raises:
        ValueError: ``secret`` is True but the context holds no secret key.
    """
    if secret and not ctx.is_private():
        raise ValueError(
            "asked to write the secret key, but this context holds none; "
            "write the consortium's secret context (from new_secret_context) instead"
        )
    data: bytes = ctx.serialize(
        save_public_key=_has_public_key(ctx),
        save_secret_key=secret,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return data


def context_from_bytes(data: bytes, *, expect_secret: bool, n_threads: int = 1) -> ts.Context:
    """Load a context written by :func:`context_to_bytes`, refusing the wrong kind.

    Args:
        data: the serialized context.
        expect_secret: True at a site (the context must hold the secret key); False at
            the coordinator (it must not).
        n_threads: TenSEAL worker threads.

    Raises:
        ValueError: the bytes are not a CKKS context, or hold (or lack) the secret key
            against ``expect_secret``.
    """
    try:
        ctx = ts.context_from(bytes(data), n_threads=n_threads)
    except Exception as exc:
        raise ValueError(
            f"could not read a TenSEAL context from {len(data)} bytes ({exc}); "
            "expected the bytes written by context_to_bytes"
        ) from exc
    scheme = ctx.seal_context().data.key_context_data().parms().scheme()
    if scheme != ts.SCHEME_TYPE.CKKS.value:
        raise ValueError(f"expected a CKKS context; found scheme {scheme}")
    if expect_secret and not ctx.is_private():
        raise ValueError(
            "expected the consortium's secret context (with the secret key), found a "
            "context without it; sites need the file written with "
            "context_to_bytes(ctx, secret=True)"
        )
    if not expect_secret and ctx.is_private():
        raise ValueError(
            "expected a public context, but this one holds the secret key: the "
            "coordinator must never receive it. Write it with context_to_bytes(ctx, secret=False)"
        )
    return ctx


def _check_context(ctx: ts.Context, params: CkksParams) -> None:
    """Refuse a context whose ring or modulus chain differs from ``params``."""
    seal = ctx.seal_context().data
    key = seal.key_context_data()
    first = seal.first_context_data()
    found = (
        key.parms().poly_modulus_degree(),
        key.chain_index() + 1,
        key.total_coeff_modulus_bit_count(),
        first.total_coeff_modulus_bit_count(),
    )
    expected = (
        params.poly_modulus_degree,
        len(params.coeff_mod_bit_sizes),
        sum(params.coeff_mod_bit_sizes),
        params.data_bits,
    )
    if found != expected:
        raise ValueError(
            f"the context does not match the parameters ({params.describe()}): it has N={found[0]}, "
            f"{found[1]} primes of {found[2]} bits in total; make the context from the same "
            "CkksParams as the codec"
        )
