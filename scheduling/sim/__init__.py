"""Trace-driven cluster simulator: device profiles, background load, a virtual-clock cluster, traces, a scaling environment.

Sites own heterogeneous device pools (:mod:`~scheduling.sim.profiles`) shared with their
own workloads (:mod:`~scheduling.sim.load`); :class:`SimCluster` runs federated work on
them under a virtual clock (:mod:`~scheduling.sim.cluster`); :func:`generate_trace` records
what it measured for the duration predictor (:mod:`~scheduling.sim.traces`), and
:class:`ScalingEnv` is the scale/migrate policy's training ground (:mod:`~scheduling.sim.env`).
Everything is seeded; :data:`TRAIN_SEEDS` and :data:`EVAL_SEEDS` are disjoint.

The environment's names load on first use: they need :mod:`scheduling.policy`, whose
package imports torch, and the cluster alone should not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scheduling.sim.cluster import (
    Outcome,
    SimCluster,
    SimSite,
    Work,
    heterogeneous_consortium,
    training_rate,
)
from scheduling.sim.load import BackgroundLoad, LoadPattern, daily_load, derive_seed, local_hour
from scheduling.sim.profiles import PROFILES, VENDORS, DeviceProfile, get_profile
from scheduling.sim.traces import (
    EVAL_SEEDS,
    FEATURE_NAMES,
    TRAIN_SEEDS,
    TraceRecord,
    features,
    generate_trace,
    trace_arrays,
    trace_features,
)

if TYPE_CHECKING:
    from scheduling.sim.env import ScalingEnv, period_reward, round_progress

_LAZY = ("ScalingEnv", "period_reward", "round_progress")

__all__ = [
    "EVAL_SEEDS",
    "FEATURE_NAMES",
    "PROFILES",
    "TRAIN_SEEDS",
    "VENDORS",
    "BackgroundLoad",
    "DeviceProfile",
    "LoadPattern",
    "Outcome",
    "ScalingEnv",
    "SimCluster",
    "SimSite",
    "TraceRecord",
    "Work",
    "daily_load",
    "derive_seed",
    "features",
    "generate_trace",
    "get_profile",
    "heterogeneous_consortium",
    "local_hour",
    "period_reward",
    "round_progress",
    "trace_arrays",
    "trace_features",
    "training_rate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from scheduling.sim import env

        return getattr(env, name)
    raise AttributeError(f"module 'scheduling.sim' has no attribute {name!r}")
