"""Entropy-load score: metric table from readings, median imputation, weights, range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins.entropy_load import METRICS, EntropyLoadScore, metric_table

CTX = SchedulingContext(round=1)
LN2, LN3 = math.log(2), math.log(3)


def cand(site: str, **readings: float) -> Candidate:
    return Candidate(site, 0, 10, dict(readings))


# utilization (cost), background (cost), relative throughput (benefit); nothing else reported
SITES = [
    cand(
        "a", device_utilization_percent=10.0, background_load_percent=30.0, relative_throughput=1.0
    ),
    cand(
        "b", device_utilization_percent=20.0, background_load_percent=10.0, relative_throughput=1.0
    ),
    cand(
        "c", device_utilization_percent=20.0, background_load_percent=20.0, relative_throughput=0.5
    ),
]
# x': utilization [10, 20, 20] -> (20 - x)/10 = [1, 0, 0]; p = [1, 0, 0], e = 0, d = 1
#     background  [30, 10, 20] -> (30 - x)/20 = [0, 1, 0.5]; p = [0, 2/3, 1/3],
#                 e = 1 - (2/3) ln2/ln3, d = (2/3) ln2/ln3 = 0.42061984
#     throughput  [1, 1, 0.5]  -> (x - 0.5)/0.5 = [1, 1, 0]; p = [1/2, 1/2, 0],
#                 e = ln2/ln3, d = 1 - ln2/ln3 = 0.36907025
# sum d = 1.78969008 -> w = [0.55875596, 0.23502384, 0.20622020]
D = np.array([1.0, (2 / 3) * LN2 / LN3, 1 - LN2 / LN3])
W = D / D.sum()


def test_hand_computed_scores_and_weights() -> None:
    plugin = EntropyLoadScore()
    raw = plugin.score(SITES, CTX)
    # a: x' = [1, 0, 1]   -> 100 (w_u + w_t) = 100 (0.55875596 + 0.20622020) = 76.497616
    # b: x' = [0, 1, 1]   -> 100 (w_b + w_t) = 100 (0.23502384 + 0.20622020) = 44.124404
    # c: x' = [0, 0.5, 0] -> 100 w_b / 2     = 11.751192
    assert raw == pytest.approx({"a": 76.497616, "b": 44.124404, "c": 11.751192}, abs=1e-6)
    assert plugin.last_weights == pytest.approx(
        {"utilization": W[0], "background_load": W[1], "relative_throughput": W[2]}, abs=1e-12
    )
    # already on [0, 100]: rounded, not stretched (c keeps 12, not 0)
    assert plugin.normalize(raw) == {"a": 76, "b": 44, "c": 12}
    assert plugin.explain() == {
        "weights": {
            "utilization": 0.558756,
            "background_load": 0.235024,
            "relative_throughput": 0.20622,
        },
        "imputed": {},
    }


def test_metric_table_ratios_and_temperature_limit() -> None:
    site = cand(
        "x",
        device_utilization_percent=50.0,
        device_memory_used_mib=4096.0,
        device_memory_total_mib=16384.0,
        device_temperature_c=68.0,
        device_power_w=150.0,
        device_power_limit_w=300.0,
        background_load_percent=25.0,
        relative_throughput=2.0,
    )
    names, table, benefit, imputed = metric_table([site], 85.0, list(METRICS))
    assert names == list(METRICS)
    # memory 4096/16384 = 0.25; temperature 68/85 = 0.8; power 150/300 = 0.5
    np.testing.assert_allclose(table, [[50.0, 0.25, 0.8, 0.5, 25.0, 2.0]])
    assert benefit == [False, False, False, False, False, True]
    assert imputed == {}
    # relative to a scenario limit of 80 °C: 68/80 = 0.85
    assert metric_table([site], 80.0, ["temperature_fraction"])[1][0, 0] == pytest.approx(0.85)


def test_missing_values_take_the_column_median_and_unreported_metrics_drop() -> None:
    sites = [*SITES, cand("d", background_load_percent=40.0, device_memory_total_mib=8.0)]
    names, table, _, imputed = metric_table(sites, 85.0, list(METRICS))
    # nobody reports temperature or power; memory needs used and total, so it drops too
    assert names == ["utilization", "background_load", "relative_throughput"]
    # d: utilization = median(10, 20, 20) = 20; throughput = median(1, 1, 0.5) = 1
    np.testing.assert_allclose(table[3], [20.0, 40.0, 1.0])
    assert imputed == {"d": ["utilization", "relative_throughput"]}
    plugin = EntropyLoadScore()
    plugin.score(sites, CTX)
    assert plugin.explain()["imputed"] == {"d": ["utilization", "relative_throughput"]}


@pytest.mark.parametrize(
    "sites",
    [
        [cand("a"), cand("b", cpu_util_percent=50.0)],  # no metric reported by anyone
        [cand("a", device_utilization_percent=90.0)],  # a single site
        [cand("a", background_load_percent=5.0), cand("b", background_load_percent=5.0)],  # equal
    ],
)
def test_nothing_to_tell_apart_gives_everyone_100(sites: list[Candidate]) -> None:
    plugin = EntropyLoadScore()
    raw = plugin.score(sites, CTX)
    assert plugin.normalize(raw) == {c.site_id: 100 for c in sites}


def test_scores_stay_in_range_on_random_fleets() -> None:
    rng = np.random.default_rng(11)
    plugin = EntropyLoadScore()
    for _ in range(10):
        sites = [
            cand(
                f"s{i}",
                device_utilization_percent=float(rng.uniform(0, 100)),
                device_temperature_c=float(rng.uniform(30, 90)),
                background_load_percent=float(rng.uniform(0, 100)),
                relative_throughput=float(rng.uniform(0.1, 3.0)),
            )
            for i in range(int(rng.integers(2, 8)))
        ]
        norm = plugin.normalize(plugin.score(sites, CTX))
        assert set(norm) == {c.site_id for c in sites}
        assert all(0 <= v <= 100 for v in norm.values())
        assert sum(plugin.last_weights.values()) == pytest.approx(1.0)


def test_metric_subset_and_bad_arguments() -> None:
    plugin = EntropyLoadScore(metrics=["background_load"])
    # background [30, 10, 20] -> x' = [0, 1, 0.5], one metric -> w = 1 -> 0, 100, 50
    assert plugin.normalize(plugin.score(SITES, CTX)) == {"a": 0, "b": 100, "c": 50}
    with pytest.raises(
        ValueError,
        match="entropy-load: unknown or no metrics \\['gpu_hz'\\]; choose from: utilization",
    ):
        EntropyLoadScore(metrics=["gpu_hz"])
    with pytest.raises(ValueError, match="unknown or no metrics"):
        EntropyLoadScore(metrics=[])
    with pytest.raises(ValueError, match="max_temperature_c must be a finite number > 0; found -1"):
        EntropyLoadScore(max_temperature_c=-1.0)


def test_empty_fleet() -> None:
    assert EntropyLoadScore().score([], CTX) == {}
