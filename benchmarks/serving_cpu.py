"""Where the CPU went while ``benchmarks/serving.py`` ran: the service, the load generator, everything else; the machine and checkout measured.

On a shared machine the service gets what the other processes leave: each phase records
the service's CPU seconds (psutil, with its children), the load generator's (this
process), the whole machine's busy seconds and the rest, and the busiest other processes.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar


class _Measured(Protocol):
    @property
    def client_cpu_s(self) -> float: ...


P = TypeVar("P", bound=_Measured)


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or iowait)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its children so far (``None`` if gone)."""
    import psutil

    try:
        p = psutil.Process(pid)
        total = sum(p.cpu_times()[:2])
        for child in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return float(total)
    except psutil.Error:
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (``None`` if gone)."""
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def measured(pid: int, run: Callable[[], P]) -> tuple[P, dict[str, Any]]:
    """Run ``run()``; the service's (``pid``), the machine's and everything else's CPU seconds over it.

    ``other_processes_cpu_s``: busy CPU of the whole machine less the service and this
    process's load generator: other work sharing the cores.
    """
    srv0, busy0, t0 = process_cpu_s(pid), busy_cpu_s(), time.perf_counter()
    phase = run()
    srv1, busy1, wall = process_cpu_s(pid), busy_cpu_s(), time.perf_counter() - t0
    server = None if srv0 is None or srv1 is None else srv1 - srv0
    busy = busy1 - busy0
    client = phase.client_cpu_s
    others = None if server is None else max(0.0, busy - server - client)
    return phase, {
        "wall_s": wall,
        "server_cpu_s": server,
        "server_cpu_share_of_one_core": None if server is None else server / wall,
        "machine_busy_cpu_s": busy,
        "other_processes_cpu_s": others,
        "other_processes_share_of_one_core": None if others is None else others / wall,
    }


def cpu_by_process() -> dict[tuple[int, float], tuple[float, str]]:
    """CPU seconds so far of every process, by ``(pid, create time)``, with a short command line."""
    import psutil

    out: dict[tuple[int, float], tuple[float, str]] = {}
    for p in psutil.process_iter(["pid", "create_time", "cpu_times", "cmdline", "name"]):
        info = p.info
        times = info.get("cpu_times")
        if times is None:
            continue
        cmd = " ".join(info.get("cmdline") or []) or str(info.get("name") or "")
        out[(int(info["pid"]), float(info["create_time"]))] = (
            float(times.user + times.system),
            cmd[:160],
        )
    return out


def busiest(
    snapshots: Sequence[tuple[float, Mapping[tuple[int, float], tuple[float, str]]]],
    skip: set[int],
    n: int = 6,
) -> list[dict[str, Any]]:
    """The ``n`` processes (not in ``skip``) that used the most CPU over ``(time, snapshot)`` pairs.

    Each process counts the CPU it used between consecutive snapshots it was alive at both
    of, so one that lived through at least one interval is seen; its share is its CPU
    seconds over the time from the first snapshot to the last (1.0 = one core).
    """
    used: dict[tuple[int, float], float] = {}
    names: dict[tuple[int, float], str] = {}
    for (_, before), (_, after) in zip(snapshots, snapshots[1:], strict=False):
        for key, (cpu, _) in before.items():
            if key in after and key[0] not in skip:
                used[key] = used.get(key, 0.0) + after[key][0] - cpu
                names[key] = after[key][1]
    seconds = max(snapshots[-1][0] - snapshots[0][0], 1e-9) if snapshots else 1.0
    top = sorted(used.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return [
        {
            "pid": key[0],
            "cpu_s": round(cpu, 2),
            "share_of_one_core": round(cpu / seconds, 3),
            "command": names[key],
        }
        for key, cpu in top
        if cpu > 0.0
    ]


# --------------------------------------------------------------------------- the machine and checkout


def machine() -> dict[str, Any]:
    """The CPU, its load and the versions that matter."""
    import onnxruntime as ort

    import fedcore

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "fedcore": fedcore.__version__,
    }


def git_state(root: Path) -> dict[str, Any]:
    """HEAD and the paths that differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_paths": changed}
