"""Round-duration traces from the simulated cluster: the demand predictor's training and evaluation data."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduling.sim.cluster import SimCluster, Work, heterogeneous_consortium
from scheduling.sim.load import derive_seed

TRAIN_SEEDS: tuple[int, ...] = tuple(range(1000, 1032))
"""Seeds of the traces (and environment episodes) that models learn from."""

EVAL_SEEDS: tuple[int, ...] = tuple(range(9000, 9008))
"""Seeds kept for evaluation only; never trained on."""

if set(TRAIN_SEEDS) & set(EVAL_SEEDS):  # not an assert: it must hold under python -O too
    raise RuntimeError(
        f"TRAIN_SEEDS and EVAL_SEEDS overlap in {sorted(set(TRAIN_SEEDS) & set(EVAL_SEEDS))}; "
        "make them disjoint"
    )


def seed_split(seed: int) -> str | None:
    """``"train"`` or ``"eval"`` for a seed of either list, ``None`` for any other seed."""
    if seed in TRAIN_SEEDS:
        return "train"
    if seed in EVAL_SEEDS:
        return "eval"
    return None


def check_seed(seed: int, split: str) -> None:
    """Refuse a seed that belongs to the other split.

    Args:
        seed: The seed about to be used.
        split: ``"train"`` or ``"eval"``: what the seed is used for.

    Raises:
        ValueError: ``split`` is neither, or ``seed`` is one of the other split's seeds.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval'; found {split!r}")
    other = EVAL_SEEDS if split == "train" else TRAIN_SEEDS
    if seed in other:
        raise ValueError(
            f"seed {seed} is one of the {'eval' if split == 'train' else 'train'} seeds; "
            f"a {split} run must not use it (pick from {split.upper()}_SEEDS or a seed in neither)"
        )


@dataclass(frozen=True)
class TraceRecord:
    """One site's part in one simulated round.

    Attributes:
        seed: Seed of the trace.
        site_id: The site.
        round: Round number, from 1.
        t_s: Virtual time the round started.
        device: Pool index the work ran on.
        readings: The site's telemetry just before the round (shared telemetry keys).
        steps: Local steps of the work.
        examples_per_step: Batch size of the work.
        upload_bytes: Bytes the update took.
        download_bytes: Bytes the model took.
        started_after_s: Measured wait for the device.
        compute_s: Measured training time.
        network_s: Measured transfer time.
        duration_s: Measured duration (the prediction target).
        failed: Whether the site dropped out (then ``duration_s`` is when).
        reason: Why it failed.
    """

    seed: int
    site_id: str
    round: int
    t_s: float
    device: int
    readings: Mapping[str, float]
    steps: int
    examples_per_step: int
    upload_bytes: int
    download_bytes: int
    started_after_s: float
    compute_s: float
    network_s: float
    duration_s: float
    failed: bool = False
    reason: str | None = field(default=None)


def generate_trace(
    seed: int,
    rounds: int,
    n_sites: int = 20,
    *,
    participation: float = 0.7,
    max_gap_s: float = 900.0,
    migrate_prob: float = 0.05,
) -> list[TraceRecord]:
    """Simulate ``rounds`` rounds of :func:`~scheduling.sim.cluster.heterogeneous_consortium` and record each site's part.

    Each round, every site takes part with probability ``participation`` and gets seeded
    work (10-200 steps of 32-128 examples; a model of 1-16 MB each way); a site with
    several devices sometimes migrates to another. The clock moves by the round's
    duration plus an idle gap of up to ``max_gap_s``, so traces cover days and nights.

    Args:
        seed: Seed of the consortium, the cluster and the work.
        rounds: Number of rounds (>= 1).
        n_sites: Sites in the consortium.
        participation: Chance a site trains in a round, in (0, 1].
        max_gap_s: Longest idle time between rounds, seconds.
        migrate_prob: Chance per round that a multi-device site moves to another device.

    Returns:
        Records ordered by round, then site id.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; found {rounds}")
    if not 0 < participation <= 1:
        raise ValueError(f"participation must be in (0, 1]; found {participation}")
    cluster = SimCluster(heterogeneous_consortium(n_sites, seed), seed)
    rng = random.Random(derive_seed("trace", seed, n_sites))
    model_bytes = int(10 ** rng.uniform(6.0, math.log10(16e6)))
    records: list[TraceRecord] = []
    for round_ in range(1, rounds + 1):
        work: dict[str, Work] = {}
        for site_id in cluster.site_ids:
            pool = len(cluster.site(site_id).devices)
            if pool > 1 and rng.random() < migrate_prob:
                cluster.migrate(site_id, rng.randrange(pool))
            steps = rng.choice((10, 20, 50, 100, 200))
            batch = rng.choice((32, 64, 128))
            if rng.random() < participation:
                work[site_id] = Work(
                    steps, batch, upload_bytes=model_bytes, download_bytes=model_bytes
                )
        if not work:
            cluster.advance(rng.uniform(0.0, max_gap_s))
            continue
        before = {site_id: cluster.telemetry(site_id) for site_id in work}
        outcomes = cluster.run(work)
        for site_id, out in outcomes.items():
            w = work[site_id]
            records.append(
                TraceRecord(
                    seed=seed,
                    site_id=site_id,
                    round=round_,
                    t_s=cluster.now,
                    device=out.device,
                    readings=before[site_id],
                    steps=w.steps,
                    examples_per_step=w.examples_per_step,
                    upload_bytes=w.upload_bytes,
                    download_bytes=w.download_bytes,
                    started_after_s=out.started_after_s,
                    compute_s=out.compute_s,
                    network_s=out.network_s,
                    duration_s=out.duration_s,
                    failed=out.failed,
                    reason=out.reason,
                )
            )
        cluster.advance(max(o.duration_s for o in outcomes.values()) + rng.uniform(0.0, max_gap_s))
    return records


FEATURE_NAMES: tuple[str, ...] = (
    "utilization",  # device_utilization_percent / 100
    "background",  # background_load_percent / 100
    "temperature",  # device_temperature_c / 100
    "power_fraction",  # device_power_w / device_power_limit_w (0 without power readings)
    "memory_fraction",  # device_memory_used_mib / device_memory_total_mib
    "log_throughput",  # ln(relative_throughput) (0: unknown, as an A100)
    "log_devices",  # ln(1 + num_devices)
    "has_last_round",  # 1 once the site reported last_round_seconds, else 0
    "log_last_round_s",  # ln(1 + last_round_seconds) (0 before the first round)
    "log_net_bytes",  # ln(1 + net_bytes) (0 before the first round)
    "log_examples",  # ln(1 + steps * examples_per_step)
    "log_ideal_compute",  # ln(1 + examples / (relative_throughput * max(0.05, 1 - background)))
    "log_transfer_bytes",  # ln(1 + upload_bytes + download_bytes)
    "cpu_util",  # cpu_util_percent / 100
)
"""Names of :func:`features`' values, in order; a missing reading gives 0 (see the comments)."""


