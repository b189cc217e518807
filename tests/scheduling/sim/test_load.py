"""Background load: the daily pattern, seeded Poisson bursts, determinism and waiting for capacity."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from scheduling.sim.load import (
    HOUR_S,
    BackgroundLoad,
    LoadPattern,
    daily_load,
    derive_seed,
    local_hour,
    unit_hash,
    unit_hash_many,
)

QUIET = LoadPattern(base_percent=10.0, peak_percent=40.0, bursts_per_hour=0.0, noise_percent=0.0)


@pytest.mark.parametrize(
    ("t_s", "start_hour", "tz", "expected"),
    [
        (0.0, 9.0, 0.0, 9.0),
        (7200.0, 9.0, -5.0, 6.0),  # 9 + 2 - 5
        (0.0, 22.0, 5.5, 3.5),  # 27.5 wraps to 3.5
        (86_400.0, 9.0, 0.0, 9.0),  # a day later, same hour
    ],
)
def test_local_hour(t_s: float, start_hour: float, tz: float, expected: float) -> None:
    assert local_hour(t_s, start_hour, tz) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("hour", "expected"),
    [
        (3.0, 10.0),  # night: base
        (8.0, 10.0),  # opening: 10 + 40 * (1 - cos 0) / 2
        (11.0, 30.0),  # quarter way: 10 + 40 * (1 - cos(pi / 2)) / 2
        (14.0, 50.0),  # mid-day peak: 10 + 40
        (17.0, 30.0),
        (20.0, 10.0),  # closed
    ],
)
def test_daily_load(hour: float, expected: float) -> None:
    assert daily_load(hour, QUIET) == pytest.approx(expected)


def test_time_zone_shifts_the_peak() -> None:
    # virtual time 0 is 09:00 UTC; the UTC site peaks at 14:00 UTC, 5 h in; the +6 h site
    # peaks at 14:00 local = 08:00 UTC, 23 h in
    utc = BackgroundLoad(QUIET, 1, "a", 0, tz_offset_h=0.0, start_hour=9.0)
    east = BackgroundLoad(QUIET, 1, "a", 0, tz_offset_h=6.0, start_hour=9.0)
    assert utc.at(5 * HOUR_S) == pytest.approx(50.0)
    assert east.at(5 * HOUR_S) == pytest.approx(10.0)  # 20:00 local: closed
    assert east.at(23 * HOUR_S) == pytest.approx(50.0)


def test_derive_seed_is_stable_across_processes() -> None:
    assert derive_seed(7, "bank-01") == 11259069319931310500  # blake2b, not the salted hash()
    assert derive_seed(7, "bank-01") != derive_seed(8, "bank-01")
    assert unit_hash(12345, 3) == pytest.approx(0.1761178072449612)
    indices = np.arange(-3, 50)
    assert unit_hash_many(99, indices).tolist() == [unit_hash(99, int(i)) for i in indices]


def test_same_seed_same_load_and_different_seeds_differ() -> None:
    times = np.linspace(0.0, 3 * 86_400.0, 2000)
    a = BackgroundLoad(LoadPattern(), 5, "bank-01", 0, 1.0, 9.0).at_many(times)
    b = BackgroundLoad(LoadPattern(), 5, "bank-01", 0, 1.0, 9.0).at_many(times)
    other_seed = BackgroundLoad(LoadPattern(), 6, "bank-01", 0, 1.0, 9.0).at_many(times)
    other_device = BackgroundLoad(LoadPattern(), 5, "bank-01", 1, 1.0, 9.0).at_many(times)
    assert a.tolist() == b.tolist()
    assert np.abs(a - other_seed).max() > 10.0
    assert np.abs(a - other_device).max() > 10.0
    assert a.min() >= 0.0 and a.max() <= 100.0


def test_scalar_and_vector_agree_exactly() -> None:
    load = BackgroundLoad(LoadPattern(bursts_per_hour=2.0), 3, "s", 0, -5.0, 9.0)
    times = np.linspace(0.0, 2 * 86_400.0, 5001)
    assert load.at_many(times).tolist() == [load.at(float(t)) for t in times]


def test_bursts_are_poisson_with_exponential_lengths() -> None:
    pattern = LoadPattern(bursts_per_hour=2.0, burst_mean_s=600.0, burst_max_s=4 * HOUR_S)
    load = BackgroundLoad(pattern, 11, "s", 0)
    per_hour = [load.bursts_in_hour(h) for h in range(500)]
    counts = [len(b) for b in per_hour]
    lengths = [end - start for bursts in per_hour for start, end, _ in bursts]
    heights = [height for bursts in per_hour for _, _, height in bursts]
    # 1000 arrivals expected: mean and variance of a Poisson(2) count are both 2
    assert statistics.fmean(counts) == pytest.approx(2.0, abs=0.15)
    assert statistics.variance(counts) == pytest.approx(2.0, abs=0.4)
    assert statistics.fmean(lengths) == pytest.approx(600.0, rel=0.1)
    assert min(heights) >= 30.0 and max(heights) <= 70.0
    assert all(h * HOUR_S <= s < (h + 1) * HOUR_S for h, b in enumerate(per_hour) for s, _, _ in b)


def test_bursts_add_their_heights_while_they_last() -> None:
    pattern = LoadPattern(
        base_percent=10.0, peak_percent=0.0, bursts_per_hour=1.0, noise_percent=0.0
    )
    load = BackgroundLoad(pattern, 2, "s", 0)
    bursts = [b for h in range(5) for b in load.bursts_in_hour(h)]
    assert len(bursts) == 5
    for start, end, _ in bursts:
        active = load.active_bursts(start + 1.0)
        assert load.at(start + 1.0) == pytest.approx(min(100.0, 10.0 + sum(b[2] for b in active)))
        assert load.at(end) == pytest.approx(10.0 + sum(b[2] for b in load.active_bursts(end)))
    # at this seed the second burst starts inside the first: 10 + 41.2 + 56.8 is clipped to 100
    assert len(load.active_bursts(bursts[1][0])) == 2
    assert load.at(bursts[1][0]) == 100.0
    assert load.at(bursts[0][1]) == pytest.approx(10.0)  # all over


def test_next_below_waits_for_the_burst_to_end() -> None:
    pattern = LoadPattern(
        base_percent=10.0,
        peak_percent=0.0,
        bursts_per_hour=0.5,
        burst_min_percent=85.0,
        burst_max_percent=90.0,
        noise_percent=0.0,
    )
    load = BackgroundLoad(pattern, 4, "s", 0)
    start, end, _ = next(b for h in range(100) for b in load.bursts_in_hour(h) if b[1] - b[0] > 60)
    t = start + 1.0
    assert load.at(t) >= 90.0  # 10 + at least 85 (more if bursts overlap)
    free = load.next_below(t, 90.0, max_wait_s=10 * HOUR_S)
    assert free > t
    assert load.at(free) < 90.0
    assert free == max(b[1] for b in load.active_bursts(t)) or load.active_bursts(free)
    assert load.next_below(t, 90.0, max_wait_s=1.0) == t + 1.0  # capped
    assert load.next_below(end + 1e-3, 99.0, 60.0) == end + 1e-3  # already below


def test_pattern_validation() -> None:
    with pytest.raises(ValueError, match="open_hour < close_hour"):
        LoadPattern(open_hour=20.0, close_hour=8.0)
    with pytest.raises(ValueError, match="burst_mean_s <= burst_max_s"):
        LoadPattern(burst_mean_s=7200.0, burst_max_s=3600.0)
    with pytest.raises(ValueError, match="burst_min_percent <= burst_max_percent"):
        LoadPattern(burst_min_percent=80.0, burst_max_percent=20.0)
