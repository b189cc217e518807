"""Task fit filter: training, fine-tuning and inference need different free memory and devices."""

from __future__ import annotations

import math
from collections.abc import Mapping

from scheduling.base import Candidate
from scheduling.framework import TASK_KINDS, FilterPlugin, FilterStatus, SchedulingContext

DEFAULT_MIN_FREE_MEMORY_MIB: dict[str, float] = {
    "training": 4096.0,  # model, optimizer state, activations of a batch
    "fine-tuning": 2048.0,  # fewer trainable parameters, smaller batches
    "inference": 512.0,  # weights and one batch of activations
}
"""Free memory each task kind needs by default: on the device, or on the host for CPU work."""

NEEDS_DEVICE: dict[str, bool] = {"training": True, "fine-tuning": True, "inference": False}
"""Whether a task kind needs an accelerator unless ``allow_cpu`` is set (inference never does)."""


def has_device(readings: Mapping[str, float]) -> bool:
    """Whether a site reports an accelerator: ``num_devices > 0``, or device memory readings."""
    if "num_devices" in readings:
        return readings["num_devices"] > 0
    return "device_memory_total_mib" in readings


def free_memory_mib(readings: Mapping[str, float], on_device: bool) -> tuple[float, str] | None:
    """Free memory (MiB) and how it was computed, on the device or the host; ``None`` if unknown."""
    used_key, total_key = (
        ("device_memory_used_mib", "device_memory_total_mib")
        if on_device
        else ("mem_used_mib", "mem_total_mib")
    )
    if used_key not in readings or total_key not in readings:
        return None
    used, total = float(readings[used_key]), float(readings[total_key])
    return total - used, f"{used:.1f} used of {total:.1f} MiB"


def _per_kind(
    arg: str, given: Mapping[str, float] | float | None, base: Mapping[str, float]
) -> dict[str, float]:
    """Per-kind values: a mapping overrides the kinds it names; a single number, every kind."""
    merged = dict(base)
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        given = {kind: float(given) for kind in TASK_KINDS}
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(
            f"task-fit: {arg} must be a number of MiB or a mapping task kind -> MiB; "
            f"found {given!r}"
        )
    for kind, value in (given or {}).items():
        if kind not in TASK_KINDS:
            raise ValueError(
                f"task-fit: {arg} has unknown task kind {kind!r}; expected: {', '.join(TASK_KINDS)}"
            )
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"task-fit: {arg}[{kind!r}] must be a finite number >= 0; found {value!r}"
            )
        merged[kind] = float(value)
    return merged


class TaskFitFilter(FilterPlugin):
    """Reject a site that cannot run this round's task kind; report every reason.

    Training and fine-tuning need an accelerator (a CPU-only site passes only with
    ``allow_cpu``); inference runs anywhere. The free memory a kind needs is checked on the
    device, or on the host when the site works on its CPU. Absent readings are not a rejection.

    Args:
        min_free_memory_mib: Free MiB per task kind (or one number for every kind), merged over
            :data:`DEFAULT_MIN_FREE_MEMORY_MIB` (training 4096, fine-tuning 2048, inference 512).
        allow_cpu: Let CPU-only sites train and fine-tune (default ``False``).
        min_relative_throughput: Least ``relative_throughput`` (A100 = 1.0) per task kind
            (default: none); a site that does not report it is not rejected.
    """

    name = "task-fit"

    def __init__(
        self,
        min_free_memory_mib: Mapping[str, float] | float | None = None,
        allow_cpu: bool = False,
        min_relative_throughput: Mapping[str, float] | None = None,
    ) -> None:
        self.min_free_memory_mib = _per_kind(
            "min_free_memory_mib", min_free_memory_mib, DEFAULT_MIN_FREE_MEMORY_MIB
        )
        self.allow_cpu = bool(allow_cpu)
        self.min_relative_throughput = _per_kind(
            "min_relative_throughput", min_relative_throughput, {}
        )

    def filter(self, candidate: Candidate, ctx: SchedulingContext) -> FilterStatus:
        r = candidate.readings
        task = ctx.task
        reasons: list[str] = []
        device = has_device(r)
        if not device and NEEDS_DEVICE[task] and not self.allow_cpu:
            reasons.append(
                f"{task} needs a GPU; the site reports none (CPU-only); "
                f"set allow_cpu to run {task} on CPU-only sites"
            )
        need = self.min_free_memory_mib[task]
        free = free_memory_mib(r, on_device=device)
        if free is not None and free[0] < need:
            where = "device" if device else "host"
            reasons.append(
                f"{task} needs {need:.1f} MiB free {where} memory; found {free[0]:.1f} MiB "
                f"({free[1]})"
            )
        least = self.min_relative_throughput.get(task)
        speed = r.get("relative_throughput")
        if least is not None and speed is not None and speed < least:
            reasons.append(
                f"{task} needs relative throughput >= {least:.2f} (A100 = 1.0); found {speed:.2f}"
            )
        return FilterStatus(tuple(reasons))

    def __repr__(self) -> str:
        return (
            f"TaskFitFilter(min_free_memory_mib={self.min_free_memory_mib}, "
            f"allow_cpu={self.allow_cpu}, min_relative_throughput={self.min_relative_throughput})"
        )
