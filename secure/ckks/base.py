"""What both CKKS codecs share: encrypting slots into chunks, loading, checking and adding chunks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from secure.ckks.chunks import _KIND_NAMES, CiphertextError, _Chunk, _frame, _unframe
from secure.ckks.params import (
    CkksParams,
    FloatArray,
    NoSecretKeyError,
    _check_context,
    _has_public_key,
)


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
