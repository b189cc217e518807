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

from __future__ import annotations

import logging
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import tenseal as ts

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

if TYPE_CHECKING:
    from fedcore.config import CkksSpec

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

SEAL_ERROR_STD = 3.2
"""Standard deviation of SEAL's encryption error per coefficient."""

ERROR_BOUND_SIGMAS = 10.0
""":meth:`CkksCodec.error_bound` allows this many noise standard deviations (``P < 2e-23`` per value)."""

ROUNDING_SIGMAS = 20.0
"""Packed mode: half a unit is this many noise standard deviations of a full sum."""

ROUNDING_TOLERANCE = 0.25
"""Packed mode: a decrypted slot farther than this from an integer is refused (10 sigma)."""

PACKED_MAX_CAPACITY_BITS = 46
"""Packed slot integers stay below ``2**46`` so float64 encoding error stays below ``2**-7``."""

_SECURITY_LIMIT_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
"""Largest total coefficient modulus for 128-bit security (HomomorphicEncryption.org standard)."""

_MAGIC = b"FCKS"
_VERSION = 1
_KIND_FLOAT = 1
_KIND_PACKED = 2
_KIND_NAMES = {_KIND_FLOAT: "unpacked CKKS", _KIND_PACKED: "packed CKKS"}
# magic, version, kind, noise vectors added, description length, sites summed,
# chunk index, chunk count, vector length, payload length, CRC-32
_HEADER = struct.Struct("<4sBBBBIIIQII")


