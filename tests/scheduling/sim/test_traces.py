"""Traces: disjoint train/eval seeds, deterministic records, and the predictor's features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scheduling.sim.traces import (
    EVAL_SEEDS,
    FEATURE_NAMES,
    TRAIN_SEEDS,
    TraceRecord,
    by_site,
    check_seed,
    features,
    generate_trace,
    seed_split,
    trace_arrays,
    trace_features,
)


@pytest.fixture(scope="module")
def trace() -> list[TraceRecord]:
    return generate_trace(TRAIN_SEEDS[0], rounds=30, n_sites=10)


def test_train_and_eval_seeds_are_disjoint() -> None:
    assert TRAIN_SEEDS and EVAL_SEEDS
    assert not set(TRAIN_SEEDS) & set(EVAL_SEEDS)
    assert len(set(TRAIN_SEEDS)) == len(TRAIN_SEEDS)
    assert seed_split(TRAIN_SEEDS[3]) == "train"
    assert seed_split(EVAL_SEEDS[0]) == "eval"
    assert seed_split(-1) is None


def test_check_seed_refuses_the_other_split() -> None:
    check_seed(TRAIN_SEEDS[0], "train")
    check_seed(12345, "eval")  # in neither list: allowed
    with pytest.raises(ValueError, match=f"seed {EVAL_SEEDS[0]} is one of the eval seeds"):
        check_seed(EVAL_SEEDS[0], "train")
    with pytest.raises(ValueError, match=f"seed {TRAIN_SEEDS[0]} is one of the train seeds"):
        check_seed(TRAIN_SEEDS[0], "eval")
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        check_seed(1, "test")


def test_same_seed_same_trace_and_different_seeds_differ(trace: list[TraceRecord]) -> None:
    assert generate_trace(TRAIN_SEEDS[0], rounds=30, n_sites=10) == trace
    other = generate_trace(TRAIN_SEEDS[1], rounds=30, n_sites=10)
    assert [r.duration_s for r in other] != [r.duration_s for r in trace]


def test_records_hold_what_the_predictor_needs(trace: list[TraceRecord]) -> None:
    assert [r.round for r in trace] == sorted(r.round for r in trace)
    assert {r.round for r in trace} <= set(range(1, 31))
    assert len(trace) > 30 * 10 * 0.5  # 70 % participation expected
    for r in trace:
        assert r.duration_s > 0
        assert r.duration_s == pytest.approx(r.started_after_s + r.compute_s + r.network_s)
        assert {"device_temperature_c", "background_load_percent", "relative_throughput"} <= set(
            r.readings
        )
        assert r.steps in (10, 20, 50, 100, 200) and r.examples_per_step in (32, 64, 128)
        assert r.failed == (r.reason is not None)
    assert any("last_round_seconds" in r.readings for r in trace)
    assert any("last_round_seconds" not in r.readings for r in trace)  # first rounds


@pytest.mark.parametrize("seed", [TRAIN_SEEDS[0], EVAL_SEEDS[0]])
def test_durations_span_devices_and_loads(seed: int) -> None:
    records = generate_trace(seed, rounds=20, n_sites=10)
    durations = [r.duration_s for r in records if not r.failed]
    assert max(durations) / min(durations) > 100  # H100 with little work vs a CPU with much


def test_features_table() -> None:
    readings = {
        "device_utilization_percent": 50.0,
        "background_load_percent": 50.0,
        "device_temperature_c": 70.0,
        "device_power_w": 35.0,
        "device_power_limit_w": 70.0,
        "device_memory_used_mib": 4096.0,
        "device_memory_total_mib": 16384.0,
        "relative_throughput": 0.2,
        "num_devices": 3.0,
        "last_round_seconds": 9.0,
        "net_bytes": 999.0,
        "cpu_util_percent": 25.0,
    }
    x = features(readings, steps=10, examples_per_step=10, upload_bytes=40, download_bytes=59)
    assert x.dtype == np.float32 and x.shape == (len(FEATURE_NAMES),)
    expected = {
        "utilization": 0.5,
        "background": 0.5,
        "temperature": 0.7,
        "power_fraction": 0.5,  # 35 / 70
        "memory_fraction": 0.25,  # 4096 / 16384
        "log_throughput": math.log(0.2),
        "log_devices": math.log(4.0),
        "has_last_round": 1.0,
        "log_last_round_s": math.log(10.0),
        "log_net_bytes": math.log(1000.0),
        "log_examples": math.log(101.0),  # 10 * 10 examples
        "log_ideal_compute": math.log1p(100 / (0.2 * 0.5)),  # ln(1 + 1000)
        "log_transfer_bytes": math.log(100.0),  # 40 + 59 bytes
        "cpu_util": 0.25,
    }
    assert list(expected) == list(FEATURE_NAMES)
    assert x.tolist() == pytest.approx(list(expected.values()), rel=1e-6)


def test_missing_readings_give_zeros() -> None:
    x = dict(zip(FEATURE_NAMES, features({}, steps=1, examples_per_step=1).tolist(), strict=True))
    assert x["power_fraction"] == x["has_last_round"] == x["log_throughput"] == 0.0
    assert x["log_ideal_compute"] == pytest.approx(math.log(2.0))  # throughput taken as 1


def test_arrays_and_sequences(trace: list[TraceRecord]) -> None:
    x, y = trace_arrays(trace)
    ok = [r for r in trace if not r.failed]
    assert x.shape == (len(ok), len(FEATURE_NAMES)) and y.shape == (len(ok),)
    assert np.isfinite(x).all()
    assert x[0].tolist() == trace_features(ok[0]).tolist()
    assert y.tolist() == pytest.approx([r.duration_s for r in ok])
    assert trace_arrays(trace, include_failed=True)[0].shape[0] == len(trace)
    # the idealized compute time carries most of the signal
    log_ideal = x[:, FEATURE_NAMES.index("log_ideal_compute")]
    assert np.corrcoef(log_ideal, np.log(y))[0, 1] > 0.8
    sequences = by_site(trace)
    assert sorted(sequences) == sorted({r.site_id for r in trace})
    assert all([r.round for r in s] == sorted(r.round for r in s) for s in sequences.values())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        generate_trace(1, 0)
    with pytest.raises(ValueError, match="participation must be in"):
        generate_trace(1, 1, participation=0.0)
