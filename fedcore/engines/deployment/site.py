"""The site service (``fed-client start``): one site's SuperNode, its connection to the coordinator, and why it was refused.

Progress goes to ``on_event``; failures raise the typed errors of
:mod:`fedcore.engines.deployment.errors`. The command line styles the lines and picks exit codes.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fedcore.config import ConfigError, SiteConfig, load_site_config
from fedcore.engines.deployment.errors import (
    AddressInUseError,
    DeploymentConfigError,
    DeploymentError,
    DeploymentInterrupted,
    Event,
    OnEvent,
)
from fedcore.engines.deployment.flower_cli import config_args, flower_command, flower_env
from fedcore.engines.deployment.network import check_transport, format_address, free_port
from fedcore.engines.deployment.processes import ManagedProcess, stop_processes, wait_until_healthy
from fedcore.engines.deployment.progress import read_from, with_tail
from fedcore.engines.deployment.security import NO_KIT_MESSAGE, SiteSecurity
from fedcore.engines.deployment.signals import deferred_signals, sigterm_as_interrupt
from fedcore.pki import node_key_fingerprint
from fedcore.site_paths import STATE_DIR_KEY, site_state_dir

__all__ = ["REFUSED_RETRY_DELAY", "SiteOptions", "serve_site"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteOptions:
    """What ``fed-client start`` was asked to do (paths are made absolute).

    Attributes:
        site_path: The site config YAML; only its path goes to the ClientApp (``node_config``).
        host: Coordinator host.
        port: Coordinator port.
        security: The CA to trust and the node key to sign with; required unless ``insecure``.
        insecure: No TLS and no node key; accepted for a loopback coordinator only (see
            :func:`check_transport`), and only when asked for explicitly.
        kit_dir: The site kit directory, handed to the ClientApp as node-config ``kit``
            (``""`` when ``None``); it may be given with ``insecure`` too.
        state_dir: The site's state directory (``fed-client start --state``): the
            SuperNode's ``FLWR_HOME``, its default log place and the ClientApp's state (node
            config ``state-dir``); ``None`` uses the site config's ``state_dir`` or
            ``./fedcore-site-ID`` (:func:`fedcore.site_paths.site_state_dir`).
        log_file: SuperNode log; ``None`` is ``STATE/logs/supernode.log``.
        startup_timeout: Seconds the SuperNode gets to answer its health check.
        refused_retry_for: Seconds to keep starting the SuperNode again, every
            :data:`REFUSED_RETRY_DELAY` s, while the coordinator refuses the node key
            (a coordinator still registering keys, or this node's previous connection not
            timed out yet); then give up. ``0`` gives up at the first refusal.
    """

    site_path: Path
    host: str
    port: int
    security: SiteSecurity | None = None
    insecure: bool = False
    kit_dir: Path | None = None
    state_dir: Path | None = None
    log_file: Path | None = None
    startup_timeout: float = 120.0
    refused_retry_for: float = 90.0


#: Seconds between two SuperNode starts while the coordinator refuses the node key.
REFUSED_RETRY_DELAY = 5.0

_REFUSED = re.compile(r"\[code: 200[14]\]")
_TLS_VERIFY = re.compile(r"CERTIFICATE_VERIFY_FAILED[^\n]*", re.IGNORECASE)
_TLS_NAME = re.compile(r"(hostname|ip address) mismatch", re.IGNORECASE)
_TLS_PROTOCOL = re.compile(
    r"WRONG_VERSION_NUMBER|RECORD_LAYER_FAILURE|PACKET_LENGTH_TOO_LONG|"
    r"Server disconnected without sending a response",
    re.IGNORECASE,
)


#: What Flower 1.42's SuperNode logs (at WARNING) for every failed connection attempt, whatever
#: the cause; the cause itself is logged at DEBUG only.
_CONNECT_FAILED = "Connection attempt failed"

#: Seconds between two TLS probes of the coordinator while an ``--insecure`` SuperNode fails.
TLS_PROBE_INTERVAL = 5.0


def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether the server at ``host:port`` completes a TLS handshake (certificate not checked).

    A SuperNode started with ``--insecure`` against a TLS coordinator only logs "Connection
    attempt failed", as it does when nothing listens there; this probe tells the two apart.
    It sends no credentials and trusts nothing it receives: it only learns which protocol
    the server speaks.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # gRPC servers offer HTTP/2 only
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError: no TLS, or nothing there
        return False


def _supernode_failure(
    log_text: str,
    site_id: str,
    coordinator: str,
    security: SiteSecurity | None,
    *,
    tls_server: bool = False,
) -> tuple[str, bool] | None:
    """Explain why a SuperNode could not connect; ``(message, retry)`` or ``None`` if unknown.

    ``tls_server`` says that a probe found the coordinator speaking TLS (see :func:`speaks_tls`).
    """
    if security is None and (tls_server or _TLS_PROTOCOL.search(log_text)):
        return (
            f"the coordinator at {coordinator} speaks TLS, but this site was started with "
            "--insecure (no TLS), so it can never connect. Fix: start it with --kit "
            f"KITS/{site_id} (this site's kit from the consortium's `fedcore provision`) "
            "instead of --insecure",
            False,
        )
    if _REFUSED.search(log_text):
        if security is None:
            return (
                f"the coordinator {coordinator} requires node authentication: this site needs "
                "its kit (--kit KITS/SITE-ID) instead of --insecure",
                False,
            )
        fingerprint = node_key_fingerprint(security.node_public_key)
        return (
            f"the coordinator {coordinator} refused this site's node key {fingerprint}. Either "
            f"the key is not registered there (the coordinator kit's nodes/{site_id}.pub must be "
            f"this kit's node.pub, {security.node_public_key}; fed-coordinator registers the "
            "kit's keys when it starts, so restart it after provisioning), or a node with this "
            "key is connected already (another fed-client with this kit, or one stopped less "
            "than a minute ago)",
            True,
        )
    verify = _TLS_VERIFY.search(log_text)
    if verify and security is not None:
        host = coordinator.rsplit(":", 1)[0].strip("[]")
        if _TLS_NAME.search(verify.group(0)):
            return (
                f"the coordinator's TLS certificate does not name {host}: connect with a host "
                "name the certificate lists (--coordinator HOST:PORT, as the consortium "
                f"operator provisioned it), or ask the operator to provision it for {host}",
                False,
            )
        return (
            f"the coordinator {coordinator} presents a TLS certificate that this site's CA "
            f"({security.ca_cert}) did not sign: the site kit and the coordinator kit come "
            "from different provisionings, or --coordinator points at another server. Fix: use "
            "the site kit written by the same `fedcore provision` run as the coordinator's",
            False,
        )
    if _TLS_PROTOCOL.search(log_text):
        return (
            f"the coordinator {coordinator} does not speak TLS (was it started with "
            "--insecure?); a site with a kit only connects with TLS",
            False,
        )
    return None


#: Seconds before a SuperNode that lost its coordinator is started again.
RECONNECT_DELAY = 2.0


def _lost_coordinator(code: int | None, log_text: str, coordinator: str) -> str:
    """Why a SuperNode that had connected left, for the notice that it connects again."""
    if "401" in log_text or "Unauthorized" in log_text:
        why = "the coordinator no longer knows this node (it restarted)"
    else:
        why = f"the SuperNode exited with code {code}"
    return f"lost the coordinator {coordinator}: {why}; connecting again in {RECONNECT_DELAY:.0f} s"


def _ignore(_: Any) -> None:
    pass


def _check_options(opts: SiteOptions) -> tuple[SiteConfig, list[str]]:
    """Load the site config and check the kit: ``(site, warnings)``."""
    security = opts.security
    check_transport(opts.host, insecure=opts.insecure, action="connect to")
    try:
        site = load_site_config(opts.site_path)
    except ConfigError as exc:
        raise DeploymentConfigError(str(exc)) from None
    if opts.insecure and security is not None:
        raise DeploymentConfigError(
            "insecure=True and security=... exclude each other: without TLS the node key "
            "is never used. Drop one of them"
        )
    if security is None and not opts.insecure:
        raise DeploymentConfigError(NO_KIT_MESSAGE.format(cmd="fed-client", kit=f"KITS/{site.id}"))
    if security is None:
        return site, []
    if security.site_id is not None and security.site_id != site.id:
        where = f" {opts.kit_dir}" if opts.kit_dir is not None else ""
        raise DeploymentConfigError(
            f"the kit{where} was provisioned for site {security.site_id!r}, but the "
            f"site config {opts.site_path} is site {site.id!r}: expected this site's "
            f"own kit. Fix: pass --kit with the kit of {site.id!r} (KITS/{site.id})"
        )
    return site, security.check()


def serve_site(opts: SiteOptions, *, on_event: OnEvent | None = None) -> NoReturn:
    """Run one site's SuperNode until Ctrl-C / SIGTERM (``fed-client start``).

    The SuperNode gets ``--node-config "site-config='ABS_PATH' kit='KIT_DIR'
    state-dir='STATE'"``: the paths are all that reaches the ClientApp, and they stay on
    this machine. ``STATE`` is :func:`fedcore.site_paths.site_state_dir`, the one state
    directory of the site (Flower home, logs, the ClientApp's model copy and exports). With
    :class:`SiteSecurity` it trusts only the consortium CA (``--root-certificates``) and
    signs its requests with the node key (``--auth-supernode-private-key``).

    Args:
        opts: What to run; see :class:`SiteOptions`.
        on_event: Receives each line of progress.

    Raises:
        DeploymentConfigError: a bad site file, kit or address (a kit of another site
            included); nothing was started.
        DeploymentError: the SuperNode died or the coordinator refused it (the message
            says why).
        DeploymentInterrupted: Ctrl-C or SIGTERM, after the SuperNode was stopped.
    """
    emit = on_event or _ignore
    security = opts.security
    site, warnings = _check_options(opts)
    state_dir = site_state_dir(site, opts.state_dir)
    node_config = config_args(
        {
            "site-config": str(opts.site_path.resolve()),
            "kit": str(opts.kit_dir.resolve()) if opts.kit_dir is not None else "",
            STATE_DIR_KEY: str(state_dir),
        }
    )
    for warning in warnings:
        emit(Event(warning, "warning"))
    site_path = opts.site_path.resolve()
    log_file = (opts.log_file or state_dir / "logs" / "supernode.log").resolve()
    coordinator = format_address(opts.host, opts.port)
    env = flower_env(state_dir / "flwr-home")
    if security is None:
        transport = "insecure: no TLS, no node key, loopback only"
        auth_args = ["--insecure"]
    else:
        transport = f"TLS, node key {node_key_fingerprint(security.node_public_key)}"
        auth_args = [
            "--root-certificates",
            str(security.ca_cert.resolve()),
            "--auth-supernode-private-key",
            str(security.node_private_key.resolve()),
        ]
    emit(Event(f"fed-client  site {site.id} → coordinator {coordinator} ({transport})", "heading"))
    emit(Event(f"  site config  {site_path} (stays on this machine)"))
    if opts.kit_dir is not None:
        emit(Event(f"  kit          {opts.kit_dir.resolve()}"))
    emit(Event(f"  logs         {log_file}"))

    # imported here: `python -m ...flower_runtime` loads this package first, and must not
    # find that module imported already (it would run as a second copy)
    from fedcore.engines.deployment.flower_runtime import AppApproval, internals_problems

    problems = internals_problems()
    if problems:
        # Flower's own SuperExec would run the ClientApp of whatever bundle a run brings.
        raise DeploymentError(
            "cannot serve this site safely with the installed Flower: fedcore's ClientApp "
            "worker, which runs only this site's installed code and only for approved app "
            "bundles, needs Flower internals that changed (" + "; ".join(problems) + "), and "
            "Flower's own SuperNode would run the code of any bundle the coordinator sends. "
            "Install the Flower release fedcore pins (flwr 1.42)"
        )
    worker_log = log_file.parent / f"clientapp-worker-{site.id}.log"
    emit(Event(f"  worker log   {worker_log}"))
    approval = AppApproval.for_site(site.approved_apps)
    if approval.configured:
        emit(Event(f"  approved     app bundles (approved_apps) {approval.describe()}"))
    else:
        emit(Event(f"  approved     app bundle sha256 {approval.own} (this site's fedcore)"))

    procs: list[ManagedProcess] = []
    first_refusal: float | None = None
    with sigterm_as_interrupt():
        try:
            while True:
                supernode, log_offset, runtime_port = _start_supernode(
                    site.id,
                    coordinator,
                    auth_args,
                    node_config,
                    log_file,
                    env,
                    opts,
                    procs,
                    emit,
                )
                worker = None
                if supernode.poll() is None:
                    worker = WorkerSupervisor(
                        site.id,
                        f"127.0.0.1:{runtime_port}",
                        worker_log,
                        env,
                        procs,
                        emit,
                        approved_apps=site.approved_apps,
                    )
                    worker.start()
                code, log_text, connected, tls_server = _watch_supernode(
                    supernode,
                    log_offset,
                    coordinator,
                    emit,
                    probe=(opts.host, opts.port) if security is None else None,
                    worker=worker,
                )
                stop_processes(procs)
                procs.clear()
                if connected:  # it was in once: a later refusal gets a fresh retry window
                    first_refusal = None
                failure = _supernode_failure(
                    log_text, site.id, coordinator, security, tls_server=tls_server
                )
                if failure is None and connected:
                    # It was in, then left: the coordinator restarted (its SuperLink keeps no
                    # state across restarts and answers this node's heartbeat with 401), or
                    # the connection broke for good. A service reconnects by itself.
                    emit(Event(_lost_coordinator(code, log_text, coordinator), "notice"))
                    time.sleep(RECONNECT_DELAY)
                    continue
                if failure is None:
                    raise DeploymentError(
                        with_tail(f"the SuperNode exited with code {code}", log_file)
                    )
                reason, retry = failure
                now = time.monotonic()
                first_refusal = now if first_refusal is None else first_refusal
                left = opts.refused_retry_for - (now - first_refusal)
                if not retry or left <= 0:
                    raise DeploymentError(f"{reason}\n  (SuperNode log: {log_file})")
                emit(
                    Event(
                        f"{reason}; trying again in {REFUSED_RETRY_DELAY:.0f} s "
                        f"(for {left:.0f} s more)",
                        "notice",
                    )
                )
                time.sleep(REFUSED_RETRY_DELAY)
        except DeploymentConfigError as exc:  # found once running: the SuperNode failed
            raise DeploymentError(str(exc)) from None
        except KeyboardInterrupt as exc:
            raise DeploymentInterrupted(str(exc) or "Ctrl-C") from None
        finally:
            with deferred_signals(reraise=False):  # already stopping: a second Ctrl-C waits
                stop_processes(procs)


def _start_supernode(
    site_id: str,
    coordinator: str,
    auth_args: Sequence[str],
    node_config: str,
    log_file: Path,
    env: Mapping[str, str],
    opts: SiteOptions,
    procs: list[ManagedProcess],
    emit: OnEvent,
    *,
    own_worker: bool = True,
) -> tuple[ManagedProcess, int, int]:
    """Start the SuperNode with its Runtime API on a free loopback port.

    With ``own_worker`` it runs through :func:`~.flower_runtime.supernode_main` (shortened
    waits) with ``--isolation process``: it starts no SuperExec, and the site's
    :class:`WorkerSupervisor` serves its tasks. Without, it is Flower's stock
    ``flower-supernode`` (its SuperExec starts one ``flwr-clientapp`` per message).

    Returns:
        The process, its log offset and the Runtime API port.
    """
    if own_worker:
        command = [sys.executable, "-m", RUNTIME_MODULE, "supernode", "--isolation", "process"]
    else:
        command = [flower_command("flower-supernode")]
    for attempt in range(3):
        port = free_port("127.0.0.1")
        try:
            log_offset = log_file.stat().st_size
        except OSError:
            log_offset = 0
        supernode = ManagedProcess.start(
            f"SuperNode {site_id}",
            [
                *command,
                *auth_args,
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
            stop_processes([supernode])
            procs.remove(supernode)
            if attempt == 2:
                raise
            continue
        except DeploymentError:
            # It exited while starting: the caller explains why from its log.
            if supernode.poll() is None:
                raise
            return supernode, log_offset, port
        emit(Event(f"SuperNode up in {took:.1f} s (Runtime API 127.0.0.1:{port})", "ok"))
        return supernode, log_offset, port
    raise AssertionError("unreachable")


#: The module that runs the SuperNode with shortened waits, and the ClientApp worker.
RUNTIME_MODULE = "fedcore.engines.deployment.flower_runtime"

#: A worker that exits this many times within :data:`WORKER_CRASH_WINDOW` seconds ends the service.
WORKER_MAX_RESTARTS = 5
WORKER_CRASH_WINDOW = 120.0


class WorkerSupervisor:
    """Starts the site's ClientApp worker (:class:`~.flower_runtime.ClientAppWorker`) and restarts it when it exits.

    The worker holds the site's data and model between messages; if it dies (out of memory,
    a crash in a native library, ``kill``), the message it was serving gets no reply and the
    coordinator records the site as failed for that round; the next worker serves the next
    message. A worker that keeps dying (:data:`WORKER_MAX_RESTARTS` times within
    :data:`WORKER_CRASH_WINDOW` s) ends ``fed-client`` with its log's tail instead.
    """

    def __init__(
        self,
        site_id: str,
        runtime_api_address: str,
        log_path: Path,
        env: Mapping[str, str],
        procs: list[ManagedProcess],
        emit: OnEvent,
        *,
        approved_apps: Sequence[str] | None = None,
    ) -> None:
        self.site_id = site_id
        self.approved_apps = list(approved_apps) if approved_apps is not None else None
        self.address = runtime_api_address
        self.log_path = log_path
        self.env = env
        self.procs = procs
        self.emit = emit
        self.proc: ManagedProcess | None = None
        self.exits: list[float] = []

    def start(self) -> ManagedProcess:
        """Start a worker for the SuperNode's Runtime API."""
        self.proc = ManagedProcess.start(
            f"ClientApp worker {self.site_id}",
            [
                sys.executable,
                "-m",
                RUNTIME_MODULE,
                "worker",
                "--runtime-api-address",
                self.address,
                *(f"--approved-app={h}" for h in self.approved_apps or ()),
            ],
            log_path=self.log_path,
            env=self.env,
            registry=self.procs,
        )
        return self.proc

    def check(self) -> None:
        """Restart the worker if it exited.

        Raises:
            DeploymentError: it exited too often in a short time.
        """
        proc = self.proc
        if proc is None:
            return
        code = proc.poll()
        if code is None:
            proc.refresh()
            return
        now = time.monotonic()
        self.exits = [t for t in self.exits if now - t < WORKER_CRASH_WINDOW] + [now]
        if proc in self.procs:
            self.procs.remove(proc)
        if len(self.exits) > WORKER_MAX_RESTARTS:
            raise DeploymentError(
                with_tail(
                    f"the ClientApp worker exited {len(self.exits)} times within "
                    f"{WORKER_CRASH_WINDOW:.0f} s (last exit code {code}); not restarting it",
                    self.log_path,
                )
            )
        self.emit(
            Event(
                f"ClientApp worker exited with code {code}; restarting it (log: {self.log_path})",
                "notice",
            )
        )
        self.start()


