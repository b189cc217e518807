"""Seconds per round on loopback: bare Flower (3 exchanges a round, and 1) vs ``fedcore run --engine deployment`` (plaintext, CKKS, SecAgg+) vs the inprocess engine.

Usage::

    python benchmarks/deployment.py [--quick] [--rounds N] [--exchanges E] [--setup NAME ...] --json /tmp/deployment.json

In one run, one after another on 127.0.0.1:

* ``bare-flower``: Flower 1.42 with its defaults and a trivial numpy app
  (``benchmarks/bare_flower/``, copied into a temporary app directory): one
  ``flower-superlink --insecure --disable-runtime-dependency-installation`` (in-memory
  state, subprocess isolation), one ``flower-supernode --insecure`` per site of
  ``scenarios/bank-fraud.yaml``, each with its own ``FLWR_HOME`` in a temporary
  directory and telemetry off, the app submitted with ``flwr run``. Each round its
  ServerApp sends every site ``--exchanges`` messages with ``grid.send_and_receive``
  and writes its round wall times to a file. The default, 3, is the Flower-alone round
  that the targets are defined against: a telemetry query with a tiny reply,
  ``train`` with the bank-fraud model's arrays and a reply of the same arrays,
  ``evaluate`` with the model and a small metrics reply.
* ``bare-flower-1x``: the same bare Flower app with 1 exchange a round (``train`` only),
  whatever ``--exchanges`` says: fedcore's round after the first, like for like.
  fedcore's coordinator sends a round after the first as one exchange with the sites (the
  ``train`` message carries the evaluation of the incoming model and the next round's
  telemetry); round 1 also queries telemetry, and after the last round comes one
  ``evaluate`` exchange. A SecAgg+ round is 5 exchanges: its 4 protocol stages and an
  ``evaluate``.
* ``fedcore-plaintext``, ``fedcore-ckks``, ``fedcore-secagg``: ``fedcore run
  scenarios/bank-fraud{,-ckks,-secagg}.yaml --engine deployment --rounds N --out DIR``.
  ``fedcore run`` provisions throwaway kits, so the SuperLink runs with TLS and SuperNode
  authentication; the benchmark reads the SuperLink's and SuperNodes' command lines to
  confirm it (``transport`` in the results).
* ``fedcore-inprocess``: ``fedcore run scenarios/bank-fraud.yaml --engine inprocess``,
  same rounds.

Per setup: seconds per round (the median of the rounds after the first: round 1 pays
for start-up), process starts per round (every process in the launched process trees,
polled every 0.2 s with psutil, counted once per (pid, create time) when it was created
between the end of round 1 and the end of the last round, divided by the rounds in
between, with the command names), the SuperLink's CPU seconds (user + system, last sample
before it exited; and per measured round) and, for fedcore, the final pooled PR-AUC, so
that the runs are seen to train the same model. Processes that live under 0.2 s can be
missed.

Targets: fedcore plaintext <= 0.25x ``bare-flower``'s seconds per round, CKKS
<= 0.4x, SecAgg+ <= 0.5x; fedcore deployment (plaintext) <= 5x the inprocess engine.
The JSON holds ``results`` (raw measurements per setup, the settings, and
``like_for_like``: fedcore plaintext's, CKKS's and SecAgg+'s seconds per round over
``bare-flower-1x``'s, for information, not targets) and ``targets`` (``value``, ``goal``,
``met``; ``met`` is null when a setup did not run).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import psutil
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BARE_APP = HERE / "bare_flower"
# benchmarks/scheduling.py shares its name with the `scheduling` package: keep this folder
# off the import path (fedcore is imported later, inside functions); the bare Flower app's
# folder holds nothing that shadows a package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(BARE_APP))
from bare_serverapp import message_pattern  # noqa: E402  (numpy and flwr only)

SCENARIOS = {
    "plaintext": ROOT / "scenarios" / "bank-fraud.yaml",
    "ckks": ROOT / "scenarios" / "bank-fraud-ckks.yaml",
    "secagg": ROOT / "scenarios" / "bank-fraud-secagg.yaml",
}
SETUPS = (
    "bare-flower",
    "bare-flower-1x",
    "fedcore-plaintext",
    "fedcore-ckks",
    "fedcore-secagg",
    "fedcore-inprocess",
)
#: The bare Flower setups and their exchanges per round (``None``: ``--exchanges``).
BARE_EXCHANGES: dict[str, int | None] = {"bare-flower": None, "bare-flower-1x": 1}
GOALS = {  # target name -> (numerator setup, denominator setup, limit)
    "plaintext_vs_bare": ("fedcore-plaintext", "bare-flower", 0.25),
    "ckks_vs_bare": ("fedcore-ckks", "bare-flower", 0.4),
    "secagg_vs_bare": ("fedcore-secagg", "bare-flower", 0.5),
    "deployment_vs_inprocess": ("fedcore-plaintext", "fedcore-inprocess", 5.0),
}
#: Informational ratios (not targets): name -> (fedcore setup, its exchanges in a round
#: after the first, note). The denominator is LIKE_FOR_LIKE_BASE, bare Flower's 1-exchange round.
LIKE_FOR_LIKE_BASE = "bare-flower-1x"
LIKE_FOR_LIKE = {
    "plaintext_vs_bare_1x": ("fedcore-plaintext", 1, None),
    "ckks_vs_bare_1x": ("fedcore-ckks", 1, None),
    "secagg_vs_bare_1x": (
        "fedcore-secagg",
        5,
        "fedcore's SecAgg+ round is 5 exchanges (4 protocol stages + evaluate) against "
        "bare-flower-1x's 1, so this ratio overstates its cost against Flower's",
    ),
}
POLL = 0.2
SECURITY_FLAGS = (
    "--insecure",
    "--ssl-certfile",
    "--ssl-ca-certfile",
    "--enable-supernode-auth",
    "--root-certificates",
    "--auth-supernode-private-key",
)

console = Console(width=None if sys.stdout.isatty() else 160)


# --------------------------------------------------------------------------- pure helpers


def median_after_first(seconds: Sequence[float]) -> float | None:
    """Median of the rounds after the first (round 1 pays for start-up); ``None`` with fewer than 2."""
    return float(statistics.median(seconds[1:])) if len(seconds) >= 2 else None


def starts_between(
    starts: Sequence[tuple[float, str]], round_ends: Sequence[float]
) -> dict[str, Any]:
    """Process starts per measured round: those created after round 1 ended, up to the last round's end.

    Args:
        starts: ``(create_time, command)`` of every process seen (epoch seconds).
        round_ends: Epoch seconds at which each round ended, in order.

    Returns:
        ``per_round`` (mean over rounds 2..R, ``None`` with fewer than 2 rounds),
        ``by_round`` (counts for rounds 2..R), ``by_command`` (counts over those rounds),
        ``total_seen`` (every process seen during the whole run).
    """
    by_round = []
    commands: Counter[str] = Counter()
    for before, end in zip(round_ends, round_ends[1:], strict=False):
        inside = [name for created, name in starts if before < created <= end]
        by_round.append(len(inside))
        commands.update(inside)
    return {
        "per_round": sum(by_round) / len(by_round) if by_round else None,
        "by_round": by_round,
        "by_command": dict(commands.most_common()),
        "total_seen": len(starts),
        "seen_by_command": dict(Counter(name for _, name in starts).most_common()),
    }


def cpu_per_round(cpu_at_round_end: Sequence[float | None]) -> float | None:
    """SuperLink CPU seconds per measured round, from the samples taken at each round's end."""
    if len(cpu_at_round_end) < 2 or cpu_at_round_end[0] is None or cpu_at_round_end[-1] is None:
        return None
    return (cpu_at_round_end[-1] - cpu_at_round_end[0]) / (len(cpu_at_round_end) - 1)


