"""Child processes of a deployment: started in their own session under a guard that outlives no descendant, logged to a file, health-checked, stopped by PID with their descendants."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import psutil

from fedcore.engines.deployment.errors import AddressInUseError, DeploymentError
from fedcore.engines.deployment.progress import tail_text, with_tail
from fedcore.engines.deployment.signals import deferred_signals

__all__ = ["DEFAULT_GRACE", "ManagedProcess", "stop_processes", "wait_until_healthy"]

logger = logging.getLogger(__name__)

#: Seconds a process gets to exit after SIGTERM before it is killed.
DEFAULT_GRACE = 10.0

_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98|errno 48", re.IGNORECASE)


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


#: Environment variable that hands the guarded command to :data:`_GUARD` (not its command line,
#: so that ``ps`` and process searches by command line find the command itself once).
_GUARD_ARGV = "FEDCORE_GUARD_ARGV"

#: The guard each managed command runs under on Linux (stdlib only; ``python -I -S -c``).
#:
#: Flower's SuperLink and SuperNode start processes of their own (``flower-superexec``, which
#: starts ``flwr-serverapp`` / ``flwr-clientapp`` in sessions of their own) that only watch
#: their parent's PID. When a service dies by ``kill -9`` its direct child gets SIGTERM from
#: the kernel (``PR_SET_PDEATHSIG``), but the grandchildren are re-parented to init and may
#: never exit: a ``flwr-serverapp`` with TLS was seen running minutes after its
#: ``fed-coordinator`` was killed. The guard is a child subreaper (``PR_SET_CHILD_SUBREAPER``):
#: every orphan below it is re-parented to it, so it can still find them. It runs the command
#: in a process group of its own, passes SIGTERM / SIGINT / SIGHUP on to it (also the SIGTERM
#: of its own parent's death), kills it after GRACE seconds if it outlives such a signal, and
#: once it exited, SIGTERMs what is left below, SIGKILLs it after 3 s and exits as the command
#: did (same code, or the same signal).
_GUARD = r"""# fedcore process guard: runs one command, and leaves no process of it behind
import ctypes, json, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
grace = float(sys.argv[2])
argv = json.loads(os.environ.pop("FEDCORE_GUARD_ARGV"))
parent = os.getppid()
passed = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
before = {s: signal.getsignal(s) for s in passed}
got = []
signal.pthread_sigmask(signal.SIG_BLOCK, passed)
for s in passed:
    signal.signal(s, lambda n, f: got.append(n))
guard = os.getpid()
pid = os.fork()
if pid == 0:
    try:
        for s in passed:
            signal.signal(s, signal.SIG_IGN if before[s] == signal.SIG_IGN else signal.SIG_DFL)
        for s in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, passed)
        os.setpgid(0, 0)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG: the guard died
        if os.getppid() != guard:  # it died before prctl took effect
            os._exit(128 + signal.SIGTERM)
        os.execvp(argv[0], argv)
    except BaseException as exc:
        os.write(2, ("fedcore guard: cannot run %r: %s\n" % (argv[0], exc)).encode())
    os._exit(127)
signal.pthread_sigmask(signal.SIG_UNBLOCK, passed)


def below():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            kids.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        for kid in kids.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass


