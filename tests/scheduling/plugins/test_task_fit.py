"""Task fit filter: memory and device needs per task kind; every reason reported."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext, TaskKind
from scheduling.plugins.task_fit import TaskFitFilter, free_memory_mib, has_device


def gpu(used: float, total: float = 16384.0, **extra: float) -> dict[str, float]:
    return {"device_memory_used_mib": used, "device_memory_total_mib": total, **extra}


def cpu(used: float, total: float = 32768.0) -> dict[str, float]:
    return {
        "cpu_util_percent": 20.0,
        "mem_used_mib": used,
        "mem_total_mib": total,
        "num_devices": 0.0,
    }


def reasons(
    readings: dict[str, float], task: TaskKind, plugin: TaskFitFilter | None = None
) -> list[str]:
    status = (plugin or TaskFitFilter()).filter(
        Candidate("site", 1, 10, readings), SchedulingContext(round=1, task=task)
    )
    return list(status.reasons)


@pytest.mark.parametrize(
    ("readings", "task", "expected"),
    [
        # free 16384 - 8192 = 8192 MiB >= 4096 needed for training
        (gpu(8192.0), "training", []),
        # free 16384 - 15360 = 1024 MiB
        (
            gpu(15360.0),
            "training",
            [
                "training needs 4096.0 MiB free device memory; found 1024.0 MiB (15360.0 used of 16384.0 MiB)"
            ],
        ),
        # free 16384 - 13384 = 3000 MiB: too little to train (4096), enough to fine-tune (2048)
        (
            gpu(13384.0),
            "training",
            [
                "training needs 4096.0 MiB free device memory; found 3000.0 MiB (13384.0 used of 16384.0 MiB)"
            ],
        ),
        (gpu(13384.0), "fine-tuning", []),
        (gpu(15360.0), "inference", []),  # 1024 >= 512
        # CPU-only: inference runs anywhere, on host memory (32768 - 4096 = 28672 free)
        (cpu(4096.0), "inference", []),
        # host memory 32768 - 32512 = 256 < 512 MiB
        (
            cpu(32512.0),
            "inference",
            [
                "inference needs 512.0 MiB free host memory; found 256.0 MiB (32512.0 used of 32768.0 MiB)"
            ],
        ),
        # CPU-only and short of memory: both reasons
        (
            cpu(31000.0),
            "fine-tuning",
            [
                "fine-tuning needs a GPU; the site reports none (CPU-only); "
                "set allow_cpu to run fine-tuning on CPU-only sites",
                "fine-tuning needs 2048.0 MiB free host memory; found 1768.0 MiB (31000.0 used of 32768.0 MiB)",
            ],
        ),
        # a GPU reported without memory readings: memory unknown, not a rejection
        ({"num_devices": 1.0}, "training", []),
    ],
)
def test_default_needs(readings: dict[str, float], task: TaskKind, expected: list[str]) -> None:
    assert reasons(readings, task) == expected


def test_allow_cpu_keeps_the_memory_check() -> None:
    plugin = TaskFitFilter(allow_cpu=True)
    assert reasons(cpu(4096.0), "training", plugin) == []
    # 32768 - 30000 = 2768 < 4096
    assert reasons(cpu(30000.0), "training", plugin) == [
        "training needs 4096.0 MiB free host memory; found 2768.0 MiB (30000.0 used of 32768.0 MiB)"
    ]


def test_configured_memory_and_throughput() -> None:
    plugin = TaskFitFilter(
        min_free_memory_mib={"inference": 2048.0}, min_relative_throughput={"training": 0.5}
    )
    assert plugin.min_free_memory_mib == {
        "training": 4096.0,
        "fine-tuning": 2048.0,
        "inference": 2048.0,
    }
    # inference now needs 2048: 16384 - 15360 = 1024 fails
    assert reasons(gpu(15360.0), "inference", plugin) == [
        "inference needs 2048.0 MiB free device memory; found 1024.0 MiB (15360.0 used of 16384.0 MiB)"
    ]
    assert reasons(gpu(0.0, relative_throughput=0.3), "training", plugin) == [
        "training needs relative throughput >= 0.50 (A100 = 1.0); found 0.30"
    ]
    assert reasons(gpu(0.0, relative_throughput=0.5), "training", plugin) == []
    assert reasons(gpu(0.0), "training", plugin) == []  # speed unknown: not a rejection
    assert reasons(gpu(0.0, relative_throughput=0.3), "inference", plugin) == []  # only training


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ({"num_devices": 2.0}, True),
        ({"num_devices": 0.0, "device_memory_total_mib": 16384.0}, False),  # the count decides
        ({"device_memory_total_mib": 16384.0}, True),
        ({"cpu_util_percent": 10.0}, False),
    ],
)
def test_has_device(readings: dict[str, float], expected: bool) -> None:
    assert has_device(readings) is expected


def test_free_memory() -> None:
    assert free_memory_mib(gpu(1000.0, 3000.0), on_device=True) == (
        2000.0,
        "1000.0 used of 3000.0 MiB",
    )
    assert free_memory_mib(gpu(1000.0), on_device=False) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"min_free_memory_mib": {"serving": 1.0}},
            "task-fit: min_free_memory_mib has unknown task kind 'serving'; expected: training, fine-tuning, inference",
        ),
        (
            {"min_free_memory_mib": {"training": -1.0}},
            r"task-fit: min_free_memory_mib\['training'\] must be a finite number >= 0; found -1.0",
        ),
        (
            {"min_relative_throughput": {"inference": float("inf")}},
            "must be a finite number >= 0; found inf",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, dict[str, float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskFitFilter(**kwargs)  # type: ignore[arg-type]


def test_one_number_of_mib_applies_to_every_task_kind() -> None:
    # a scenario's plugin params are scalars: min_free_memory_mib: 1024 for every kind
    f = TaskFitFilter(min_free_memory_mib=1024)
    assert set(f.min_free_memory_mib.values()) == {1024.0}
    with pytest.raises(ValueError, match="a number of MiB or a mapping"):
        TaskFitFilter(min_free_memory_mib="lots")  # type: ignore[arg-type]
