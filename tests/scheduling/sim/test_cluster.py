"""The simulated cluster: durations from the device model, load, heat, failures, telemetry, determinism."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from scheduling.base import Candidate
from scheduling.sim.cluster import (
    Outcome,
    SimCluster,
    SimSite,
    Work,
    heterogeneous_consortium,
    training_rate,
)
from scheduling.sim.load import LoadPattern
from scheduling.sim.profiles import PROFILES

FLAT = LoadPattern(base_percent=20.0, peak_percent=0.0, bursts_per_hour=0.0, noise_percent=0.0)
"""A constant 20 % background load: no daily bump, no bursts, no jitter."""

SHARED_KEYS = {
    "device_utilization_percent",
    "device_memory_used_mib",
    "device_memory_total_mib",
    "device_temperature_c",
    "cpu_util_percent",
    "mem_used_mib",
    "mem_total_mib",
    "cpu_count",
    "background_load_percent",
    "relative_throughput",
    "num_devices",
}


def site(site_id: str = "s", devices: tuple[str, ...] = ("a100",), **kw: object) -> SimSite:
    args: dict[str, object] = {"failure_prob": 0.0, "load": FLAT, "bandwidth_bytes_per_s": 1e8}
    args.update(kw)
    return SimSite(site_id, devices, 1000, **args)  # type: ignore[arg-type]


def exact(sites: list[SimSite], seed: int = 0) -> SimCluster:
    """A cluster without noise: durations follow the formulas to the last digit."""
    return SimCluster(sites, seed, noise_sigma=0.0, network_sigma=0.0)


@pytest.mark.parametrize(
    ("throughput", "background", "throttle", "expected"),
    [
        (1.0, 0.0, 1.0, 2000.0),  # an idle, cool A100
        (1.0, 25.0, 1.0, 1500.0),  # 2000 * 0.75
        (0.2, 50.0, 1.0, 200.0),  # T4: 2000 * 0.2 * 0.5
        (2.7, 20.0, 0.5, 2160.0),  # H100 throttled: 2000 * 2.7 * 0.8 * 0.5
        (1.0, 100.0, 1.0, 100.0),  # saturated: floor share 0.05 -> 2000 * 0.05
    ],
)
def test_training_rate(
    throughput: float, background: float, throttle: float, expected: float
) -> None:
    assert training_rate(2000.0, throughput, background, throttle) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("profile", "expected_compute_s"),
    [
        ("h100", 1.4814815),  # 6400 / (2000 * 2.7 * 0.8)
        ("a100", 4.0),  # 6400 / (2000 * 1.0 * 0.8)
        ("t4", 20.0),  # 6400 / (2000 * 0.2 * 0.8)
        ("cpu", 133.33333),  # 6400 / (2000 * 0.03 * 0.8)
    ],
)
def test_duration_comes_from_the_device_model(profile: str, expected_compute_s: float) -> None:
    cluster = exact([site(devices=(profile,))])
    out = cluster.run({"s": Work(100, 64, upload_bytes=50_000_000, download_bytes=100_000_000)})[
        "s"
    ]
    assert out.compute_s == pytest.approx(expected_compute_s, rel=1e-6)
    assert out.network_s == pytest.approx(1.5)  # 150 MB at 100 MB/s
    assert out.started_after_s == 0.0
    assert out.duration_s == pytest.approx(expected_compute_s + 1.5, rel=1e-6)
    assert (out.failed, out.reason) == (False, None)
    assert cluster.now == 0.0  # run() does not move the clock


def test_faster_devices_finish_first() -> None:
    names = ["h100", "mi300x", "a100", "mi250", "max1550", "t4", "cpu"]
    cluster = exact([site(n, (n,)) for n in names])
    out = cluster.run({n: Work(100, 64) for n in names})
    compute = [out[n].compute_s for n in names]
    assert compute == sorted(compute)
    assert compute[0] < compute[-1] / 50  # H100 vs a server CPU: 2.7 / 0.03 = 90x


def test_same_seed_same_everything_and_different_seeds_differ() -> None:
    def play(seed: int) -> tuple[list[Outcome], list[dict[str, float]]]:
        sites = heterogeneous_consortium(8, seed=3)
        cluster = SimCluster(sites, seed)
        outcomes, readings = [], []
        for _ in range(4):
            work = {
                s.site_id: Work(50, 32, upload_bytes=10**6, download_bytes=10**6) for s in sites
            }
            outs = cluster.run(work)
            outcomes += [outs[k] for k in sorted(outs)]
            readings += [cluster.telemetry(s.site_id) for s in sites]
            cluster.advance(max(o.duration_s for o in outs.values()) + 600.0)
        return outcomes, readings

    assert play(7) == play(7)
    a, b = play(7), play(8)
    assert [o.duration_s for o in a[0]] != [o.duration_s for o in b[0]]
    assert a[1] != b[1]


def test_reading_telemetry_does_not_change_what_happens() -> None:
    sites = heterogeneous_consortium(6, seed=1)
    quiet, curious = SimCluster(sites, 5), SimCluster(sites, 5)
    for round_ in range(5):
        work = {s.site_id: Work(100, 64) for s in sites}
        if round_ % 2:
            for s in sites:
                curious.telemetry(s.site_id)
                curious.devices(s.site_id)
        a, b = quiet.run(work), curious.run(work)
        assert a == b
        quiet.advance(137.0)
        curious.advance(137.0)
    assert [quiet.telemetry(s.site_id) for s in sites] == [
        curious.telemetry(s.site_id) for s in sites
    ]


def test_a_hot_device_throttles_and_slows_down() -> None:
    # T4 at full load: 80 C in a nominal room, no throttling; 25 C hotter it settles at
    # (63 + 42 + 42 * 0.05 * 85) / 3.1 = 91.5 C, throttle factor 0.68
    work = {"s": Work(2000, 64)}  # 128,000 examples: 400 s on a cool T4 at 80 % share
    cool = exact([site(devices=("t4",))])
    hot = exact([site(devices=("t4",), ambient_offset_c=25.0)])
    cool_out, hot_out = cool.run(work)["s"], hot.run(work)["s"]
    assert cool_out.compute_s == pytest.approx(400.0)
    assert hot_out.compute_s > 1.25 * cool_out.compute_s

    cool.advance(200.0)  # mid-training: the device is busy and heating
    hot.advance(200.0)
    cool_t, hot_t = cool.telemetry("s"), hot.telemetry("s")
    assert cool_t["device_utilization_percent"] == hot_t["device_utilization_percent"] == 100.0
    assert (
        cool_t["device_temperature_c"]
        < PROFILES["t4"].throttle_temp_c
        < hot_t["device_temperature_c"]
    )
    assert cool.throttle("s") == 1.0 and hot.throttle("s") < 0.8
    assert cool_t["device_power_w"] == pytest.approx(70.0)  # the limit, unthrottled
    assert hot_t["device_power_w"] < 0.8 * 70.0  # clocks down, power down

    hot.advance(3600.0)  # idle for an hour: cools back to 38 + 25 + 42 * 0.2
    assert hot.telemetry("s")["device_temperature_c"] == pytest.approx(71.4, abs=0.1)
    assert hot.throttle("s") == 1.0


def test_a_saturating_burst_makes_work_wait_and_last_longer() -> None:
    bursty = LoadPattern(
        base_percent=10.0,
        peak_percent=0.0,
        bursts_per_hour=1.0,
        burst_min_percent=90.0,
        burst_max_percent=95.0,
        noise_percent=0.0,
    )
    calm = replace(bursty, bursts_per_hour=0.0)
    cluster = exact([site(load=bursty)], seed=4)
    baseline = exact([site(load=calm)], seed=4)
    load = cluster._state("s").devices[0].load
    start, end, _ = next(b for h in range(48) for b in load.bursts_in_hour(h) if b[1] - b[0] > 120)
    cluster.advance(start + 30.0)  # in the middle of the burst
    baseline.advance(start + 30.0)
    assert cluster.telemetry("s")["background_load_percent"] >= 90.0
    out = cluster.run({"s": Work(100, 64)})["s"]
    base = baseline.run({"s": Work(100, 64)})["s"]
    free_at = load.next_below(start + 30.0, 90.0, 1800.0)
    assert out.started_after_s == pytest.approx(free_at - (start + 30.0))
    assert out.started_after_s > 0.0 and base.started_after_s == 0.0
    assert out.duration_s > base.duration_s + out.started_after_s - 1e-9


def test_later_work_queues_behind_earlier_work_on_the_same_device() -> None:
    cluster = exact([site()])
    first = cluster.run({"s": Work(100, 64)})["s"]  # 4 s
    second = cluster.run({"s": Work(100, 64)})["s"]  # the clock has not moved
    assert second.started_after_s == pytest.approx(first.compute_s)
    assert second.duration_s == pytest.approx(2 * first.compute_s)
    cluster.advance(10.0)
    assert cluster.run({"s": Work(100, 64)})["s"].started_after_s == 0.0


def test_a_dropout_says_when_and_its_parts_add_up() -> None:
    cluster = SimCluster([site(failure_prob=1.0)], 9)
    out = cluster.run({"s": Work(100, 64, upload_bytes=10**8, download_bytes=10**8)})["s"]
    assert out.failed
    assert out.reason is not None
    match = re.fullmatch(r"site went offline at \+(\d+\.\d) s", out.reason)
    assert match, out.reason
    assert float(match.group(1)) == pytest.approx(out.duration_s, abs=0.05)
    assert out.network_s + out.started_after_s + out.compute_s == pytest.approx(out.duration_s)
    cluster.advance(out.duration_s + 60.0)
    assert "last_round_seconds" not in cluster.telemetry("s")  # nothing completed


def test_failures_follow_the_failure_probability() -> None:
    cluster = SimCluster([site(f"s{i}", failure_prob=0.1) for i in range(20)], 2)
    failed = 0
    for _ in range(25):
        failed += sum(
            o.failed for o in cluster.run({f"s{i}": Work(10, 8) for i in range(20)}).values()
        )
        cluster.advance(60.0)
    assert 30 <= failed <= 70  # 500 draws at 0.1: 50 expected, sd 6.7


def test_work_that_does_not_fit_in_memory_fails() -> None:
    cluster = exact([site(devices=("t4",))])  # 15,360 MiB, 20 % load holds 0.02 + 0.7 * 0.2 of it
    out = cluster.run({"s": Work(10, 8, memory_mib=15_000)})["s"]
    assert out.failed and out.compute_s == 0.0
    assert out.reason == (
        "out of device memory on Tesla T4 (device 0): the work needs 15000 MiB, 12902 MiB free"
    )


def test_telemetry_in_the_shared_keys() -> None:
    cluster = exact([site("gpu", ("a100", "t4")), site("cpu", ("cpu",), host_memory_mib=131_072.0)])
    gpu, cpu = cluster.telemetry("gpu"), cluster.telemetry("cpu")
    assert SHARED_KEYS | {"device_power_w", "device_power_limit_w"} == set(gpu)
    assert set(cpu) == SHARED_KEYS  # like the CPU adapter: no power readings
    assert gpu["background_load_percent"] == pytest.approx(20.0)
    assert gpu["device_utilization_percent"] == pytest.approx(20.0)  # idle: its own workloads only
    assert gpu["relative_throughput"] == 1.0 and gpu["num_devices"] == 2.0
    assert gpu["device_memory_total_mib"] == 40_960 and gpu["device_power_limit_w"] == 400
    assert gpu["device_power_w"] == pytest.approx(55 + 345 * 0.2)
    assert cpu["device_memory_total_mib"] == cpu["mem_total_mib"] == 131_072.0
    assert cpu["cpu_util_percent"] == cpu["device_utilization_percent"]
    assert cluster.telemetry("gpu", device=1)["relative_throughput"] == 0.2

    out = cluster.run({"gpu": Work(100, 64, upload_bytes=1000, download_bytes=3000)})["gpu"]
    assert "last_round_seconds" not in cluster.telemetry("gpu")  # still running
    cluster.advance(out.duration_s)
    after = cluster.telemetry("gpu")
    assert after["last_round_seconds"] == pytest.approx(4.0, rel=1e-3)
    assert after["net_bytes"] == 4000.0


def test_devices_lists_the_pool() -> None:
    cluster = exact([site(devices=("a100", "a100", "t4"))])
    cluster.migrate("s", 2)
    pool = cluster.devices("s")
    assert [d["device_index"] for d in pool] == [0.0, 1.0, 2.0]
    assert [d["current"] for d in pool] == [0.0, 0.0, 1.0]
    assert [d["relative_throughput"] for d in pool] == [1.0, 1.0, 0.2]
    assert all("device_temperature_c" in d for d in pool)


def test_migrate_moves_the_work_and_checks_the_index() -> None:
    cluster = exact([site(devices=("a100", "t4"))])
    assert cluster.current_device("s") == 0
    cluster.migrate("s", 1)
    out = cluster.run({"s": Work(100, 64)})["s"]
    assert out.device == 1 and out.compute_s == pytest.approx(20.0)  # the T4: 5x slower
    explicit = cluster.run({"s": Work(100, 64, device=0)})["s"]
    assert explicit.device == 0 and explicit.compute_s == pytest.approx(4.0)
    with pytest.raises(
        ValueError,
        match=r"site 's' has 2 device\(s\) \(indices 0\.\.1: a100, t4\); found device index 2",
    ):
        cluster.migrate("s", 2)
    with pytest.raises(ValueError, match="found device index -1"):
        cluster.run({"s": Work(1, 1, device=-1)})
    with pytest.raises(ValueError, match="unknown site 'nope'; sites: s"):
        cluster.migrate("nope", 0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown device profile 'v100'"):
        SimSite("s", ("v100",), 10)
    with pytest.raises(ValueError, match="device pool is empty"):
        SimSite("s", (), 10)
    with pytest.raises(ValueError, match=r"failure_prob must be in \[0, 1\]"):
        SimSite("s", ("t4",), 10, failure_prob=1.5)
    with pytest.raises(ValueError, match=r"duplicates \['s'\]"):
        SimCluster([site(), site()], 0)
    with pytest.raises(ValueError, match="only moves forward"):
        exact([site()]).advance(-1.0)
    with pytest.raises(ValueError, match="examples_per_step >= 1"):
        Work(10, 0)


def test_sites_accept_a_list_pool() -> None:
    assert SimSite("s", ["t4", "t4"], 10).devices == ("t4", "t4")  # type: ignore[arg-type]


def test_heterogeneous_consortium() -> None:
    sites = heterogeneous_consortium(20, seed=11)
    assert sites == heterogeneous_consortium(20, seed=11)
    assert sites != heterogeneous_consortium(20, seed=12)
    assert [s.site_id for s in sites] == [f"bank-{i:02d}" for i in range(1, 21)]
    kinds = [set(s.devices) for s in sites]
    assert set().union(*kinds) == set(PROFILES)  # every profile appears
    fast = sum(bool(k & {"h100", "mi300x"}) for k in kinds)
    many = sum(k <= {"t4"} or k == {"cpu"} for k in kinds)
    assert fast == 2 and many == 12  # 10 % fast; 30 % T4-only and 30 % CPU-only
    assert all(1 <= len(s.devices) <= 4 for s in sites)
    sizes = [s.num_train_examples for s in sites]
    assert 2000 <= min(sizes) and max(sizes) <= 20_000 and max(sizes) / min(sizes) > 4
    assert len({s.tz_offset_h for s in sites}) >= 5


def test_candidates_carry_telemetry() -> None:
    cluster = exact([site("b"), site("a", ("t4",))])
    cands = cluster.candidates()
    assert [c.site_id for c in cands] == ["a", "b"]
    assert all(isinstance(c, Candidate) for c in cands)
    assert cands[0].node_id == 1 and cands[0].num_train_examples == 1000
    assert cands[0].readings == cluster.telemetry("a")