def target(value: float | None, limit: float) -> dict[str, Any]:
    """``value``/``goal``/``met`` of a ratio that must stay at or under ``limit``."""
    return {
        "value": value,
        "goal": f"<= {limit:g}",
        "met": None if value is None else value <= limit,
    }


def ratio(setups: Mapping[str, Mapping[str, Any]], num: str, den: str) -> float | None:
    """``num``'s seconds per round over ``den``'s; ``None`` if either is missing or ``den``'s is 0."""
    a = setups.get(num, {}).get("seconds_per_round")
    b = setups.get(den, {}).get("seconds_per_round")
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b > 0 else None


def build_targets(setups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The targets from the setups' ``seconds_per_round``; a missing setup gives ``met: null``."""
    return {
        name: target(ratio(setups, num, den), limit) | {"numerator": num, "denominator": den}
        for name, (num, den, limit) in GOALS.items()
    }


def like_for_like(setups: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """fedcore's seconds per round over ``bare-flower-1x``'s (informational, not targets).

    Each ratio has ``value`` (``None`` where a setup is missing or failed), ``numerator``,
    ``denominator`` and the exchanges of each side's round after the first; SecAgg+'s has a
    ``note``.
    """
    ratios = {}
    for name, (num, exchanges, note) in LIKE_FOR_LIKE.items():
        ratios[name] = {
            "value": ratio(setups, num, LIKE_FOR_LIKE_BASE),
            "numerator": num,
            "denominator": LIKE_FOR_LIKE_BASE,
            "numerator_exchanges_per_round": exchanges,
            "denominator_exchanges_per_round": BARE_EXCHANGES[LIKE_FOR_LIKE_BASE],
        } | ({"note": note} if note else {})
    return {
        "about": (
            "for information, not targets: fedcore's seconds per round over bare Flower's with "
            "1 exchange a round (train only), as fedcore's rounds after the first are; the "
            "targets compare against bare-flower (--exchanges a round, 3 by default)"
        ),
        "ratios": ratios,
    }


def command_name(cmdline: Sequence[str], fallback: str) -> str:
    """A process's command: the script or module a Python process runs, else the program."""
    if not cmdline:
        return fallback
    first = Path(cmdline[0]).name
    if first.startswith("python") and len(cmdline) > 1:
        if cmdline[1] == "-m" and len(cmdline) > 2:
            sub = cmdline[3] if len(cmdline) > 3 and not cmdline[3].startswith("-") else ""
            return f"{cmdline[2]} {sub}".strip()  # e.g. "fedcore.cli.client_cmd start"
        if not cmdline[1].startswith("-"):
            return Path(cmdline[1]).name
    return first


def flower_role(cmdline: Sequence[str]) -> str | None:
    """``flower-superlink`` or ``flower-supernode`` for Flower's server and node processes.

    Either Flower's own scripts (``[python] flower-superlink ...``) or a Python module run
    with ``superlink``/``supernode`` as its subcommand (as fedcore's SuperNode with shortened
    waits, ``python -m fedcore.engines.deployment.flower_runtime supernode ...``).
    """
    programs = {Path(arg).name for arg in cmdline[:2]}
    for role in ("flower-superlink", "flower-supernode"):
        if role in programs:
            return role
    if len(cmdline) > 3 and cmdline[1] == "-m" and cmdline[3] in ("superlink", "supernode"):
        return f"flower-{cmdline[3]}"
    return None


def transport_of(argvs: Mapping[str, Sequence[Sequence[str]]]) -> dict[str, Any]:
    """TLS and node authentication as the SuperLink's and SuperNodes' command lines say."""
    link = [list(a) for a in argvs.get("flower-superlink", [])]
    nodes = [list(a) for a in argvs.get("flower-supernode", [])]
    if not link:
        return {"seen": False}
    flags = {f for a in link for f in a if f in SECURITY_FLAGS}
    node_flags = [sorted({f for f in a if f in SECURITY_FLAGS}) for a in nodes]
    return {
        "seen": True,
        "superlink_flags": sorted(flags),
        "supernode_flags": node_flags,
        "tls": "--insecure" not in flags and "--ssl-certfile" in flags,
        "node_auth": "--enable-supernode-auth" in flags
        and bool(nodes)
        and all("--auth-supernode-private-key" in f for f in node_flags),
    }


def model_arrays() -> tuple[int, list[list[Any]]]:
    """Sites of bank-fraud.yaml and its model's ``[name, shape, dtype]``, built as fedcore builds it."""
    from fedcore import tasks
    from fedcore.config import load_scenario
    from fedcore.training import model_to_arrays

    scenario = load_scenario(SCENARIOS["plaintext"])
    arrays = model_to_arrays(tasks.build(scenario.task))
    return len(scenario.sites), [[k, list(v.shape), str(v.dtype)] for k, v in arrays.items()]


# --------------------------------------------------------------------------- processes


def _pdeathsig() -> Callable[[], None] | None:
    """Child setup: the kernel SIGTERMs the child if this script dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_command(name: str) -> str:
    sibling = Path(sys.executable).parent / name
    found = str(sibling) if sibling.is_file() else shutil.which(name)
    if not found:
        raise RuntimeError(
            f"{name} is neither next to {sys.executable} nor on PATH: install flwr 1.42"
        )
    return found


@dataclass
class Seen:
    """A process seen in a launched tree, with its command line as last read."""

    created: float
    cmdline: list[str]
    command: str
    proc: psutil.Process = field(repr=False)


#: A process's command line is read again while it is younger than this: a child shows
#: its parent's command line between fork and exec.
FRESH_S = 3.0


class Trees:
    """Processes this benchmark started (each in its own session) and every descendant seen."""

    def __init__(self) -> None:
        self.roots: list[subprocess.Popen[bytes]] = []
        self.seen: dict[tuple[int, float], Seen] = {}
        self.superlink: psutil.Process | None = None
        self.superlink_cpu: float | None = None

    @property
    def argvs(self) -> dict[str, list[list[str]]]:
        """Command lines of the SuperLink and SuperNode processes seen, by role."""
        out: dict[str, list[list[str]]] = {}
        for s in sorted(self.seen.values(), key=lambda s: s.created):
            role = flower_role(s.cmdline)
            if role is not None:
                out.setdefault(role, []).append(s.cmdline)
        return out

    def start(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_pdeathsig(),
                close_fds=True,
            )
        self.roots.append(popen)
        self.tick()
        return popen

    def tick(self) -> None:
        """Record new processes in the trees and sample the SuperLink's CPU time."""
        procs: list[psutil.Process] = []
        for root in self.roots:
            if root.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(root.pid)
                procs += [top, *top.children(recursive=True)]
        now = time.time()
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
                known = self.seen.get(key)
                if known is not None and now - known.created > FRESH_S:
                    if self.superlink is None and flower_role(known.cmdline) == "flower-superlink":
                        self.superlink = known.proc  # first seen young, and no tick since
                    continue
                cmdline = proc.cmdline()
                name = command_name(cmdline, proc.name())
            except psutil.Error:
                continue
            self.seen[key] = Seen(key[1], cmdline, name, proc)
            if (
                self.superlink is None
                and now - key[1] > 1.0  # long past its exec
                and flower_role(cmdline) == "flower-superlink"
            ):
                self.superlink = proc
        if self.superlink is not None:
            with contextlib.suppress(psutil.Error):
                if self.superlink.is_running():
                    t = self.superlink.cpu_times()
                    self.superlink_cpu = float(t.user + t.system)

    def starts(self) -> list[tuple[float, str]]:
        return sorted((s.created, s.command) for s in self.seen.values())

    def stop(self, grace: float) -> None:
        """SIGTERM each root's session, wait up to ``grace``, then SIGKILL what is left, by PID."""
        self.tick()
        live = [p for p in self.roots if p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)  # its own session: pgid == pid, still ours
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in live):
            time.sleep(0.1)
        for p in live:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        killed = []
        for s in self.seen.values():  # descendants in other groups (Flower's SuperExec children)
            with contextlib.suppress(psutil.Error):
                if s.proc.is_running():  # psutil checks the create time: no reused PID
                    s.proc.kill()
                    killed.append(s.proc)
        for p in self.roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        psutil.wait_procs(killed, timeout=5)


def read_new(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines appended to ``path`` since ``offset``; the new offset."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return rows, offset + end


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- setups


@dataclass
class Measured:
    """What one setup measured."""

    setup: str
    command: list[str]
    round_seconds: list[float] = field(default_factory=list)
    round_ends: list[float] = field(default_factory=list)
    superlink_cpu_at_round_end: list[float | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def on_round(self, trees: Trees, seconds: float, end: float, label: str) -> None:
        self.round_seconds.append(seconds)
        self.round_ends.append(end)
        self.superlink_cpu_at_round_end.append(trees.superlink_cpu)
        console.log(f"  {label} round {len(self.round_seconds)}: {seconds:.1f} s")

    def result(self, trees: Trees, wall: float) -> dict[str, Any]:
        intervals = [b - a for a, b in zip(self.round_ends, self.round_ends[1:], strict=False)]
        return {
            "setup": self.setup,
            "command": self.command,
            "rounds": len(self.round_seconds),
            "round_seconds": self.round_seconds,
            "seconds_per_round": median_after_first(self.round_seconds),
            # end-to-end check: time between round ends also holds what a round's own
            # `seconds` leaves out (checkpoints, scheduling between rounds)
            "round_end_intervals_s": intervals,
            "seconds_per_round_by_interval": (
                float(statistics.median(intervals)) if intervals else None
            ),
            "process_starts": starts_between(trees.starts(), self.round_ends),
            "superlink_cpu_s": trees.superlink_cpu,
            "superlink_cpu_s_per_round": cpu_per_round(self.superlink_cpu_at_round_end),
            "transport": transport_of(trees.argvs),
            "wall_s": wall,
            **self.extra,
        }


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    scripts = str(Path(sys.executable).parent)  # Flower starts flower-superexec by bare name
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    return env


def wait_listening(port: int, popen: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {popen.poll()}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def run_bare(
    tmp: Path,
    num_sites: int,
    arrays: list[list[Any]],
    rounds: int,
    exchanges: int,
    timeout: float,
    setup: str = "bare-flower",
) -> dict[str, Any]:
    """Bare Flower, default settings, the trivial app, ``exchanges`` a round; see the module docstring."""
    app_dir, work, logs = tmp / "app", tmp / "work", tmp / "logs"
    app_dir.mkdir(parents=True)
    work.mkdir()
    for name in ("pyproject.toml", "bare_serverapp.py", "bare_clientapp.py"):
        shutil.copy2(BARE_APP / name, app_dir / name)
    (work / "pattern.json").write_text(
        json.dumps(
            {"rounds": rounds, "exchanges": exchanges, "num_sites": num_sites, "arrays": arrays}
        )
    )
    env = base_env()
    port = free_port()
    superlink_argv = [
        flower_command("flower-superlink"),
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    measured = Measured(setup, superlink_argv)
    trees = Trees()
    started = time.perf_counter()
    try:
        home = tmp / "flwr-home" / "superlink"
        home.mkdir(parents=True)
        link = trees.start(superlink_argv, logs / "superlink.log", env | {"FLWR_HOME": str(home)})
        wait_listening(port, link, logs / "superlink.log", 60.0)
        for i in range(num_sites):
            node_home = tmp / "flwr-home" / f"site-{i + 1}"
            node_home.mkdir(parents=True)
            trees.start(
                [
                    flower_command("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                ],
                logs / f"supernode-{i + 1}.log",
                env | {"FLWR_HOME": str(node_home)},
            )
        user = tmp / "flwr-home" / "user"
        user.mkdir(parents=True)
        (user / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        submit = [
            flower_command("flwr"),
            "run",
            str(app_dir),
            "bench",
            "--run-config",
            f"work-dir='{work}' timeout={float(timeout)}",
            "--format",
            "json",
        ]
        done = subprocess.run(
            submit,
            capture_output=True,
            text=True,
            env=env | {"FLWR_HOME": str(user)},
            timeout=300,
            check=False,
        )
        payload: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            payload = json.loads(done.stdout[done.stdout.find("{") :])
        if done.returncode != 0 or not payload.get("success"):
            raise RuntimeError(
                f"`flwr run` failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        console.log(f"  submitted run {payload.get('run-id')}; waiting for {num_sites} sites")
        offset, errors = 0, []
        deadline = time.monotonic() + timeout
        while True:
            trees.tick()
            rows, offset = read_new(work / "rounds.jsonl", offset)
            finished = False
            for row in rows:
                if row["event"] == "round":
                    measured.on_round(trees, float(row["seconds"]), float(row["end"]), setup)
                    errors += row["errors"]
                elif row["event"] == "error":
                    raise RuntimeError(f"the bare ServerApp failed: {row['error']}")
                elif row["event"] == "done":
                    finished = True
            if finished:
                break
            for i, root in enumerate(trees.roots):
                if root.poll() is not None:
                    raise RuntimeError(
                        f"process {i} of the bare deployment exited with {root.poll()}:\n{tail(logs / 'superlink.log')}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bare Flower did not finish {rounds} rounds within {timeout:.0f} s"
                )
            time.sleep(POLL)
        measured.extra = {
            "exchanges": exchanges,
            "pattern": [asdict(e) for e in message_pattern(exchanges)],
            "run_id": payload.get("run-id"),
            "reply_errors": errors,
            "settings": "Flower defaults: in-memory state, subprocess isolation, insecure",
        }
        return measured.result(trees, time.perf_counter() - started)
    finally:
        trees.stop(grace=10.0)


def fedcore_command() -> list[str]:
    script = Path(sys.executable).parent / "fedcore"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fedcore.cli.main"]


def run_fedcore(
    tmp: Path, setup: str, scenario: Path, engine: str, rounds: int, timeout: float
) -> dict[str, Any]:
    """``fedcore run SCENARIO --engine ENGINE --rounds N --out DIR`` as a user runs it."""
    out, log = tmp / "out", tmp / "fedcore-run.log"
    argv = [
        *fedcore_command(),
        "run",
        str(scenario),
        "--engine",
        engine,
        "--rounds",
        str(rounds),
        "--out",
        str(out),
    ]
    measured = Measured(setup, argv)
    trees = Trees()
    started = time.perf_counter()
    try:
        proc = trees.start(argv, log, base_env())
        offset = 0
        last: dict[str, Any] = {}
        exchanges: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            trees.tick()
            rows, offset = read_new(out / "rounds.jsonl", offset)
            now = time.time()
            for row in rows:
                last = row
                exchanges.append(row.get("exchanges"))  # recorded by newer coordinators
                measured.on_round(trees, float(row["seconds"]), now, setup)
            if proc.poll() is not None:
                rows, offset = read_new(out / "rounds.jsonl", offset)
                for row in rows:
                    last = row
                    exchanges.append(row.get("exchanges"))
                    measured.on_round(trees, float(row["seconds"]), time.time(), setup)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{setup} did not finish within {timeout:.0f} s")
            time.sleep(POLL)
        if proc.returncode != 0:
            raise RuntimeError(f"`fedcore run` exited with {proc.returncode}:\n{tail(log, 25)}")
        summary = json.loads((out / "summary.json").read_text())
        measured.extra = {
            "engine": engine,
            "scenario": str(scenario.relative_to(ROOT)),
            "privacy": summary.get("privacy", {}).get("mode"),
            "pr_auc": summary.get("final", {}).get("pr_auc"),
            "last_round_pr_auc": last.get("pr_auc"),
            "exchanges_by_round": exchanges,
            "bytes_up": summary.get("privacy", {}).get("bytes_up"),
            "bytes_down": summary.get("privacy", {}).get("bytes_down"),
            "fedcore_wall_s": summary.get("wall_seconds"),
        }
        return measured.result(trees, time.perf_counter() - started)
    finally:
        trees.stop(grace=30.0)  # fedcore run stops its own coordinator and sites on SIGTERM


def run_setup(
    name: str,
    tmp: Path,
    num_sites: int,
    arrays: list[list[Any]],
    rounds: int,
    exchanges: int,
    timeout: float,
) -> dict[str, Any]:
    """Run one setup of SETUPS in ``tmp``; ``exchanges`` is ``bare-flower``'s (``--exchanges``)."""
    if name in BARE_EXCHANGES:
        fixed = BARE_EXCHANGES[name]
        return run_bare(
            tmp, num_sites, arrays, rounds, exchanges if fixed is None else fixed, timeout, name
        )
    mode = name.removeprefix("fedcore-")
    engine = "inprocess" if mode == "inprocess" else "deployment"
    scenario = SCENARIOS["plaintext" if mode == "inprocess" else mode]
    return run_fedcore(tmp, name, scenario, engine, rounds, timeout)


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import flwr

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "flwr": flwr.__version__,
    }


def git_state() -> dict[str, Any]:
    """The checkout measured: HEAD and the paths that differ from it (others' work in progress)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""  # keep status columns

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_paths": changed}


def build_report(
    settings: Mapping[str, Any],
    setups: Mapping[str, Mapping[str, Any]],
    machine_info: Mapping[str, Any],
    *,
    complete: bool,
    seconds: float,
) -> dict[str, Any]:
    """The JSON document: ``results`` (settings, every setup's measurements, ``like_for_like``), ``targets``."""
    return {
        "results": {
            "settings": dict(settings),
            "setups": {k: dict(v) for k, v in setups.items()},
            "like_for_like": like_for_like(setups),
        },
        "targets": build_targets(setups),
        "machine": dict(machine_info),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "complete": complete,
        "seconds": seconds,
    }


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON (replacing the file whole, so a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=str))
    partial.replace(path)


def show(
    setups: Mapping[str, Mapping[str, Any]],
    goals: Mapping[str, Mapping[str, Any]],
    alike: Mapping[str, Any] | None = None,
) -> None:
    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, int | float) else "-"

    table = Table(title="Seconds per round on loopback (median of rounds after the first)")
    for col in (
        "setup",
        "transport",
        "rounds",
        "s/round",
        "round s",
        "proc starts/round",
        "SuperLink CPU s (per round)",
        "PR-AUC",
    ):
        table.add_column(
            col, justify="left" if col in ("setup", "transport", "round s") else "right"
        )
    for name, r in setups.items():
        if "error" in r:
            table.add_row(
                name, "-", "-", "-", escape(str(r["error"]).splitlines()[0][:60]), "-", "-", "-"
            )
            continue
        t = r.get("transport", {})
        transport = (
            "none (in-process)"
            if not t.get("seen")
            else "TLS + node auth"
            if t.get("tls") and t.get("node_auth")
            else "TLS"
            if t.get("tls")
            else "insecure"
        )
        cpu, per = r.get("superlink_cpu_s"), r.get("superlink_cpu_s_per_round")
        table.add_row(
            name,
            transport,
            str(r["rounds"]),
            fmt(r.get("seconds_per_round"), ".2f"),
            " ".join(f"{s:.1f}" for s in r["round_seconds"]),
            fmt(r["process_starts"]["per_round"], ".1f"),
            f"{fmt(cpu, '.1f')} ({fmt(per, '.2f')})",
            fmt(r.get("pr_auc"), ".4f"),
        )
    console.print(table)
    for name, t in goals.items():
        verdict = (
            "met" if t["met"] else "NOT met" if t["met"] is False else "n/a (a setup did not run)"
        )
        console.print(f"{name}: {fmt(t['value'], '.3f')} (goal {t['goal']}): {verdict}")
    if alike is not None:
        console.print(f"like for like ({alike['about']}):")
        for name, r in alike["ratios"].items():
            value = "n/a (a setup did not run)" if r["value"] is None else fmt(r["value"], ".3f")
            note = f" ({r['note']})" if r.get("note") else ""
            console.print(f"  {name}: {value}{note}")


def main(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results (JSON).")],
    quick: Annotated[
        bool, typer.Option("--quick", help="3 rounds (2 measured) instead of 6.")
    ] = False,
    rounds: Annotated[
        int, typer.Option(help="Rounds per setup (0: 3 with --quick, else 6).", min=0)
    ] = 0,
    exchanges: Annotated[
        int,
        typer.Option(
            help=(
                "Exchanges per round of the bare-flower setup (3: the Flower-alone round "
                "of telemetry, train, evaluate; 1: train only). bare-flower-1x always sends 1, "
                "as fedcore's rounds after the first do."
            ),
            min=1,
        ),
    ] = 3,
    setup: Annotated[
        list[str] | None, typer.Option(help=f"Run only these setups (repeat): {', '.join(SETUPS)}.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds one setup may take (0: 600 + 300 per round).", min=0)
    ] = 0.0,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Keep logs and run directories here (default: a temporary directory, removed)."
        ),
    ] = None,
) -> None:
    """Run every setup one after another and write the measurements and targets."""
    chosen = list(setup) if setup else list(SETUPS)
    unknown = sorted(set(chosen) - set(SETUPS))
    if unknown:
        raise typer.BadParameter(
            f"unknown setup(s) {', '.join(unknown)}; valid: {', '.join(SETUPS)}"
        )
    rounds = rounds or (3 if quick else 6)
    if rounds < 2:
        raise typer.BadParameter(
            f"--rounds must be at least 2 (round 1 is not measured), found {rounds}"
        )
    limit = timeout or 600.0 + 300.0 * rounds
    started = time.perf_counter()
    load_before = machine()["load_average"]
    num_sites, arrays = model_arrays()
    settings = {
        "scenario": "scenarios/bank-fraud.yaml",
        "num_sites": num_sites,
        "rounds": rounds,
        "measured_rounds": rounds - 1,
        "exchanges": exchanges,  # bare-flower's
        "bare_exchanges": {n: exchanges if e is None else e for n, e in BARE_EXCHANGES.items()},
        "model_arrays": arrays,
        "model_parameters": sum(math.prod(shape) for _, shape, _ in arrays),
        "poll_interval_s": POLL,
        "checkout": git_state(),
        "setups": chosen,
    }
    setups: dict[str, dict[str, Any]] = {}

    def write(final: bool) -> dict[str, Any]:
        report = build_report(
            settings,
            setups,
            machine() | {"load_average_before": load_before},
            complete=final,
            seconds=time.perf_counter() - started,
        )
        write_report(json_out, report)
        return report

    with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        if workdir is None:
            tmp = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="fedcore-deploy-bench-"))
            )
        else:
            tmp = workdir.resolve()
            if tmp.exists() and any(tmp.iterdir()):
                raise typer.BadParameter(
                    f"--workdir {tmp} is not empty: give a new or empty directory"
                )
        settings["workdir"] = str(tmp) if workdir is not None else None
        for name in chosen:
            console.log(f"[bold]{name}[/]: {rounds} rounds, {num_sites} sites")
            load = os.getloadavg()
            try:
                setups[name] = run_setup(
                    name, tmp / name, num_sites, arrays, rounds, exchanges, limit
                )
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
                console.log(f"[red]{name} failed[/]: {escape(str(exc))}")
                setups[name] = {"setup": name, "error": str(exc)}
            # other work on the machine slows every setup: say how busy it was
            setups[name]["load_average_1m"] = {"start": load[0], "end": os.getloadavg()[0]}
            spr = setups[name].get("seconds_per_round")
            if spr is not None:
                console.log(f"  {name}: {spr:.2f} s per round")
            write(final=False)
    report = write(final=True)
    show(setups, report["targets"], report["results"]["like_for_like"])
    console.print(f"wrote {json_out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    typer.run(main)