class CiphertextError(ValueError):
    """A chunk that is malformed, damaged, truncated, misplaced or made for other parameters.

    Attributes:
        chunk: index of the offending chunk, or ``None`` for the list as a whole.
        update: index of the offending update in :meth:`CkksCodec.add`, or ``None``.
        reason: what is wrong, without the location.
    """

    def __init__(self, reason: str, *, chunk: int | None = None, update: int | None = None):
        self.chunk = chunk
        self.update = update
        self.reason = reason
        where = []
        if update is not None:
            where.append(f"update {update}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


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


# --------------------------------------------------------------------------- contexts


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


# --------------------------------------------------------------------------- wire format


@dataclass(frozen=True)
class _Chunk:
    kind: int
    noise: int
    sites: int
    index: int
    count: int
    length: int
    description: str
    payload: bytes


def _frame(
    kind: int,
    description: str,
    *,
    noise: int,
    sites: int,
    index: int,
    count: int,
    length: int,
    payload: bytes,
) -> bytes:
    desc = description.encode("ascii")
    head = _HEADER.pack(
        _MAGIC, _VERSION, kind, noise, len(desc), sites, index, count, length, len(payload), 0
    )[:-4]
    crc = zlib.crc32(payload, zlib.crc32(desc, zlib.crc32(head)))
    return head + struct.pack("<I", crc) + desc + payload


def _unframe(chunk: object, index: int, update: int | None) -> _Chunk:
    def fail(reason: str) -> CiphertextError:
        return CiphertextError(reason, chunk=index, update=update)

    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise fail(f"expected bytes, found {type(chunk).__name__}")
    data = bytes(chunk)
    if len(data) < _HEADER.size:
        raise fail(f"truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, kind, noise, desc_len, sites, idx, count, length, payload_len, crc = (
        _HEADER.unpack_from(data)
    )
    if magic != _MAGIC:
        raise fail(
            f"does not start with the ciphertext marker {_MAGIC!r} (found {magic!r}): "
            "these are not bytes written by CkksCodec or PackedCodec"
        )
    if version != _VERSION:
        raise fail(
            f"wire format version {version}, this code reads version {_VERSION}; update fedcore"
        )
    expected_len = _HEADER.size + desc_len + payload_len
    if len(data) != expected_len:
        what = "truncated" if len(data) < expected_len else "has trailing bytes"
        raise fail(f"{what}: the header announces {expected_len} bytes, found {len(data)}")
    desc = data[_HEADER.size : _HEADER.size + desc_len]
    payload = data[_HEADER.size + desc_len :]
    computed = zlib.crc32(payload, zlib.crc32(desc, zlib.crc32(data[: _HEADER.size - 4])))
    if computed != crc:
        raise fail(
            f"failed its CRC-32 check (stored {crc:08x}, computed {computed:08x}): the bytes "
            "were altered or damaged on the way; ask the sender to send them again"
        )
    try:
        description = desc.decode("ascii")
    except UnicodeDecodeError as exc:
        raise fail(f"its parameter description is not ASCII ({exc})") from exc
    return _Chunk(kind, noise, sites, idx, count, length, description, payload)


def _encrypt_vector(ctx: ts.Context, values: list[float], scale: float) -> Any:
    """Encrypt one ciphertext's worth of values.

    Calls TenSEAL's native constructor directly: its Python wrapper copies the list
    through numpy and back, which costs a fifth of the encryption time.
    """
    native = getattr(getattr(ts, "_ts_cpp", None), "CKKSVector", None)
    if native is None:  # a TenSEAL without the native module: take the documented path
        return ts.ckks_vector(ctx, values, scale=scale)
    return ts.CKKSVector(data=native(ctx.data, values, scale))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- codecs


class AggregationCodec(Protocol):
    """What the site and coordinator code needs of a codec."""

    def encrypt(self, values: npt.ArrayLike) -> list[bytes]: ...

    def decrypt(self, chunks: Sequence[bytes], length: int, num_sites: int) -> FloatArray: ...

    def check(self, chunks: Sequence[bytes], length: int) -> None: ...

    def add(self, updates: Sequence[Sequence[bytes]], length: int) -> list[bytes]: ...

    def add_plain(
        self, chunks: Sequence[bytes], values: npt.ArrayLike, length: int
    ) -> list[bytes]: ...

    def error_bound(self, num_sites: int) -> float: ...


@dataclass(frozen=True)
class _Loaded:
    vectors: list[Any]
    sites: int
    noise: int


class _CodecBase:
    """Framing, checking and adding shared by both codecs; subclasses say how values map to slots."""

    _kind: int = 0

    def __init__(self, context: ts.Context, params: CkksParams, scale_bits: int) -> None:
        _check_context(context, params)
        self.context = context
        self.params = params
        self.scale_bits = scale_bits
        seal = context.seal_context().data
        self._parms_id = list(seal.first_parms_id())
        self._data_primes = len(params.coeff_mod_bit_sizes) - 1

    # subclass hooks --------------------------------------------------------
    @property
    def description(self) -> str:
        """Text written into every chunk header; chunks with another one are refused."""
        raise NotImplementedError

    def _slot_count(self, length: int) -> int:
        raise NotImplementedError

    # helpers ---------------------------------------------------------------
    def _chunk_sizes(self, length: int) -> list[int]:
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1:
            raise ValueError(
                f"length must be a positive integer (values in the update); got {length!r}"
            )
        total = self._slot_count(int(length))
        s = self.params.slots
        return [min(s, total - i * s) for i in range(_ceil_div(total, s))]

    def _require_encryptor(self) -> None:
        if not (self.context.is_private() or _has_public_key(self.context)):
            raise NoSecretKeyError(
                "this context holds no key to encrypt with (it is the coordinator's public "
                "context); sites encrypt with the consortium's secret context"
            )

    def _require_secret(self) -> None:
        if not self.context.is_private():
            raise NoSecretKeyError(
                "this context holds no secret key, so it cannot decrypt (the coordinator "
                "never can); decrypt at a site with the consortium's secret context, "
                "e.g. context_from_bytes(data, expect_secret=True)"
            )

    def _encrypt_slots(self, slots: FloatArray, length: int, sizes: list[int]) -> list[bytes]:
        self._require_encryptor()
        scale = 2.0**self.scale_bits
        out = []
        start = 0
        for i, size in enumerate(sizes):
            vec = _encrypt_vector(self.context, slots[start : start + size].tolist(), scale)
            start += size
            out.append(self._frame(vec, index=i, count=len(sizes), length=length, sites=1, noise=0))
        return out

    def _frame(
        self, vec: Any, *, index: int, count: int, length: int, sites: int, noise: int
    ) -> bytes:
        return _frame(
            self._kind,
            self.description,
            noise=noise,
            sites=sites,
            index=index,
            count=count,
            length=length,
            payload=vec.serialize(),
        )

    def _load(self, chunks: Sequence[bytes], length: int, update: int | None = None) -> _Loaded:
        sizes = self._chunk_sizes(length)
        if isinstance(chunks, bytes | bytearray | str) or not isinstance(chunks, Sequence):
            raise CiphertextError(
                f"expected a list of byte chunks, found {type(chunks).__name__}", update=update
            )
        if len(chunks) != len(sizes):
            raise CiphertextError(
                f"expected {len(sizes)} chunk(s) for {length} values "
                f"({self.params.slots} slots per chunk), found {len(chunks)}",
                update=update,
            )
        vectors = []
        first: _Chunk | None = None
        for i, raw in enumerate(chunks):
            chunk = _unframe(raw, i, update)
            vectors.append(self._parse(chunk, i, len(sizes), length, sizes[i], update))
            if first is None:
                first = chunk
            elif (chunk.sites, chunk.noise) != (first.sites, first.noise):
                raise CiphertextError(
                    f"holds a sum of {chunk.sites} update(s) with {chunk.noise} noise vector(s), "
                    f"but chunk 0 holds {first.sites} with {first.noise}: chunks of different "
                    "sums were mixed",
                    chunk=i,
                    update=update,
                )
        assert first is not None
        return _Loaded(vectors, first.sites, first.noise)

    def _parse(
        self, chunk: _Chunk, i: int, count: int, length: int, size: int, update: int | None
    ) -> Any:
        def fail(reason: str) -> CiphertextError:
            return CiphertextError(reason, chunk=i, update=update)

        if chunk.kind != self._kind or chunk.description != self.description:
            kind = _KIND_NAMES.get(chunk.kind, f"kind {chunk.kind}")
            raise fail(
                f"was made for {kind} '{chunk.description}', but this codec expects "
                f"{_KIND_NAMES[self._kind]} '{self.description}'; every site and the coordinator "
                "must use the same CKKS parameters and packing settings"
            )
        if chunk.index != i or chunk.count != count:
            raise fail(
                f"is chunk {chunk.index} of {chunk.count} by its header, expected chunk {i} of "
                f"{count}: chunks were reordered, dropped or mixed"
            )
        if chunk.length != length:
            raise fail(
                f"belongs to a vector of {chunk.length} values, expected {length}: a model of "
                "another shape, or the wrong length was given"
            )
        if chunk.sites < 1:
            raise fail(f"claims to hold a sum of {chunk.sites} updates; expected at least 1")
        try:
            vec = ts.ckks_vector_from(self.context, chunk.payload)
        except Exception as exc:
            raise fail(
                f"is not a valid CKKS ciphertext for {self.params.describe()} ({exc})"
            ) from exc
        cts = vec.ciphertext()
        if len(cts) != 1:
            raise fail(f"holds {len(cts)} ciphertexts, expected 1")
        ct = cts[0]
        problems = []
        if ct.poly_modulus_degree() != self.params.poly_modulus_degree:
            problems.append(
                f"ring degree {ct.poly_modulus_degree()} != {self.params.poly_modulus_degree}"
            )
        if list(ct.parms_id()) != self._parms_id or ct.coeff_modulus_size() != self._data_primes:
            problems.append(
                f"modulus level has {ct.coeff_modulus_size()} prime(s), expected the fresh level "
                f"with {self._data_primes}"
            )
        if ct.size() != 2:
            problems.append(
                f"{ct.size()} polynomials, expected 2 (a product was not relinearized?)"
            )
        if not ct.is_ntt_form():
            problems.append("not in NTT form")
        if ct.scale != 2.0**self.scale_bits:
            problems.append(f"scale 2^{math.log2(ct.scale):.2f}, expected 2^{self.scale_bits}")
        if vec.size() != size:
            problems.append(f"{vec.size()} slots used, expected {size}")
        if problems:
            raise fail("is not a ciphertext of this codec: " + "; ".join(problems))
        return vec

    def _reframe(self, loaded: _Loaded, length: int, *, sites: int, noise: int) -> list[bytes]:
        n = len(loaded.vectors)
        return [
            self._frame(v, index=i, count=n, length=length, sites=sites, noise=noise)
            for i, v in enumerate(loaded.vectors)
        ]

    def _decrypt_chunks(self, loaded: _Loaded) -> list[FloatArray]:
        self._require_secret()
        return [np.asarray(v.decrypt(), dtype=np.float64) for v in loaded.vectors]

    # public ------------------------------------------------------------------
    def check(self, chunks: Sequence[bytes], length: int) -> None:
        """Check that ``chunks`` are this codec's ciphertexts of a ``length``-value vector.

        Parses every chunk with this codec's context (a public one suffices) and checks
        the header (marker, CRC-32, parameters, position, length) and the ciphertext
        (valid for these parameters, fresh modulus level, 2 polynomials, expected scale
        and slot count).

        Raises:
            CiphertextError: naming the first bad chunk and what is wrong with it.
        """
        self._load(chunks, length)

    def _add_loaded(
        self, updates: Sequence[Sequence[bytes]], length: int
    ) -> tuple[_Loaded, int, int]:
        if (
            isinstance(updates, bytes | bytearray)
            or not isinstance(updates, Sequence)
            or not updates
        ):
            raise ValueError("add needs a non-empty list of updates (each a list of chunks)")
        loaded = [self._load(chunks, length, update=u) for u, chunks in enumerate(updates)]
        vectors = list(loaded[0].vectors)
        for other in loaded[1:]:
            for acc, v in zip(vectors, other.vectors, strict=True):
                acc.add_(v)
        sites = sum(x.sites for x in loaded)
        noise = min(sum(x.noise for x in loaded), 255)
        return _Loaded(vectors, sites, noise), sites, noise

    def add(self, updates: Sequence[Sequence[bytes]], length: int) -> list[bytes]:
        """Check every update and return their chunk-wise sum (works with a public context).

        Args:
            updates: one list of chunks per site (or per partial sum).
            length: values in each update.

        Returns:
            The chunks of the sum; their header counts the updates summed.

        Raises:
            CiphertextError: an update is bad (the message names update and chunk).
            ValueError: ``updates`` is empty.
        """
        summed, sites, noise = self._add_loaded(updates, length)
        return self._reframe(summed, length, sites=sites, noise=noise)


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


def make_codec(
    context: ts.Context, spec: CkksSpec, *, max_sites: int, noise_std: float = 0.0
) -> CkksCodec | PackedCodec:
    """The codec a scenario's ``privacy.ckks`` section asks for (packed or not).

    Args:
        context: the consortium's secret context (sites) or a public one (coordinator).
        spec: the scenario's CKKS section.
        max_sites: most updates one sum may hold (packed mode).
        noise_std: standard deviation of central DP noise added to the sum (packed mode).
    """
    params = CkksParams.from_spec(spec)
    if spec.packing:
        return PackedCodec(
            context,
            params,
            max_sites=max_sites,
            clip=spec.clip,
            values_per_slot=spec.values_per_slot,
            noise_std=noise_std,
        )
    return CkksCodec(context, params)
