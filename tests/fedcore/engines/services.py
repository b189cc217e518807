"""Helpers of the crash and operator tests: services started as an operator starts them, and `ps`.

Tests cannot import ``conftest.py`` (pytest runs with ``--import-mode=importlib``), so what
several test modules share lives here. The process checks read ``ps -eo pid,ppid,pgid,args``,
which is what an operator would look at, rather than psutil.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fedcore.engines.test_deployment import ProcessWatch, wait_for

#: Programs a fedcore deployment runs under its services: Flower's, and fedcore's own worker.
FLOWER_PROGRAMS = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    "flower_runtime superlink",  # fedcore's SuperLink launcher (Control API on loopback only)
    "flower_runtime",  # fedcore's SuperNode wrapper and ClientApp worker (python -m ...)
)


# --------------------------------------------------------------------------- ps


@dataclass(frozen=True)
class PsRow:
    """One line of ``ps -eo pid,ppid,pgid,stat,args``."""

    pid: int
    ppid: int
    pgid: int
    stat: str
    args: str

    @property
    def zombie(self) -> bool:
        """Exited, waiting for its parent to reap it: no longer runs anything."""
        return self.stat.startswith("Z")

    def program(self) -> str | None:
        """Which of :data:`FLOWER_PROGRAMS` this process runs, if any."""
        return next((name for name in FLOWER_PROGRAMS if name in self.args), None)

    def __str__(self) -> str:
        return f"{self.pid:>7} {self.ppid:>7} {self.pgid:>7} {self.stat:<4} {self.args[:200]}"


def ps() -> list[PsRow]:
    """Every process on the machine, as ``ps -eo pid,ppid,pgid,stat,args`` shows it."""
    done = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,pgid=,stat=,args="],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows = []
    for line in done.stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4:
            continue
        pid, ppid, pgid, stat = parts[:4]
        rows.append(PsRow(int(pid), int(ppid), int(pgid), stat, parts[4] if len(parts) > 4 else ""))
    return rows


def descendants(rows: Iterable[PsRow], pid: int) -> list[PsRow]:
    """The processes below ``pid`` in the ``ppid`` tree of ``rows`` (not ``pid`` itself)."""
    children: dict[int, list[PsRow]] = {}
    for row in rows:
        children.setdefault(row.ppid, []).append(row)
    found: list[PsRow] = []
    todo = [pid]
    while todo:
        for child in children.pop(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


class ServiceTree:
    """Everything ``ps`` showed below one service while it ran: what "belonged" to it.

    Flower's processes can be re-parented (to init or a subreaper) once their parent dies,
    so a tree read after a crash misses them; this samples the tree every 0.25 s from the
    start, and :meth:`left_running` looks each remembered process up again by PID and
    command line (a PID reused by another program does not count).
    """

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.rows: dict[int, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        """Remember the service's current descendants."""
        for row in descendants(ps(), self.pid):
            if row.args:
                self.rows.setdefault(row.pid, set()).add(row.args)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (OSError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.25)

    def stop_sampling(self) -> None:
        """Stop sampling (call it right after the service was killed: its tree is complete)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def programs(self) -> set[str]:
        """Which :data:`FLOWER_PROGRAMS` ran below the service."""
        return {
            name
            for args in self.rows.values()
            for a in args
            for name in FLOWER_PROGRAMS
            if name in a
        }

    def running_now(self) -> list[PsRow]:
        """The remembered processes that ``ps`` still shows running (zombies excluded)."""
        return [
            row
            for row in ps()
            if row.pid in self.rows and row.args in self.rows[row.pid] and not row.zombie
        ]

    def left_running(self, within: float) -> list[PsRow]:
        """What still runs after up to ``within`` seconds (polled); ``[]`` once all are gone."""
        self.stop_sampling()
        deadline = time.monotonic() + within
        while True:
            alive = self.running_now()
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.25)


def ps_report(rows: Iterable[PsRow]) -> str:
    """Rows as ``ps`` prints them, for assertion messages."""
    return "\n".join(["    PID    PPID    PGID STAT ARGS", *(str(r) for r in rows)])


# --------------------------------------------------------------------------- services


def text(path: Path) -> str:
    """A log's text so far ("" if it does not exist yet)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def start(watch: ProcessWatch, log: Path, argv: list[str], *, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a command in its own session, its output appended to ``log``, watched by PID."""
    with log.open("ab") as fh:
        popen = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    watch.roots.append(popen)
    return popen


def module(name: str, *args: str) -> list[str]:
    """``python -m NAME ARGS`` with this interpreter."""
    return [sys.executable, "-m", name, *args]


def coordinator_argv(
    scenario: Path,
    kit: Path,
    address: str,
    state: Path,
    out: Path,
    *extra: str,
) -> list[str]:
    """``fed-coordinator start`` with TLS and node keys from ``kit`` (its `--out`, `--state`)."""
    return module(
        "fedcore.cli.coordinator_cmd",
        "start",
        "--scenario",
        str(scenario),
        "--kit",
        str(kit),
        "--listen",
        address,
        "--state",
        str(state),
        "--out",
        str(out),
        "--site-timeout",
        "300",
        *extra,
    )


def client_argv(site: Path, kit: Path, address: str) -> list[str]:
    """``fed-client start`` of one site, with its kit."""
    return module(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(site),
        "--kit",
        str(kit),
        "--coordinator",
        address,
    )


def rounds_of(out: Path) -> list[dict[str, Any]]:
    """``OUT/rounds.jsonl`` as written so far (complete lines only)."""
    rows = []
    for line in text(out / "rounds.jsonl").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def audit_entries(out: Path) -> list[dict[str, Any]]:
    """``OUT/audit.jsonl``'s entries, in order."""
    return [json.loads(line) for line in text(out / "audit.jsonl").splitlines() if line.strip()]


def stop(popen: subprocess.Popen[bytes], timeout: float = 240.0) -> int:
    """Stop a service as its supervisor would (SIGTERM) and wait for its exit code.

    SIGTERM, not SIGINT: a process started in the background by a shell without job control
    (as CI runners start the tests) inherits SIGINT ignored.
    """
    if popen.poll() is None:
        os.kill(popen.pid, signal.SIGTERM)
    return popen.wait(timeout=timeout)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, *logs: Path) -> None:
    """:func:`wait_for`, with the tails of ``logs`` in the failure message."""
    try:
        wait_for(predicate, timeout, what)
    except AssertionError as exc:
        tails = "\n".join(f"--- {p}\n{text(p)[-3000:]}" for p in logs)
        raise AssertionError(f"{exc}\n{tails}") from None
