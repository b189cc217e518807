"""Tests of secure.ckks: sites encrypt, a keyless coordinator checks and adds, sites decrypt."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest
import tenseal as ts

from fedcore.config import CkksSpec, PrivacySpec
from secure.ckks import (
    COMMON_DEFAULT,
    CiphertextError,
    CkksCodec,
    CkksParams,
    NoSecretKeyError,
    PackedCodec,
    _frame,
    _unframe,
    context_from_bytes,
    context_to_bytes,
    new_secret_context,
    public_context,
)
from secure.codecs import make_codec

P = CkksParams()
SLOTS = P.slots
CLIP = 0.25

Codec = CkksCodec | PackedCodec


@pytest.fixture(scope="module")
def secret() -> ts.Context:
    return new_secret_context(P)


@pytest.fixture(scope="module")
def public() -> ts.Context:
    return public_context(P)


@pytest.fixture(scope="module")
def other_site(secret: ts.Context) -> ts.Context:
    """The same secret context as another site loads it from the consortium's kit."""
    return context_from_bytes(context_to_bytes(secret, secret=True), expect_secret=True)


def float_codec(ctx: ts.Context) -> Codec:
    return CkksCodec(ctx, P)


def packed_codec(ctx: ts.Context) -> Codec:
    return PackedCodec(ctx, P, max_sites=10, clip=CLIP)


CODECS: dict[str, Callable[[ts.Context], Codec]] = {"float": float_codec, "packed": packed_codec}


