"""Tests of secure.packing: quantization, lane layout, pack/unpack, sums that never carry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure.packing import (
    MAX_QUANT_BITS,
    MIN_QUANT_BITS,
    NOISE_CLAMP_SIGMAS,
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

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)


@st.composite
def layouts(draw: st.DrawFn, noise: bool | None = None) -> LaneLayout:
    """Any layout lane_layout accepts, from slot capacities the CKKS codecs use."""
    capacity = draw(st.integers(20, 52))
    k = draw(st.integers(1, 4))
    sites = draw(st.integers(1, 200))
    clip = draw(st.sampled_from([0.01, 0.25, 1.0, 8.0]))
    with_noise = draw(st.booleans()) if noise is None else noise
    noise_std = clip * draw(st.floats(0.001, 2.0)) if with_noise else 0.0
    try:
        return lane_layout(capacity, sites, k, clip, noise_std)
    except ValueError:
        return lane_layout(52, 1, 1, clip, 0.01 * clip if with_noise else 0.0)


# --------------------------------------------------------------------------- layout


def test_layout_of_the_defaults() -> None:
    # 43-bit slots (60-bit prime, scale 2^15), 3 per slot -> 14-bit lanes;
    # 10 sites: 10 * (2^10 - 1) = 10230 < 2^14 = 16384, but 10 * 2047 = 20470 is not
    lay = lane_layout(43, 10, 3, 0.25)
    assert (lay.lane_bits, lay.quant_bits, lay.headroom_bits, lay.noise_limit) == (14, 10, 4, 0)
    assert lay.step == pytest.approx(0.5 / 1023)
    assert lay.slot_bits == 42


def test_layout_headroom_is_ceil_log2_sites_without_noise() -> None:
    for sites in (1, 2, 3, 10, 64, 65, 100):
        lay = lane_layout(52, sites, 2, 1.0)  # 26-bit lanes
        assert lay.quant_bits == min(MAX_QUANT_BITS, 26 - math.ceil(math.log2(sites)))


def test_layout_makes_room_for_noise() -> None:
    plain = lane_layout(43, 10, 3, 0.25)
    # noise std 0.25: limit 8 sigma = 2 = 4092 steps of 0.5/1023; 10230 + 2 * 4092 > 16384
    noisy = lane_layout(43, 10, 3, 0.25, noise_std=0.25)
    assert noisy.quant_bits == plain.quant_bits - 1
    assert noisy.noise_limit == math.ceil(NOISE_CLAMP_SIGMAS * 0.25 / noisy.step)
    assert 10 * noisy.levels + 2 * noisy.noise_limit < 1 << noisy.lane_bits


def test_layout_refuses_what_cannot_fit_and_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"lower values_per_slot to 2") as info:
        lane_layout(40, 1000, 3, 0.25)  # 13-bit lanes, 1000 sites need 10 bits of headroom
    assert "1000 sites" in str(info.value)
    with pytest.raises(ValueError, match="lower values_per_slot"):
        lane_layout(20, 10**6, 1, 0.25)
    for bad in (
        dict(capacity_bits=53),
        dict(max_sites=0),
        dict(values_per_slot=0),
        dict(clip=0.0),
        dict(clip=float("nan")),
        dict(noise_std=-1.0),
    ):
        args = dict(capacity_bits=43, max_sites=3, values_per_slot=3, clip=0.25) | bad
        with pytest.raises(ValueError, match="must be"):
            lane_layout(**args)


@SETTINGS
@given(st.integers(8, 52), st.integers(1, 500), st.integers(1, 6), st.floats(0.0, 3.0))
def test_layout_fits_and_is_the_largest(capacity: int, sites: int, k: int, noise: float) -> None:
    try:
        lay = lane_layout(capacity, sites, k, 0.5, noise)
    except ValueError as exc:
        assert "lower values_per_slot" in str(exc)
        levels = 2**MIN_QUANT_BITS - 1  # the fewest bits did not fit: check it
        limit = math.ceil(NOISE_CLAMP_SIGMAS * noise * levels) if noise else 0
        assert sites * levels + 2 * limit >= 1 << (capacity // k)
        return
    assert lay.slot_bits <= capacity
    assert MIN_QUANT_BITS <= lay.quant_bits <= MAX_QUANT_BITS
    assert sites * lay.levels + 2 * lay.noise_limit < 1 << lay.lane_bits
    if lay.quant_bits < min(MAX_QUANT_BITS, lay.lane_bits):  # one more bit must not fit
        bigger = (1 << (lay.quant_bits + 1)) - 1
        limit = math.ceil(NOISE_CLAMP_SIGMAS * noise / (1.0 / bigger)) if noise else 0
        assert sites * bigger + 2 * limit >= 1 << lay.lane_bits


# --------------------------------------------------------------------------- quantize


@SETTINGS
@given(layouts(), st.lists(st.floats(-20.0, 20.0), min_size=1, max_size=50))
def test_quantize_is_offset_binary_within_half_a_step(lay: LaneLayout, values: list[float]) -> None:
    v = np.array(values)
    q = quantize(v, lay)
    assert q.dtype == np.int64
    assert q.min() >= 0 and q.max() <= lay.levels
    back = dequantize_sum(q, 1, lay)
    clipped = np.clip(v, -lay.clip, lay.clip)
    assert np.all(np.abs(back - clipped) <= quantization_error_bound(1, lay))


def test_quantize_maps_the_clip_range_onto_the_levels() -> None:
    lay = lane_layout(43, 10, 3, 0.25)
    q = quantize([-0.25, 0.0, 0.25, -5.0, 5.0], lay)
    assert q.tolist() == [0, 512, 1023, 0, 1023]  # 0.0 -> 511.5 rounds to even 512


def test_quantize_refuses_non_finite_and_matrices() -> None:
    lay = lane_layout(43, 10, 3, 0.25)
    with pytest.raises(ValueError, match="non-finite value at index 1"):
        quantize([0.0, float("nan")], lay)
    with pytest.raises(ValueError, match="1-D"):
        quantize(np.zeros((2, 2)), lay)


@SETTINGS
@given(layouts(noise=True), st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_noise_is_rounded_and_clamped(lay: LaneLayout, values: list[float]) -> None:
    z = quantize_noise(values, lay)
    assert np.all(np.abs(z) <= lay.noise_limit)
    inside = np.abs(np.array(values)) <= lay.noise_limit * lay.step - lay.step
    assert np.all(
        np.abs(z * lay.step - np.array(values))[inside] <= quantization_error_bound(1, lay)
    )


def test_noise_needs_room() -> None:
    with pytest.raises(ValueError, match="noise_std"):
        quantize_noise([0.1], lane_layout(43, 10, 3, 0.25))


# --------------------------------------------------------------------------- pack


@SETTINGS
@given(layouts(), st.data())
def test_pack_unpack_round_trip(lay: LaneLayout, data: st.DataObject) -> None:
    lo, hi = lay.lane_min, lay.lane_min + (1 << lay.lane_bits) - 1
    lanes = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=40)))
    slots = pack(lanes, lay)
    assert slots.dtype == np.float64
    assert slots.size == math.ceil(lanes.size / lay.values_per_slot)
    assert np.all(np.abs(slots) < 2.0**lay.slot_bits)
    assert np.array_equal(slots, np.rint(slots))  # exact integers
    assert np.array_equal(unpack(slots, lanes.size, lay), lanes)


@SETTINGS
@given(layouts(), st.data())
def test_sums_of_up_to_max_sites_never_carry(lay: LaneLayout, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, min(lay.max_sites, 40)))
    length = data.draw(st.integers(1, 20))
    extreme = data.draw(st.booleans())  # all lanes at their largest: the worst case
    sites = [
        np.full(length, lay.levels)
        if extreme
        else np.array(
            data.draw(st.lists(st.integers(0, lay.levels), min_size=length, max_size=length))
        )
        for _ in range(n)
    ]
    total = sum(pack(q, lay) for q in sites)
    lane_sum = np.sum(sites, axis=0)
    if lay.noise_limit:
        sign = data.draw(st.sampled_from([-1, 1]))
        noise = np.full(length, sign * lay.noise_limit)
        total = total + pack(noise, lay)
        lane_sum = lane_sum + noise
    assert np.all(np.abs(total) < 2.0**52)  # float64 sums of packed slots stay exact
    assert np.array_equal(unpack(total, length, lay), lane_sum)


@SETTINGS
@given(layouts(noise=False), st.data())
def test_error_bound_of_a_dequantized_sum(lay: LaneLayout, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, min(lay.max_sites, 30)))
    length = data.draw(st.integers(1, 20))
    floats = st.floats(-lay.clip, lay.clip)
    values = [
        np.array(data.draw(st.lists(floats, min_size=length, max_size=length))) for _ in range(n)
    ]
    total = sum(pack(quantize(v, lay), lay) for v in values)
    got = dequantize_sum(unpack(total, length, lay), n, lay)
    exact = np.sum(values, axis=0)
    assert np.all(np.abs(got - exact) <= quantization_error_bound(n, lay))


def test_unpack_refuses_what_the_lanes_cannot_hold() -> None:
    lay = lane_layout(43, 10, 3, 0.25)
    with pytest.raises(ValueError, match="cannot represent"):
        unpack(np.array([2.0**42]), 3, lay)
    with pytest.raises(ValueError, match="cannot represent"):
        unpack(np.array([-1.0]), 3, lay)  # no noise room: nothing below 0
    with pytest.raises(ValueError, match="at most 3 values"):
        unpack(np.array([1.0]), 4, lay)


def test_round_slots_accepts_small_noise_only() -> None:
    assert round_slots([1.1, -2.2, 3e12 + 0.2]).tolist() == [1, -2, 3 * 10**12]
    with pytest.raises(ValueError, match="slot 1 decrypted to 2.4"):
        round_slots([1.0, 2.4])
    with pytest.raises(ValueError, match="slot 0"):
        round_slots([float("inf")])
    with pytest.raises(ValueError, match="slot 0"):
        round_slots([2.0**60])
