"""Child processes of a deployment: started in their own session, logged to a file, health-checked, stopped by PID with their descendants."""

from __future__ import annotations

import contextlib
import ctypes
import functools
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