def updates(num_sites: int, length: int, seed: int) -> list[np.ndarray]:
    """Weighted site updates: normal values, a few at the clip bound."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_sites):
        v = np.clip(rng.normal(0.0, 0.05, length), -CLIP, CLIP)
        v[:: max(1, length // 7)] = CLIP * rng.choice([-1.0, 1.0])
        out.append(v.astype(np.float32))
    return out


def chunk_pair(secret: ts.Context, make: Callable[[ts.Context], Codec]) -> list[bytes]:
    """An encrypted update of two chunks."""
    codec = make(secret)
    length = (SLOTS * (3 if isinstance(codec, PackedCodec) else 1)) + 5
    return codec.encrypt(np.zeros(length))


# --------------------------------------------------------------------------- contexts


def test_coordinator_context_holds_no_key(secret: ts.Context, public: ts.Context) -> None:
    assert secret.is_private()
    assert not public.is_private()
    for make in CODECS.values():
        chunks = make(secret).encrypt(np.full(10, 0.1))
        coordinator = make(public)
        coordinator.check(chunks, 10)
        with pytest.raises(NoSecretKeyError, match="no secret key.*cannot decrypt"):
            coordinator.decrypt(chunks, 10, 1)
        with pytest.raises(NoSecretKeyError, match="no key to encrypt"):
            coordinator.encrypt(np.zeros(10))


def test_context_bytes_without_secret_key(secret: ts.Context) -> None:
    data = context_to_bytes(secret, secret=False)
    assert len(data) < 1000  # parameters only: no keys at all in symmetric mode
    ctx = context_from_bytes(data, expect_secret=False)
    assert not ctx.is_private()
    with pytest.raises(ValueError, match="expected the consortium's secret context"):
        context_from_bytes(data, expect_secret=True)
    full = context_to_bytes(secret, secret=True)
    assert len(full) > 50_000
    with pytest.raises(ValueError, match="coordinator must never receive it"):
        context_from_bytes(full, expect_secret=False)
    with pytest.raises(ValueError, match="holds none"):
        context_to_bytes(ctx, secret=True)
    with pytest.raises(ValueError, match="could not read a TenSEAL context"):
        context_from_bytes(b"not a context", expect_secret=False)


def test_public_key_mode_keeps_the_public_key() -> None:
    secret = new_secret_context(COMMON_DEFAULT)
    public = context_from_bytes(context_to_bytes(secret, secret=False), expect_secret=False)
    assert not public.is_private()
    x = np.linspace(-1, 1, 50)
    chunks = CkksCodec(public, COMMON_DEFAULT).encrypt(x)  # anyone may encrypt
    site = CkksCodec(secret, COMMON_DEFAULT)
    assert np.max(np.abs(site.decrypt(chunks, 50) - x)) <= site.error_bound(1)


def test_params() -> None:
    assert CkksParams.from_spec(CkksSpec()) == P
    assert (P.slots, P.data_bits) == (4096, 60)
    assert COMMON_DEFAULT.data_bits == 140 and not COMMON_DEFAULT.symmetric
    with pytest.raises(ValueError, match="128-bit security"):
        CkksParams(4096, (60, 40, 40))
    with pytest.raises(ValueError, match="each in 20..60"):
        CkksParams(8192, (60,))
    with pytest.raises(ValueError, match="scale_bits must be in 16..57"):
        CkksParams(scale_bits=58)
    with pytest.raises(ValueError, match="poly_modulus_degree must be one of"):
        CkksParams(poly_modulus_degree=5000)


def test_codec_refuses_a_context_of_other_parameters(public: ts.Context) -> None:
    with pytest.raises(ValueError, match="does not match the parameters"):
        CkksCodec(public, COMMON_DEFAULT)


def test_make_codec_follows_the_spec(public: ts.Context) -> None:
    codec = make_codec(PrivacySpec(mode="ckks", ckks=CkksSpec()), public, 10)
    assert isinstance(codec, PackedCodec)
    assert (codec.quant_bits, codec.lane_bits, codec.scale_bits) == (10, 14, 15)
    plain = make_codec(PrivacySpec(mode="ckks", ckks=CkksSpec(packing=False)), public, 10)
    assert isinstance(plain, CkksCodec)


# --------------------------------------------------------------------------- sums


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("num_sites", [3, 10])
@pytest.mark.parametrize("length", [1, SLOTS + 7, 3 * SLOTS + 2])
def test_encrypted_sum_matches_the_plain_sum(
    kind: str,
    num_sites: int,
    length: int,
    secret: ts.Context,
    public: ts.Context,
    other_site: ts.Context,
) -> None:
    xs = updates(num_sites, length, seed=num_sites * 1000 + length)
    site, coordinator, reader = (CODECS[kind](c) for c in (secret, public, other_site))
    sent = [site.encrypt(x) for x in xs]
    total = coordinator.add(sent, length)
    got = reader.decrypt(total, length, num_sites)
    exact = np.sum([x.astype(np.float64) for x in xs], axis=0)
    assert got.shape == (length,) and got.dtype == np.float64
    err = float(np.max(np.abs(got - exact)))
    assert err <= site.error_bound(num_sites)
    if kind == "packed":  # the bound is tight: quantization error is real
        assert length == 1 or err > site.error_bound(num_sites) / 10


def test_packed_sends_under_three_times_the_plaintext(secret: ts.Context) -> None:
    codec = packed_codec(secret)
    assert isinstance(codec, PackedCodec)
    length = 2 * codec.values_per_chunk
    chunks = codec.encrypt(np.zeros(length, np.float32))
    assert len(chunks) == 2
    ratio = sum(map(len, chunks)) / (4 * length)
    assert 2.5 < ratio <= 3.0


def test_packed_decrypt_checks_the_number_of_sites(secret: ts.Context, public: ts.Context) -> None:
    site, coordinator = packed_codec(secret), packed_codec(public)
    total = coordinator.add([site.encrypt(np.zeros(5)) for _ in range(3)], 5)
    with pytest.raises(CiphertextError, match="sum of 3 update.*num_sites=4"):
        site.decrypt(total, 5, 4)
    with pytest.raises(ValueError, match=r"num_sites must be in 1..10"):
        site.decrypt(total, 5, 11)
    with pytest.raises(ValueError, match="max_sites >= 11"):
        coordinator.add([site.encrypt(np.zeros(5)) for _ in range(11)], 5)


def test_packed_values_beyond_the_clip_are_clipped(secret: ts.Context) -> None:
    codec = packed_codec(secret)
    got = codec.decrypt(codec.encrypt([-3.0, 3.0, 0.1]), 3, 1)
    assert np.allclose(got, [-CLIP, CLIP, 0.1], atol=codec.error_bound(1))


def test_another_secret_key_does_not_decrypt(secret: ts.Context) -> None:
    stranger = new_secret_context(P)
    for make in CODECS.values():
        chunks = make(stranger).encrypt(np.full(100, 0.1))
        with pytest.raises(CiphertextError, match="another secret key"):
            make(secret).decrypt(chunks, 100, 1)


# --------------------------------------------------------------------------- noise


def test_noise_added_to_the_float_sum(secret: ts.Context, public: ts.Context) -> None:
    length = SLOTS + 3
    xs = updates(3, length, seed=7)
    site, coordinator = float_codec(secret), float_codec(public)
    noise = np.random.default_rng(8).normal(0.0, 0.1, length)
    total = coordinator.add([site.encrypt(x) for x in xs], length)
    noisy = coordinator.add_plain(total, noise, length)
    got = site.decrypt(noisy, length, 3)
    exact = np.sum(xs, axis=0, dtype=np.float64) + noise
    assert np.max(np.abs(got - exact)) <= site.error_bound(3)


def test_noise_added_to_the_packed_sum(secret: ts.Context, public: ts.Context) -> None:
    length = 3 * SLOTS + 3
    std = 0.05
    site = PackedCodec(secret, P, max_sites=10, clip=CLIP, noise_std=std)
    coordinator = PackedCodec(public, P, max_sites=10, clip=CLIP, noise_std=std)
    xs = updates(10, length, seed=9)
    noise = np.random.default_rng(10).normal(0.0, std, length)
    noise[:2] = [-50 * std, 50 * std]  # far beyond 8 sigma: clamped
    total = coordinator.add([site.encrypt(x) for x in xs], length)
    got = site.decrypt(coordinator.add_plain(total, noise, length), length, 10)
    exact = np.asarray(np.sum(xs, axis=0, dtype=np.float64))
    limit = site.layout.noise_limit * site.step
    clamped = np.clip(noise, -limit, limit)
    assert np.max(np.abs(got - exact - clamped)) <= site.error_bound(10) + site.step / 2
    assert abs(got[0] - exact[0] + limit) <= site.error_bound(10) + site.step / 2
    with pytest.raises(ValueError, match="already hold a noise vector"):
        coordinator.add_plain(coordinator.add_plain(total, noise, length), noise, length)


def test_packed_noise_needs_room(public: ts.Context, secret: ts.Context) -> None:
    coordinator = packed_codec(public)
    total = coordinator.add([packed_codec(secret).encrypt(np.zeros(4))], 4)
    with pytest.raises(ValueError, match="no room for noise"):
        coordinator.add_plain(total, np.zeros(4), 4)


# --------------------------------------------------------------------------- bad chunks


@pytest.mark.parametrize("kind", CODECS)
def test_flipped_bytes_are_caught_wherever_they_are(
    kind: str, secret: ts.Context, public: ts.Context
) -> None:
    make = CODECS[kind]
    good = chunk_pair(secret, make)
    length = (SLOTS * (3 if kind == "packed" else 1)) + 5
    coordinator = make(public)
    coordinator.check(good, length)
    n = len(good[1])
    for pos, reason in [
        (0, "ciphertext marker"),
        (4, "version"),
        (7, "announces"),  # description length
        (9, "CRC-32"),  # sites
        (13, "CRC-32"),  # index
        (29, "announces"),  # payload length
        (33, "CRC-32"),  # the CRC itself
        (40, "CRC-32"),  # description
        (200, "CRC-32"),  # payload head
        (n // 2, "CRC-32"),
        (n - 1, "CRC-32"),
    ]:
        bad = bytearray(good[1])
        bad[pos] ^= 0x5A
        with pytest.raises(CiphertextError, match=f"^chunk 1: .*{reason}") as info:
            coordinator.check([good[0], bytes(bad)], length)
        assert info.value.chunk == 1
        with pytest.raises(CiphertextError, match=f"^update 1, chunk 1: .*{reason}"):
            coordinator.add([good, [good[0], bytes(bad)]], length)


def test_truncated_wrong_count_and_garbage(secret: ts.Context, public: ts.Context) -> None:
    good = chunk_pair(secret, float_codec)
    length = SLOTS + 5
    coordinator = float_codec(public)
    cut = good[1][: len(good[1]) // 3]
    with pytest.raises(CiphertextError, match="chunk 1: truncated: the header announces"):
        coordinator.check([good[0], cut], length)
    with pytest.raises(CiphertextError, match="chunk 0: truncated: 10 bytes"):
        coordinator.check([good[0][:10], good[1]], length)
    with pytest.raises(CiphertextError, match="chunk 1: has trailing bytes"):
        coordinator.check([good[0], good[1] + b"\0"], length)
    with pytest.raises(CiphertextError, match=r"expected 2 chunk\(s\) for 4101 values.*found 1"):
        coordinator.check(good[:1], length)
    with pytest.raises(CiphertextError, match=r"expected 3 chunk\(s\).*found 2"):
        coordinator.check(good, 2 * SLOTS + 1)
    with pytest.raises(CiphertextError, match="chunk 0: is chunk 1 of 2 by its header"):
        coordinator.check([good[1], good[0]], length)
    with pytest.raises(CiphertextError, match="belongs to a vector of 4101 values, expected 4100"):
        coordinator.check(good, length - 1)
    rng = np.random.default_rng(3)
    for size in (0, 50, 5000, 140_000):
        with pytest.raises(CiphertextError, match="chunk 0: (truncated|does not start)"):
            coordinator.check([rng.bytes(size), good[1]], length)
    with pytest.raises(CiphertextError, match="expected bytes, found str"):
        coordinator.check(["text", good[1]], length)  # type: ignore[list-item]


def _forge(codec: Codec, payload: bytes, *, index: int, count: int, length: int) -> bytes:
    """A chunk whose header is right for ``codec`` around any payload (as a careless peer might send)."""
    return _frame(
        codec._kind,
        codec.description,
        noise=0,
        sites=1,
        index=index,
        count=count,
        length=length,
        payload=payload,
    )


def test_chunks_of_other_parameters_are_refused(secret: ts.Context, public: ts.Context) -> None:
    coordinator = float_codec(public)
    common = CkksCodec(new_secret_context(COMMON_DEFAULT), COMMON_DEFAULT)
    theirs = common.encrypt(np.zeros(5))
    with pytest.raises(
        CiphertextError, match="chunk 0: was made for unpacked CKKS 'N=8192 chain=60-40-40-60"
    ):
        coordinator.check(theirs, 5)
    with pytest.raises(CiphertextError, match="was made for packed CKKS"):
        coordinator.check(packed_codec(secret).encrypt(np.zeros(5)), 5)

    def payload(chunks: list[bytes]) -> bytes:
        return _unframe(chunks[0], 0, None).payload

    # headers forged to look right: the ciphertexts themselves are checked
    with pytest.raises(CiphertextError, match="not a valid CKKS ciphertext for N=8192 chain=60-40"):
        coordinator.check([_forge(coordinator, payload(theirs), index=0, count=1, length=5)], 5)
    packed_payload = payload(packed_codec(secret).encrypt(np.zeros(5)))
    with pytest.raises(CiphertextError, match=r"scale 2\^15.00, expected 2\^40"):
        coordinator.check([_forge(coordinator, packed_payload, index=0, count=1, length=5)], 5)
    ten = payload(float_codec(secret).encrypt(np.zeros(10)))
    with pytest.raises(CiphertextError, match="10 slots used, expected 5"):
        coordinator.check([_forge(coordinator, ten, index=0, count=1, length=5)], 5)
    noise = np.random.default_rng(4).bytes(3000)
    with pytest.raises(CiphertextError, match="not a valid CKKS ciphertext"):
        coordinator.check([_forge(coordinator, noise, index=0, count=1, length=5)], 5)
    mul = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40])
    mul.auto_relin = mul.auto_rescale = False
    x = ts.ckks_vector(mul, [1.0] * 5, scale=2.0**20)
    product = (x * x).serialize()  # scale 2^40 as expected, but three polynomials
    with pytest.raises(CiphertextError, match="3 polynomials, expected 2"):
        coordinator.check([_forge(coordinator, product, index=0, count=1, length=5)], 5)


def test_mixed_sums_are_refused(secret: ts.Context, public: ts.Context) -> None:
    site, coordinator = float_codec(secret), float_codec(public)
    length = SLOTS + 1
    one = site.encrypt(np.zeros(length))
    two = coordinator.add([one, site.encrypt(np.zeros(length))], length)
    with pytest.raises(CiphertextError, match="chunk 1: holds a sum of 2 update"):
        coordinator.check([one[0], two[1]], length)


def test_bad_arguments_are_refused(secret: ts.Context) -> None:
    site = float_codec(secret)
    with pytest.raises(ValueError, match="non-finite value at index 2"):
        site.encrypt([0.0, 1.0, float("inf")])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        site.encrypt(np.zeros((2, 3)))
    assert isinstance(site, CkksCodec)
    with pytest.raises(ValueError, match="reaches the limit"):
        site.encrypt([site.max_abs_sum])
    with pytest.raises(ValueError, match="length must be a positive integer"):
        site.check([], 0)
    with pytest.raises(ValueError, match="non-empty list of updates"):
        site.add([], 5)
    with pytest.raises(ValueError, match="max_sites must be at least 1"):
        PackedCodec(secret, P, max_sites=0, clip=CLIP)
    with pytest.raises(ValueError, match="lower values_per_slot"):
        PackedCodec(secret, P, max_sites=1000, clip=CLIP)


def test_header_layout_is_stable() -> None:
    # magic, version, kind, noise, description length, sites, index, count, length, payload, crc
    from secure.ckks import _HEADER

    assert _HEADER.size == 36
    assert struct.calcsize(_HEADER.format) == 36