def features(
    readings: Mapping[str, float],
    steps: int,
    examples_per_step: int,
    upload_bytes: int = 0,
    download_bytes: int = 0,
) -> np.ndarray:
    """Predictor input for one site and one piece of work, ``float32 [len(FEATURE_NAMES)]``.

    Works on live telemetry as well as on trace records, so a predictor sees the same
    features in training and in service.

    Args:
        readings: Telemetry in the shared keys (any may be missing).
        steps: Local steps planned.
        examples_per_step: Batch size planned.
        upload_bytes: Bytes the update will take.
        download_bytes: Bytes the model will take.
    """

    def get(key: str) -> float:
        value = readings.get(key)
        return 0.0 if value is None or not math.isfinite(value) else float(value)

    throughput = get("relative_throughput") or 1.0
    background = get("background_load_percent") / 100.0
    power_limit = get("device_power_limit_w")
    memory_total = get("device_memory_total_mib")
    examples = steps * examples_per_step
    has_last = "last_round_seconds" in readings
    values = (
        get("device_utilization_percent") / 100.0,
        background,
        get("device_temperature_c") / 100.0,
        get("device_power_w") / power_limit if power_limit > 0 else 0.0,
        get("device_memory_used_mib") / memory_total if memory_total > 0 else 0.0,
        math.log(throughput),
        math.log1p(get("num_devices")),
        1.0 if has_last else 0.0,
        math.log1p(max(0.0, get("last_round_seconds"))),
        math.log1p(max(0.0, get("net_bytes"))),
        math.log1p(examples),
        math.log1p(examples / (throughput * max(0.05, 1.0 - background))),
        math.log1p(upload_bytes + download_bytes),
        get("cpu_util_percent") / 100.0,
    )
    return np.asarray(values, dtype=np.float32)


def trace_features(record: TraceRecord) -> np.ndarray:
    """:func:`features` of a trace record (the telemetry before its round and its work)."""
    return features(
        record.readings,
        record.steps,
        record.examples_per_step,
        record.upload_bytes,
        record.download_bytes,
    )


def trace_arrays(
    records: Sequence[TraceRecord], include_failed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets of many records: ``X float32 [n, F]``, ``y float32 [n]`` (duration, seconds).

    Failed records are left out unless ``include_failed`` (their duration is when the
    site dropped out, not how long the work takes).
    """
    kept = [r for r in records if include_failed or not r.failed]
    x = np.zeros((len(kept), len(FEATURE_NAMES)), dtype=np.float32)
    for i, r in enumerate(kept):
        x[i] = trace_features(r)
    y = np.asarray([r.duration_s for r in kept], dtype=np.float32)
    return x, y


def by_site(records: Sequence[TraceRecord]) -> dict[str, list[TraceRecord]]:
    """Records per site id, each list in round order (sequences for a recurrent predictor)."""
    out: dict[str, list[TraceRecord]] = {}
    for r in sorted(records, key=lambda r: (r.site_id, r.round)):
        out.setdefault(r.site_id, []).append(r)
    return out