status = None
forwarded = None
cleanup = None
while True:
    while True:
        try:
            done, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            done = 0
        if done == 0:
            break
        if done == pid:
            status = code
    now = time.monotonic()
    if status is None:
        if got and forwarded is None:
            forwarded = now
            signal_all([pid], got[0])
        elif forwarded is not None and now - forwarded > grace:
            signal_all([pid], signal.SIGKILL)
    else:
        rest = below()
        if not rest:
            break
        if cleanup is None:
            cleanup = now
            signal_all(rest, signal.SIGTERM)
        elif now - cleanup > 3.0:
            signal_all(rest, signal.SIGKILL)
    time.sleep(0.1)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two take no handler
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _guarded(
    name: str, argv: Sequence[str], env: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str] | None]:
    """``(argv, env)`` that run ``argv`` under :data:`_GUARD` (Linux), or unchanged elsewhere."""
    if _make_preexec() is None:
        return list(argv), dict(env) if env is not None else None
    guarded_env = dict(env if env is not None else os.environ)
    guarded_env[_GUARD_ARGV] = json.dumps(list(argv))
    guard = [sys.executable, "-I", "-S", "-c", _GUARD, name, str(DEFAULT_GRACE)]
    return guard, guarded_env


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ManagedProcess:
    """A child process in its own session, with its output in a log file.

    On Linux the command runs under a guard (:data:`_GUARD`), the process :attr:`pid` names:
    it passes signals on, and no process below it outlives the command, even when this
    process dies by ``kill -9``. This object also remembers every descendant it has seen
    (Flower's SuperExec starts its ServerApp/ClientApp processes in other process groups), so
    :meth:`kill` reaches processes that were re-parented after their parent died.
    Descendants are remembered as :class:`psutil.Process`, which guards against PID reuse.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.started_at = time.monotonic()
        self._seen: dict[int, psutil.Process] = {}
        self._command: psutil.Process | None = None  # the guarded command (the guard's child)
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
        command, child_env = _guarded(name, argv, env)
        with deferred_signals():
            with log_path.open("ab") as fh:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(f"=== {stamp} fedcore starts {name}: {' '.join(argv)}\n".encode())
                fh.flush()
                popen = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=child_env,
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
        """PID of the process (its guard on Linux; also its process group id)."""
        return self.popen.pid

    def poll(self) -> int | None:
        """Exit code, or ``None`` while it runs."""
        return self.popen.poll()

    def refresh(self) -> None:
        """Remember the process's current descendants (cheap; call it while polling)."""
        if self.popen.poll() is not None:
            return
        try:
            leader = psutil.Process(self.popen.pid)
            children = leader.children(recursive=True)
            direct = leader.children() if _make_preexec() is not None else []
        except psutil.Error:
            return
        if self._command is None and direct:
            with contextlib.suppress(psutil.Error):
                self._command = min(direct, key=lambda p: p.create_time())
        for child in children:
            if child == self._command:
                continue
            known = self._seen.get(child.pid)
            if known is None or not _alive(known):
                self._seen[child.pid] = child

    def survivors(self) -> list[psutil.Process]:
        """Descendants seen so far that are still running (zombies excluded), the command's
        own process (under its guard) aside."""
        return [p for p in self._seen.values() if _alive(p)]

    def _all_left(self) -> list[psutil.Process]:
        command = [self._command] if self._command is not None and _alive(self._command) else []
        return command + self.survivors()

    def running(self) -> bool:
        """Whether the process or any descendant it started is still running."""
        return self.popen.poll() is None or bool(self._all_left())

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
        for proc in self._all_left():
            with contextlib.suppress(psutil.Error):
                proc.terminate()

    def kill(self) -> None:
        """SIGKILL the process group and every descendant seen, then reap the leader."""
        self.refresh()
        self._signal_group(signal.SIGKILL)
        for proc in self._all_left():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        deadline = time.monotonic() + 5.0  # SIGKILL is asynchronous
        while self._all_left() and time.monotonic() < deadline:
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
    while time.monotonic() < deadline and any(p.running() for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if proc.running():
            logger.warning(
                "%s (pid %d) did not stop after SIGTERM; killing it", proc.name, proc.pid
            )
        proc.kill()


def wait_until_healthy(
    proc: ManagedProcess,
    address: str,
    *,
    timeout: float,
    what: str,
    ca_cert: Path | None = None,
) -> float:
    """Poll ``ADDRESS/health`` until it answers 200; return the seconds it took.

    Args:
        proc: The server process.
        address: ``HOST:PORT`` to poll.
        timeout: Seconds to wait.
        what: The server, for messages ("the SuperLink").
        ca_cert: Poll over HTTPS, trusting only this CA (the server uses TLS).

    Raises:
        AddressInUseError: if the process exited because its port was taken.
        DeploymentError: if it exited, its certificate was refused, or it did not
            answer within ``timeout`` (with its log tail).
    """
    context: ssl.SSLContext | None = None
    if ca_cert is not None:
        context = ssl.create_default_context(cafile=str(ca_cert))
    url = f"{'https' if context else 'http'}://{address}/health"
    start = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            tail = proc.log_tail(60)
            if _ADDRESS_IN_USE.search(tail):
                raise AddressInUseError(
                    with_tail(
                        f"{what} could not listen on {address}: address already in use",
                        proc.log_path,
                    )
                )
            raise DeploymentError(
                with_tail(f"{what} exited with code {code} while starting", proc.log_path)
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=context) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise DeploymentError(
                    f"{what} on {address} presents a certificate this machine refuses: "
                    f"{exc.reason.verify_message or exc.reason}. Expected one signed by "
                    f"{ca_cert} that names {address.rsplit(':', 1)[0]}"
                ) from None
        except OSError:
            pass
        if time.monotonic() - start > timeout:
            raise DeploymentError(
                with_tail(
                    f"{what} did not answer {url} within {timeout:.0f} s; is the machine "
                    "overloaded? Check its log",
                    proc.log_path,
                )
            )
        time.sleep(0.2)