#: Seconds without a connection after which ``fed-client`` says what to check.
CONNECT_HINT_AFTER = 30.0


def _watch_supernode(
    supernode: ManagedProcess,
    log_offset: int,
    coordinator: str,
    emit: OnEvent,
    *,
    probe: tuple[str, int] | None = None,
    worker: WorkerSupervisor | None = None,
) -> tuple[int | None, str, bool, bool]:
    """Follow a SuperNode until it exits, or until it is clear that it can never connect.

    Args:
        probe: ``(host, port)`` of the coordinator, for a SuperNode without TLS: while its
            connection attempts fail, the coordinator is probed for TLS every
            :data:`TLS_PROBE_INTERVAL` seconds; a TLS server ends the watch at once.
        worker: The site's ClientApp worker, restarted whenever it exits.

    Returns:
        The exit code (``None``: still running, the caller stops it), its log, whether it
        connected, whether the probe found the coordinator speaking TLS.
    """
    connected = False
    hinted = False
    probed_at: float | None = None
    while True:
        code = supernode.poll()
        if code is not None:
            return code, read_from(supernode.log_path, log_offset), connected, False
        if not connected:
            text = read_from(supernode.log_path, log_offset)
            match = re.search(r"SuperNode ID: (\d+)", text)
            if match:
                connected = True
                emit(Event(f"connected to {coordinator} as node {match.group(1)}", "ok"))
            elif (
                probe is not None
                and _CONNECT_FAILED in text
                and (probed_at is None or time.monotonic() - probed_at >= TLS_PROBE_INTERVAL)
            ):
                probed_at = time.monotonic()
                if speaks_tls(*probe):
                    return None, text, False, True
            elif not hinted and time.monotonic() - supernode.started_at > CONNECT_HINT_AFTER:
                hinted = True
                emit(
                    Event(
                        f"not connected to {coordinator} after {CONNECT_HINT_AFTER:.0f} s; still "
                        "trying. Check that fed-coordinator runs there and listens on that "
                        "address, and that both sides use TLS (--kit) or both --insecure",
                        "notice",
                    )
                )
        if worker is not None:
            worker.check()
        supernode.refresh()
        time.sleep(0.5)


# --------------------------------------------------------------------------- fedcore run
