"""Deployment engine: a real Flower SuperLink and one SuperNode per site, as processes on loopback.

Three layers, each owning the processes it starts:

* :func:`run_deployment` (``fedcore run --engine deployment``) launches the very
  same production commands an operator runs, ``fed-coordinator start`` and one
  ``fed-client start`` per site, tails ``OUT/rounds.jsonl`` for progress and
  returns the parsed ``OUT/federation.json``.
* :func:`serve_coordinator` (``fed-coordinator start``) runs ``flower-superlink``,
  waits for the sites, submits the run with ``flwr run`` and watches it.
* :func:`serve_site` (``fed-client start``) runs ``flower-supernode`` for one site.

Every child is started in its own session (process group) and stopped by PID:
SIGTERM to its group, SIGKILL after a grace period, also for the descendants it
spawned (Flower's SuperExec, ``flwr-serverapp``, ``flwr-clientapp``), in
``finally`` blocks that also run on SIGINT and SIGTERM. On Linux each child also
gets SIGTERM from the kernel if its parent dies without cleaning up
(``PR_SET_PDEATHSIG``).

This module never imports ``coordinator`` or ``clients``: it launches commands.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from rich.console import Console
from rich.markup import escape

from fedcore.config import Scenario, load_scenario, load_site_config

__all__ = [
    "APP_DIR",
    "EXIT_ADDRESS_IN_USE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "AddressInUseError",
    "DeploymentError",
    "ManagedProcess",
    "RoundsTail",
    "check_transport",
    "config_args",
    "flower_env",
    "format_address",
    "format_round",
    "free_port",
    "is_loopback_host",
    "parse_address",
    "run_deployment",
    "serve_coordinator",
    "serve_site",
    "stop_processes",
]

logger = logging.getLogger(__name__)

#: The Flower app directory that ``fed-coordinator`` submits (shipped as package data).
APP_DIR = Path(__file__).resolve().parent.parent / "cli" / "flowerapp"

#: Name of the SuperLink connection written into the coordinator's ``FLWR_HOME``.
CONNECTION_NAME = "fedcore"

EXIT_OK = 0  #: the run completed
EXIT_FAILED = 1  #: the run failed, or a process died
EXIT_USAGE = 2  #: bad arguments or configuration file
EXIT_ADDRESS_IN_USE = 3  #: the address to listen on is taken
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C or SIGTERM

#: Seconds a process gets to exit after SIGTERM before it is killed.
DEFAULT_GRACE = 10.0

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98|errno 48", re.IGNORECASE)


class DeploymentError(RuntimeError):
    """The deployment could not start, a process died, or the federation failed."""


class AddressInUseError(DeploymentError):
    """The address a server should listen on is already taken."""


# --------------------------------------------------------------------------- addresses


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPv6]:PORT``) into host and port.

    Args:
        text: The address, e.g. ``127.0.0.1:9092`` or ``[::1]:9092``.

    Returns:
        ``(host, port)``; an IPv6 host comes back without brackets.

    Raises:
        DeploymentError: if the text is not ``HOST:PORT`` with a port in 1..65535.
    """
    expected = "expected HOST:PORT such as 127.0.0.1:9092"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text.strip())
    if not match:
        raise DeploymentError(f"{expected}, found {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise DeploymentError(f"{expected} with a port between 1 and 65535, found {text!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    """Join host and port, bracketing an IPv6 host (``[::1]:9092``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1`` or ``localhost``).

    Host names other than ``localhost`` are not resolved and count as non-loopback.
    """
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(host: str, *, insecure: bool, action: str) -> None:
    """Refuse plaintext traffic that would leave the machine.

    Until TLS and node authentication land, fedcore runs Flower only without TLS,
    and only on a loopback address.

    Args:
        host: The host to listen on or connect to.
        insecure: Whether the user asked for a connection without TLS (``--insecure``).
        action: What is done with ``host``, for the message ("listen on", "connect to").

    Raises:
        DeploymentError: if TLS is requested (not available yet) or ``host`` is not loopback.
    """
    if not insecure:
        raise DeploymentError(
            f"cannot {action} {host} with TLS: TLS certificates and node authentication are "
            "not supported by this fedcore release yet. For a test on one machine, use a "
            "loopback address (127.0.0.1) and pass --insecure."
        )
    if not is_loopback_host(host):
        raise DeploymentError(
            f"refusing to {action} {host} without TLS: it is not a loopback address, so model "
            "updates would cross the network unencrypted and any machine could join. Use "
            "127.0.0.1 (or ::1, localhost) with --insecure; running across machines needs TLS "
            "and node authentication, which a later fedcore release adds."
        )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nobody listens on right now.

    The port is only free at the time of the call; callers retry when a server
    then fails to bind it (:class:`AddressInUseError`).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (with ``SO_REUSEADDR``, like uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------- Flower plumbing


def _toml_string(value: str) -> str:
    if not any(c in value for c in "'\n\r"):
        return f"'{value}'"  # TOML literal string: no escapes at all
    if not any(c in value for c in '"\\\n\r'):
        return f'"{value}"'
    raise DeploymentError(
        f"cannot pass {value!r} to Flower: a value may not hold a newline, nor both a "
        "quote (') and a double quote or backslash. Rename the file or directory."
    )


def config_args(values: Mapping[str, str | int | float | bool]) -> str:
    """Render values for Flower's ``--run-config`` / ``--node-config`` (``k='v' n=3``).

    Flower splits the text on spaces outside quotes and parses each value as TOML;
    strings become TOML literal strings, so paths need no escaping.

    Raises:
        DeploymentError: for a key Flower cannot parse or a string that cannot be quoted.
    """
    parts = []
    for key, value in values.items():
        if not _CONFIG_KEY.match(key):
            raise DeploymentError(f"config key {key!r} must match {_CONFIG_KEY.pattern}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = _toml_string(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def flower_command(name: str) -> str:
    """Absolute path of a Flower console script from this Python environment.

    Raises:
        DeploymentError: if it is neither next to ``sys.executable`` nor on ``PATH``.
    """
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found:
        return found
    raise DeploymentError(
        f"the Flower command {name!r} was found neither next to {sys.executable} nor on PATH; "
        "install flwr 1.42 into this environment (pip install 'flwr>=1.42,<1.43')"
    )


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: private ``FLWR_HOME``, no telemetry, scripts on PATH.

    * ``FLWR_HOME`` keeps installed app bundles, credentials and the connection
      config per coordinator / site instead of in ``~/.flwr``.
    * Flower's usage telemetry and update check are off unless the caller set
      them (a consortium's machines should not phone home).
    * The directory of the Flower scripts goes first on ``PATH``: SuperLink and
      SuperNode start ``flower-superexec`` (which starts ``flwr-serverapp`` /
      ``flwr-clientapp``) by bare name.

    Flower's polling is fixed in 1.42: an idle SuperNode polls every 3 s and
    ``Grid.send_and_receive`` every 3 s. ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``
    (SuperExec, default 1 s) is left alone: 0.2 s measured no faster round here.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["PYTHONUNBUFFERED"] = "1"
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def write_connection_config(flwr_home: Path, address: str) -> Path:
    """Write ``FLWR_HOME/config.toml`` with the SuperLink connection ``fedcore`` (insecure)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "# Written by fed-coordinator: `FLWR_HOME=<this dir> flwr ls fedcore` inspects runs.\n"
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f'[superlink.{CONNECTION_NAME}]\naddress = "{address}"\ninsecure = true\n',
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- logs


def tail_text(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, without ANSI colours ("" if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = _ANSI.sub("", data)
    return "\n".join(text.splitlines()[-lines:])


def _with_tail(message: str, path: Path, lines: int = 25) -> str:
    tail = tail_text(path, lines)
    if not tail:
        return f"{message}\n(log: {path}, empty)"
    indented = "\n".join(f"  | {line}" for line in tail.splitlines())
    return f"{message}\nlast lines of {path}:\n{indented}"


class RoundsTail:
    """Follows a JSON-lines file (``OUT/rounds.jsonl``) and yields each new complete object."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """Return the objects appended since the last call (incomplete last lines wait)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() < self._offset:  # replaced or truncated: start over
                    self._offset, self._partial = 0, b""
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        rows: list[dict[str, Any]] = []
        for raw in complete:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                logger.warning("%s: skipping a line that is not JSON (%s)", self.path, exc)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                logger.warning("%s: skipping a line that is not a JSON object", self.path)
        return rows


def format_round(row: Mapping[str, Any]) -> str:
    """One line for a finished round: ``round 2  sites 3  loss 0.4121  PR-AUC 0.613  8.1 s``."""

    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-"

    def mb(key: str) -> str:
        value = row.get(key)
        return f"{value / 1e6:.2f} MB" if isinstance(value, int | float) else "-"

    sites = row.get("sites", "?")
    if isinstance(sites, list):
        sites = f"{len(sites)} ({', '.join(str(s) for s in sites)})"
    return (
        f"round {row.get('round', '?')}  sites {sites}  "
        f"loss {num('loss', '.4f')}  PR-AUC {num('pr_auc', '.3f')}  {num('seconds', '.1f')} s  "
        f"up {mb('bytes_up')}  down {mb('bytes_down')}"
    )


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`KeyboardInterrupt` (like SIGINT) inside the block.

    So every ``finally`` that runs on Ctrl-C also runs when a supervisor or
    ``kill`` stops the process. No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


@contextlib.contextmanager
def deferred_signals(*, reraise: bool = True) -> Iterator[None]:
    """Hold off SIGINT/SIGTERM/SIGHUP during cleanup so it cannot be cut short.

    Args:
        reraise: Raise :class:`KeyboardInterrupt` after the block if a signal came.

    No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
    if received and reraise:
        raise KeyboardInterrupt(f"received {signal.Signals(received[0]).name}")


# --------------------------------------------------------------------------- processes


@functools.cache
def _make_preexec() -> Callable[[], None] | None:
    """Child setup that asks the kernel to SIGTERM the child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        parent = os.getppid()
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sigterm)

    return preexec


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ManagedProcess:
    """A child process in its own session, with its output in a log file.

    It remembers every descendant it has seen (Flower's SuperExec starts its
    ServerApp/ClientApp processes in other process groups), so :meth:`kill` also
    reaches processes that were re-parented after their parent died. Descendants
    are remembered as :class:`psutil.Process`, which guards against PID reuse.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.started_at = time.monotonic()
        self._seen: dict[int, psutil.Process] = {}
        self.refresh()

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        registry: list[ManagedProcess] | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, appending stdout and stderr to ``log_path``.

        Args:
            name: Label used in messages, e.g. ``"SuperLink"``.
            argv: The command; never run through a shell.
            log_path: Log file (created with its parent directories, appended to).
            env: Environment of the child (default: this process's).
            cwd: Working directory of the child.
            registry: If given, the process is appended to it before any signal can
                interrupt, so the caller's cleanup always sees it.

        Returns:
            The running process.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with deferred_signals():
            with log_path.open("ab") as fh:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(f"=== {stamp} fedcore starts {name}: {' '.join(argv)}\n".encode())
                fh.flush()
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_make_preexec(),
                    close_fds=True,
                )
            proc = cls(name, popen, log_path)
            if registry is not None:
                registry.append(proc)
        logger.info("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    @property
    def pid(self) -> int:
        """PID of the process (also its process group id)."""
        return self.popen.pid

    def poll(self) -> int | None:
        """Exit code, or ``None`` while it runs."""
        return self.popen.poll()

    def refresh(self) -> None:
        """Remember the process's current descendants (cheap; call it while polling)."""
        if self.popen.poll() is not None:
            return
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            known = self._seen.get(child.pid)
            if known is None or not _alive(known):
                self._seen[child.pid] = child

    def survivors(self) -> list[psutil.Process]:
        """Descendants seen so far that are still running (zombies excluded)."""
        return [p for p in self._seen.values() if _alive(p)]

    def running(self) -> bool:
        """Whether the process or any descendant it started is still running."""
        return self.popen.poll() is None or bool(self.survivors())

    def _signal_group(self, sig: int) -> None:
        # Only while the leader is unreaped: until then its PID (= the group id)
        # cannot be reused by another process.
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the process group; if the leader is gone, SIGTERM its descendants."""
        self.refresh()
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
        else:
            self.terminate_survivors()

    def terminate_survivors(self) -> None:
        """SIGTERM every descendant seen that is still running."""
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.terminate()

    def kill(self) -> None:
        """SIGKILL the process group and every descendant seen, then reap the leader."""
        self.refresh()
        self._signal_group(signal.SIGKILL)
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        deadline = time.monotonic() + 5.0  # SIGKILL is asynchronous
        while self.survivors() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop it and its descendants: SIGTERM, then SIGKILL after ``grace`` seconds."""
        stop_processes([self], grace=grace)

    def log_tail(self, lines: int = 25) -> str:
        """The end of this process's log, without colours."""
        return tail_text(self.log_path, lines)

    def __repr__(self) -> str:
        return f"ManagedProcess(name={self.name!r}, pid={self.pid}, returncode={self.poll()})"


def stop_processes(procs: Iterable[ManagedProcess], grace: float = DEFAULT_GRACE) -> None:
    """Stop processes together: SIGTERM each group, wait up to ``grace`` s, then SIGKILL.

    Descendants that outlive their leader get SIGTERM, then SIGKILL. Safe to call
    twice and on processes that already exited.
    """
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
        for proc in procs:
            proc.refresh()
    # Leaders are gone (or out of time); give orphaned descendants a short SIGTERM window.
    for proc in procs:
        proc.terminate_survivors()
    deadline = time.monotonic() + min(3.0, grace)
    while time.monotonic() < deadline and any(p.survivors() for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if proc.running():
            logger.warning(
                "%s (pid %d) did not stop after SIGTERM; killing it", proc.name, proc.pid
            )
        proc.kill()


def wait_until_healthy(proc: ManagedProcess, address: str, *, timeout: float, what: str) -> float:
    """Poll ``http://ADDRESS/health`` until it answers 200; return the seconds it took.

    Raises:
        AddressInUseError: if the process exited because its port was taken.
        DeploymentError: if it exited, or did not answer within ``timeout`` (with its log tail).
    """
    url = f"http://{address}/health"
    start = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            tail = proc.log_tail(60)
            if _ADDRESS_IN_USE.search(tail):
                raise AddressInUseError(
                    _with_tail(
                        f"{what} could not listen on {address}: address already in use",
                        proc.log_path,
                    )
                )
            raise DeploymentError(
                _with_tail(f"{what} exited with code {code} while starting", proc.log_path)
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - start > timeout:
            raise DeploymentError(
                _with_tail(
                    f"{what} did not answer {url} within {timeout:.0f} s; is the machine "
                    "overloaded? Check its log",
                    proc.log_path,
                )
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- coordinator


@dataclass(frozen=True)
class CoordinatorOptions:
    """What ``fed-coordinator start`` was asked to do (paths are made absolute).

    Attributes:
        scenario_path: The scenario YAML.
        state_dir: SuperLink database (``superlink.db``), ``FLWR_HOME``, submitted app copy.
        out_dir: Where the ServerApp writes results (``rounds.jsonl``, ``federation.json``).
        log_dir: Where ``superlink.log`` and ``flwr-run.log`` go.
        host: Address to listen on (loopback only for now).
        port: Port of the SuperLink (Fleet, Control and Runtime APIs share it).
        insecure: No TLS (required for now, see :func:`check_transport`).
        rounds: Rounds to run; ``None`` uses the scenario's.
        exit_when_done: Exit when the run ends instead of serving until Ctrl-C.
        site_timeout: Seconds to wait for every site to connect before starting the
            run with at least ``scheduler.min_sites`` sites.
        startup_timeout: Seconds the SuperLink gets to answer its health check.
    """

    scenario_path: Path
    state_dir: Path
    out_dir: Path
    log_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    insecure: bool = True
    rounds: int | None = None
    exit_when_done: bool = False
    site_timeout: float = 600.0
    startup_timeout: float = 120.0


class _ControlApi:
    """Minimal client for the SuperLink's Control API (what ``flwr ls`` uses), in-process.

    Calling ``flwr ls`` instead would start a Python process that imports flwr
    (~2.4 s CPU) for every poll.
    """

    def __init__(self, address: str, flwr_home: Path) -> None:
        from flwr.cli.typing import SuperLinkConnection
        from flwr.cli.utils import init_http_client_from_connection

        connection = SuperLinkConnection(name=CONNECTION_NAME, address=address, insecure=True)
        previous = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(flwr_home)  # where the flwr CLI keeps credentials
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using SuperLink: ..."
                self._client = init_http_client_from_connection(connection)
        finally:
            if previous is None:
                os.environ.pop("FLWR_HOME", None)
            else:
                os.environ["FLWR_HOME"] = previous

    def online_nodes(self) -> int:
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._client.ListNodes(ListNodesRequest())
        return sum(1 for node in res.nodes_info if node.status == "online")

    def run_status(self, run_id: int) -> tuple[str, str, str]:
        """``(status, sub_status, details)``, e.g. ``("finished", "failed", "...")``."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        for proto in res.run_dict.values():
            run = run_from_proto(proto)
            return run.status.status, run.status.sub_status, run.status.details
        raise DeploymentError(f"the SuperLink does not know run {run_id}")

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self._client.StopRun(StopRunRequest(run_id=run_id))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _remove_stale_results(out_dir: Path) -> list[str]:
    """Delete ``rounds.jsonl`` / ``federation.json`` of an earlier run in ``out_dir``."""
    removed = []
    for name in ("rounds.jsonl", "federation.json"):
        path = out_dir / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed


def _read_federation(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / "federation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _submit_run(
    opts: CoordinatorOptions, app_dir: Path, env: Mapping[str, str], wait_sites: float
) -> tuple[int, str]:
    """Submit the app with ``flwr run``; return ``(run_id, fab_hash)``."""
    run_config = config_args(
        {
            "scenario": str(opts.scenario_path),
            "out-dir": str(opts.out_dir),
            "rounds": opts.rounds or 0,
            "wait-sites": float(wait_sites),
        }
    )
    argv = [
        flower_command("flwr"),
        "run",
        str(app_dir),
        CONNECTION_NAME,
        "--run-config",
        run_config,
        "--format",
        "json",
    ]
    log_path = opts.log_dir / "flwr-run.log"
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=dict(env), timeout=300, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"`flwr run` did not return within 300 s: {' '.join(argv)}") from exc
    log_path.write_text(
        f"$ {' '.join(argv)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n",
        encoding="utf-8",
    )
    payload: dict[str, Any] = {}
    start = done.stdout.find("{")
    if start >= 0:
        with contextlib.suppress(ValueError):
            payload = json.loads(done.stdout[start:])
    run_id = payload.get("run-id")
    if done.returncode != 0 or not payload.get("success") or run_id is None:
        raise DeploymentError(
            _with_tail(
                f"`flwr run` could not submit the run (exit code {done.returncode})", log_path
            )
        )
    return int(run_id), str(payload.get("fab-hash", ""))


def _wait_for_sites(
    control: _ControlApi,
    superlink: ManagedProcess,
    scenario: Scenario,
    address: str,
    timeout: float,
    console: Console,
) -> int:
    expected = len(scenario.sites)
    minimum = scenario.scheduler.min_sites
    start = time.monotonic()
    shown = -1
    while True:
        if superlink.poll() is not None:
            raise DeploymentError(
                _with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink.log_path)
            )
        try:
            online = control.online_nodes()
        except Exception as exc:
            logger.debug("ListNodes failed: %s", exc)
            online = max(shown, 0)
        if online != shown:
            console.print(f"  sites connected: {online}/{expected}")
            shown = online
        if online >= expected:
            return online
        waited = time.monotonic() - start
        if waited > timeout:
            if online >= minimum:
                console.print(
                    f"[yellow]![/] only {online} of {expected} sites connected after "
                    f"{waited:.0f} s; starting anyway (scheduler.min_sites is {minimum})"
                )
                return online
            raise DeploymentError(
                f"only {online} of {expected} sites connected within {timeout:.0f} s, and the "
                f"scenario needs at least scheduler.min_sites={minimum}. Start `fed-client start "
                f"--site SITE.yaml --coordinator {address} --insecure` on each "
                "site, or raise --site-timeout"
            )
        time.sleep(0.5)


def _watch_run(
    control: _ControlApi,
    run_id: int,
    superlink: ManagedProcess,
    out_dir: Path,
    console: Console,
) -> tuple[str, str, str]:
    """Print each finished round until the run finishes; return its final status."""
    tail = RoundsTail(out_dir / "rounds.jsonl")
    failures = 0
    last: tuple[str, str, str] = ("pending", "", "")
    while True:
        for row in tail.read_new():
            console.print(f"  {escape(format_round(row))}", highlight=False)
        if superlink.poll() is not None:
            raise DeploymentError(
                _with_tail(
                    f"the SuperLink exited with code {superlink.poll()} during run {run_id}",
                    superlink.log_path,
                )
            )
        superlink.refresh()
        try:
            status = control.run_status(run_id)
            failures = 0
        except Exception as exc:
            failures += 1
            logger.debug("ListRuns failed (%d in a row): %s", failures, exc)
            if failures >= 30:
                raise DeploymentError(
                    _with_tail(f"the SuperLink stopped answering: {exc}", superlink.log_path)
                ) from exc
            status = last
        if status[0] != last[0]:
            logger.info("run %d: %s", run_id, status[0])
        last = status
        if status[0] == "finished":
            for row in tail.read_new():
                console.print(f"  {escape(format_round(row))}", highlight=False)
            return status
        time.sleep(1.0)


def serve_coordinator(opts: CoordinatorOptions, console: Console | None = None) -> int:
    """Run a SuperLink, wait for the sites, run the scenario, report (``fed-coordinator start``).

    Args:
        opts: What to run; see :class:`CoordinatorOptions`.
        console: Where progress goes (default: stdout).

    Returns:
        An exit code: :data:`EXIT_OK` (completed), :data:`EXIT_FAILED`,
        :data:`EXIT_USAGE`, :data:`EXIT_ADDRESS_IN_USE` or :data:`EXIT_INTERRUPTED`.
        Without ``exit_when_done`` it returns only after Ctrl-C / SIGTERM.
    """
    from fedcore.config import ConfigError

    console = console or Console(soft_wrap=True)
    try:
        check_transport(opts.host, insecure=opts.insecure, action="listen on")
        scenario = load_scenario(opts.scenario_path, check_files=False)  # data lives at the sites
    except (DeploymentError, ConfigError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE

    address = format_address(opts.host, opts.port)
    if not port_is_free(opts.host, opts.port):
        console.print(
            f"[red]error:[/] {address} is already in use (another fed-coordinator?); "
            "choose another port with --listen HOST:PORT",
            highlight=False,
        )
        return EXIT_ADDRESS_IN_USE

    for path in (opts.state_dir, opts.out_dir, opts.log_dir):
        path.mkdir(parents=True, exist_ok=True)
    flwr_home = opts.state_dir / "flwr-home"
    write_connection_config(flwr_home, address)
    env = flower_env(flwr_home)
    superlink_log = opts.log_dir / "superlink.log"
    rounds = opts.rounds or scenario.rounds
    console.print(
        f"[bold]fed-coordinator[/]  scenario [bold]{escape(scenario.name)}[/]: "
        f"{len(scenario.sites)} sites, {rounds} rounds, min_sites {scenario.scheduler.min_sites}",
        highlight=False,
    )
    console.print(f"  listen   {address} (insecure: loopback only)", highlight=False)
    console.print(f"  state    {opts.state_dir / 'superlink.db'}", highlight=False)
    console.print(f"  results  {opts.out_dir}", highlight=False)
    console.print(f"  logs     {superlink_log}", highlight=False)
    console.print(f"  inspect  FLWR_HOME={flwr_home} flwr ls {CONNECTION_NAME}", highlight=False)

    procs: list[ManagedProcess] = []
    control: _ControlApi | None = None
    run_id: int | None = None
    finished = False
    with sigterm_as_interrupt():
        try:
            t0 = time.monotonic()
            superlink = ManagedProcess.start(
                "SuperLink",
                [
                    flower_command("flower-superlink"),
                    "--insecure",
                    "--host",
                    opts.host,
                    "--port",
                    str(opts.port),
                    "--database",
                    str(opts.state_dir / "superlink.db"),
                    "--disable-runtime-dependency-installation",
                ],
                log_path=superlink_log,
                env=env,
                registry=procs,
            )
            took = wait_until_healthy(
                superlink, address, timeout=opts.startup_timeout, what="the SuperLink"
            )
            console.print(
                f"[green]✓[/] SuperLink ready on {address} in {took:.1f} s", highlight=False
            )
            control = _ControlApi(address, flwr_home)
            online = _wait_for_sites(
                control, superlink, scenario, address, opts.site_timeout, console
            )
            console.print(
                f"[green]✓[/] {online} site(s) connected after {time.monotonic() - t0:.1f} s"
            )

            removed = _remove_stale_results(opts.out_dir)
            if removed:
                console.print(f"  removed results of an earlier run: {', '.join(removed)}")
            if not (APP_DIR / "pyproject.toml").is_file():
                raise DeploymentError(
                    f"the Flower app directory {APP_DIR} lacks pyproject.toml; the fedcore "
                    "installation is incomplete (package data missing): reinstall fedcore"
                )
            app_dir = opts.state_dir / "app"
            shutil.rmtree(app_dir, ignore_errors=True)
            shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            # The sites are there: the round driver need not wait long for them again.
            wait_sites = 30.0 if online >= len(scenario.sites) else 0.0
            run_id, fab_hash = _submit_run(opts, app_dir, env, wait_sites)
            console.print(
                f"[green]✓[/] run {run_id} submitted (app bundle {fab_hash})", highlight=False
            )

            status, sub_status, details = _watch_run(
                control, run_id, superlink, opts.out_dir, console
            )
            finished = True
            code = _report(status, sub_status, details, opts, superlink, console)
            if opts.exit_when_done:
                return code
            console.print("still serving; press Ctrl-C to stop")
            while superlink.poll() is None:
                time.sleep(1.0)
            console.print(
                escape(
                    _with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink_log)
                ),
                highlight=False,
            )
            return EXIT_FAILED
        except AddressInUseError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_ADDRESS_IN_USE
        except DeploymentError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_FAILED
        except KeyboardInterrupt as exc:
            console.print(f"[yellow]interrupted[/] ({escape(str(exc) or 'Ctrl-C')}); stopping")
            return EXIT_INTERRUPTED
        finally:
            with deferred_signals(reraise=False):  # already stopping: a second Ctrl-C waits
                if control is not None and run_id is not None and not finished:
                    with contextlib.suppress(Exception):
                        control.stop_run(run_id)
                if control is not None:
                    control.close()
                stop_processes(procs)
                logger.info("coordinator processes stopped")


def _report(
    status: str,
    sub_status: str,
    details: str,
    opts: CoordinatorOptions,
    superlink: ManagedProcess,
    console: Console,
) -> int:
    federation = _read_federation(opts.out_dir)
    if (
        sub_status == "completed"
        and federation is not None
        and federation.get("status") == "completed"
    ):
        model = opts.out_dir / str(federation.get("model") or "model.safetensors")
        n = len(federation.get("rounds") or [])
        console.print(f"[green]✓ run completed[/]: {n} rounds; model {model}", highlight=False)
        return EXIT_OK
    if federation is not None and federation.get("error"):
        reason = str(federation["error"])
    elif sub_status == "stopped":
        reason = "the run was stopped (flwr stop)"
    elif federation is None:
        reason = f"the ServerApp ended ({status}:{sub_status}) without writing federation.json"
    else:
        reason = f"Flower reports {status}:{sub_status}"
    if details and details != "N/A":
        reason += f" ({details})"
    message = _with_tail(f"run failed: {reason}", superlink.log_path, lines=40)
    console.print(f"[red]✗[/] {escape(message)}", highlight=False)
    return EXIT_FAILED


# --------------------------------------------------------------------------- site


@dataclass(frozen=True)
class SiteOptions:
    """What ``fed-client start`` was asked to do (paths are made absolute).

    Attributes:
        site_path: The site config YAML; only its path goes to the ClientApp (``node_config``).
        host: Coordinator host (loopback only for now).
        port: Coordinator port.
        insecure: No TLS (required for now, see :func:`check_transport`).
        state_dir: The SuperNode's ``FLWR_HOME`` and default log place; ``None`` uses the
            site config's ``state_dir`` or ``./fedcore-site-ID``.
        log_file: SuperNode log; ``None`` is ``STATE/logs/supernode.log``.
        startup_timeout: Seconds the SuperNode gets to answer its health check.
    """

    site_path: Path
    host: str
    port: int
    insecure: bool = True
    state_dir: Path | None = None
    log_file: Path | None = None
    startup_timeout: float = 120.0


def serve_site(opts: SiteOptions, console: Console | None = None) -> int:
    """Run one site's SuperNode until Ctrl-C / SIGTERM (``fed-client start``).

    The SuperNode gets ``--node-config "site-config='ABS_PATH'"``: the path of the
    site config is all that reaches the ClientApp, and it stays on this machine.

    Returns:
        :data:`EXIT_USAGE` for a bad site file or address, :data:`EXIT_FAILED` if the
        SuperNode dies, :data:`EXIT_INTERRUPTED` after Ctrl-C / SIGTERM.
    """
    from fedcore.config import ConfigError

    console = console or Console(soft_wrap=True)
    try:
        check_transport(opts.host, insecure=opts.insecure, action="connect to")
        site = load_site_config(opts.site_path)
    except (DeploymentError, ConfigError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    site_path = opts.site_path.resolve()
    state_dir = (opts.state_dir or site.state_dir or Path(f"fedcore-site-{site.id}")).resolve()
    log_file = (opts.log_file or state_dir / "logs" / "supernode.log").resolve()
    coordinator = format_address(opts.host, opts.port)
    env = flower_env(state_dir / "flwr-home")
    try:
        node_config = config_args({"site-config": str(site_path)})
    except DeploymentError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    console.print(
        f"[bold]fed-client[/]  site [bold]{escape(site.id)}[/] → coordinator {coordinator} "
        "(insecure: loopback only)",
        highlight=False,
    )
    console.print(f"  site config  {site_path} (stays on this machine)", highlight=False)
    console.print(f"  logs         {log_file}", highlight=False)

    procs: list[ManagedProcess] = []
    with sigterm_as_interrupt():
        try:
            supernode: ManagedProcess | None = None
            for attempt in range(3):
                port = free_port("127.0.0.1")
                supernode = ManagedProcess.start(
                    f"SuperNode {site.id}",
                    [
                        flower_command("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        coordinator,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--node-config",
                        node_config,
                    ],
                    log_path=log_file,
                    env=env,
                    registry=procs,
                )
                try:
                    took = wait_until_healthy(
                        supernode,
                        format_address("127.0.0.1", port),
                        timeout=opts.startup_timeout,
                        what="the SuperNode",
                    )
                except AddressInUseError:
                    if attempt == 2:
                        raise
                    stop_processes([supernode])
                    continue
                console.print(
                    f"[green]✓[/] SuperNode up in {took:.1f} s (ClientAppIo 127.0.0.1:{port})"
                )
                break
            assert supernode is not None
            connected = False
            while True:
                code = supernode.poll()
                if code is not None:
                    message = _with_tail(
                        f"the SuperNode exited with code {code}", supernode.log_path
                    )
                    console.print(f"[red]error:[/] {escape(message)}", highlight=False)
                    return EXIT_FAILED
                if not connected:
                    match = re.search(r"SuperNode ID: (\d+)", tail_text(supernode.log_path, 200))
                    if match:
                        connected = True
                        console.print(
                            f"[green]✓[/] connected to {coordinator} as node {match.group(1)}"
                        )
                supernode.refresh()
                time.sleep(0.5)
        except DeploymentError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_FAILED
        except KeyboardInterrupt as exc:
            console.print(f"[yellow]interrupted[/] ({escape(str(exc) or 'Ctrl-C')}); stopping")
            return EXIT_INTERRUPTED
        finally:
            with deferred_signals(reraise=False):  # already stopping: a second Ctrl-C waits
                stop_processes(procs)


# --------------------------------------------------------------------------- fedcore run


def _check_site_configs(scenario: Scenario, site_configs: Mapping[str, Path]) -> dict[str, Path]:
    wanted = [s.id for s in scenario.sites]
    missing = [s for s in wanted if s not in site_configs]
    extra = sorted(set(site_configs) - set(wanted))
    if missing or extra:
        raise DeploymentError(
            f"site_configs must hold one site config per scenario site ({', '.join(wanted)}); "
            f"missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'}"
        )
    resolved = {}
    for site_id in wanted:
        path = Path(site_configs[site_id]).resolve()
        if not path.is_file():
            raise DeploymentError(f"site {site_id!r}: site config {path} does not exist")
        resolved[site_id] = path
    return resolved


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def run_deployment(
    scenario_path: Path,
    out_dir: Path,
    *,
    rounds: int | None,
    site_configs: Mapping[str, Path],
    on_round: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run a scenario with real Flower processes on loopback (``fedcore run --engine deployment``).

    Launches the production commands as subprocesses, exactly as operators would:
    ``fed-coordinator start --scenario FILE --state OUT/deployment/coordinator
    --listen 127.0.0.1:PORT --insecure --exit-when-done --out OUT --log-dir OUT/logs``
    and one ``fed-client start --site SITE.yaml --coordinator 127.0.0.1:PORT
    --insecure`` per site. Their output goes to ``OUT/logs/``. Every process is
    stopped before this function returns or raises, also on KeyboardInterrupt
    and SIGTERM.

    Args:
        scenario_path: The scenario YAML.
        out_dir: Results directory (``rounds.jsonl``, ``federation.json``,
            ``model.safetensors``, ``logs/``). Results of an earlier run there are removed.
        rounds: Rounds to run; ``None`` uses the scenario's.
        site_configs: Site id -> site config YAML, one per scenario site.
        on_round: Called with each object the coordinator appends to ``rounds.jsonl``.
        timeout: Seconds the whole federation may take, start-up included.

    Returns:
        The parsed ``OUT/federation.json`` of a completed run.

    Raises:
        fedcore.config.ConfigError: if the scenario file is invalid.
        DeploymentError: if a process could not start, the run failed, too few
            sites remain, or ``timeout`` passed; the message includes the log tail.
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after stopping every process.
    """
    scenario_path = Path(scenario_path).resolve()
    out_dir = Path(out_dir).resolve()
    scenario = load_scenario(scenario_path, check_files=False)
    sites = _check_site_configs(scenario, site_configs)
    if rounds is not None and rounds < 1:
        raise DeploymentError(
            f"rounds must be at least 1 (or None: the scenario's), found {rounds}"
        )
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_results(out_dir)
    deadline = time.monotonic() + timeout
    with sigterm_as_interrupt():
        for _attempt in range(3):
            port = free_port("127.0.0.1")
            procs: list[ManagedProcess] = []
            try:
                result = _run_once(
                    scenario,
                    scenario_path,
                    out_dir,
                    log_dir,
                    port,
                    rounds,
                    sites,
                    on_round,
                    deadline,
                    timeout,
                    procs,
                )
            finally:
                with deferred_signals():
                    stop_processes(procs, grace=DEFAULT_GRACE + 10.0)
            if result is not None:
                return result
            logger.warning("port %d was taken before the SuperLink bound it; retrying", port)
    raise DeploymentError("could not find a free port on 127.0.0.1 for the SuperLink after 3 tries")


def _run_once(
    scenario: Scenario,
    scenario_path: Path,
    out_dir: Path,
    log_dir: Path,
    port: int,
    rounds: int | None,
    sites: Mapping[str, Path],
    on_round: Callable[[dict[str, Any]], None] | None,
    deadline: float,
    timeout: float,
    procs: list[ManagedProcess],
) -> dict[str, Any] | None:
    """One attempt of :func:`run_deployment`; ``None`` means "port taken, retry"."""
    address = format_address("127.0.0.1", port)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    state = out_dir / "deployment"
    argv = _python_module("fedcore.cli.coordinator_cmd") + [
        "start",
        "--scenario",
        str(scenario_path),
        "--state",
        str(state / "coordinator"),
        "--listen",
        address,
        "--insecure",
        "--exit-when-done",
        "--out",
        str(out_dir),
        "--log-dir",
        str(log_dir),
        "--site-timeout",
        str(max(30.0, min(120.0, timeout / 4))),
    ]
    if rounds is not None:
        argv += ["--rounds", str(rounds)]
    coordinator = ManagedProcess.start(
        "fed-coordinator", argv, log_path=log_dir / "fed-coordinator.log", env=env, registry=procs
    )
    clients: dict[str, ManagedProcess] = {}
    for site_id, site_path in sites.items():
        clients[site_id] = ManagedProcess.start(
            f"fed-client {site_id}",
            _python_module("fedcore.cli.client_cmd")
            + [
                "start",
                "--site",
                str(site_path),
                "--coordinator",
                address,
                "--insecure",
                "--state",
                str(state / "sites" / site_id),
                "--log-file",
                str(log_dir / f"supernode-{site_id}.log"),
            ],
            log_path=log_dir / f"fed-client-{site_id}.log",
            env=env,
            registry=procs,
        )
    tail = RoundsTail(out_dir / "rounds.jsonl")
    dead: set[str] = set()
    minimum = scenario.scheduler.min_sites

    def drain() -> None:
        for row in tail.read_new():
            if on_round is not None:
                on_round(row)

    while True:
        drain()
        code = coordinator.poll()
        if code is not None:
            drain()
            if code == EXIT_ADDRESS_IN_USE:
                return None
            return _outcome(code, out_dir, coordinator)
        for site_id, client in clients.items():
            client_code = client.poll()
            if site_id in dead or client_code is None:
                continue
            dead.add(site_id)
            live = len(clients) - len(dead)
            what = f"site {site_id!r}: fed-client exited with code {client_code}"
            if live < minimum:
                message = _with_tail(
                    f"{what}; {live} of {len(clients)} sites remain but the scenario needs "
                    f"scheduler.min_sites={minimum}, so the federation cannot go on",
                    client.log_path,
                    lines=6,
                )
                raise DeploymentError(
                    _with_tail(message, log_dir / f"supernode-{site_id}.log", lines=15)
                )
            logger.warning(
                "%s; going on with %d of %d sites (min_sites=%d)", what, live, len(clients), minimum
            )
        for proc in procs:
            proc.refresh()
        if time.monotonic() > deadline:
            raise DeploymentError(
                _with_tail(
                    f"the federation did not finish within {timeout:.0f} s (timeout); raise it or "
                    "run fewer rounds",
                    coordinator.log_path,
                )
            )
        time.sleep(0.5)


def _outcome(code: int, out_dir: Path, coordinator: ManagedProcess) -> dict[str, Any]:
    federation = _read_federation(out_dir)
    if code == EXIT_OK and federation is not None and federation.get("status") == "completed":
        return federation
    if federation is not None and federation.get("error"):
        reason = f"the federation failed: {federation['error']}"
    elif code == EXIT_OK:
        reason = "fed-coordinator exited with 0 but OUT/federation.json is missing or not completed"
    elif code == EXIT_INTERRUPTED:
        reason = "fed-coordinator was interrupted"
    else:
        reason = f"fed-coordinator exited with code {code}"
    raise DeploymentError(_with_tail(reason, coordinator.log_path, lines=40))
