"""The coordinator service (``fed-coordinator start``): a SuperLink with TLS and node keys, the sites, one run, its report.

Progress goes to ``on_event`` (lines of text) and ``on_round`` (each round record the
ServerApp appends to ``OUT/rounds.jsonl``); failures raise the typed errors of
:mod:`fedcore.engines.deployment.errors`. The command line styles the lines and picks exit codes.
The operator's endpoint (:mod:`.health`: ``/healthz``, ``/readyz``, ``/metrics``, the status
page at ``/``) reports the service's phase and the round records' figures (:mod:`.metrics`,
:mod:`.status`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcore.config import ConfigError, Scenario, load_scenario
from fedcore.engines.deployment.errors import (
    AddressInUseError,
    DeploymentConfigError,
    DeploymentError,
    DeploymentInterrupted,
    Event,
    OnEvent,
    RunFailedError,
    ServerExitedError,
)
from fedcore.engines.deployment.flower_cli import (
    APP_DIR,
    APP_FILES,
    CONNECTION_NAME,
    ControlApi,
    config_args,
    flower_command,
    flower_env,
    write_connection_config,
)
from fedcore.engines.deployment.health import HealthServer
from fedcore.engines.deployment.metrics import CoordinatorMetrics
from fedcore.engines.deployment.network import (
    check_transport,
    format_address,
    free_port,
    is_loopback_host,
    is_wildcard_host,
    local_host,
    port_is_free,
)
from fedcore.engines.deployment.processes import ManagedProcess, stop_processes, wait_until_healthy
from fedcore.engines.deployment.progress import (
    RoundsTail,
    read_federation,
    remove_stale_results,
    with_tail,
)
from fedcore.engines.deployment.security import NO_KIT_MESSAGE, CoordinatorSecurity
from fedcore.engines.deployment.signals import deferred_signals, sigterm_as_interrupt
from fedcore.engines.deployment.status import StatusBoard
from fedcore.pki import node_key_fingerprint

__all__ = ["CONTROL_HOST", "READY_MARK", "CoordinatorOptions", "serve_coordinator"]

logger = logging.getLogger(__name__)

OnRound = Callable[[dict[str, Any]], None]
"""Receives each round record (a row of ``OUT/rounds.jsonl``) as it is appended."""


@dataclass(frozen=True)
class CoordinatorOptions:
    """What ``fed-coordinator start`` was asked to do (paths are made absolute).

    Attributes:
        scenario_path: The scenario YAML.
        state_dir: ``FLWR_HOME`` and the submitted app copy. The SuperLink keeps its own state
            (nodes, runs, messages in flight) in memory: everything that must survive a
            restart is in the round driver's store under ``out_dir``, and node keys are
            registered again at each start.
        out_dir: Where the ServerApp writes results (``rounds.jsonl``, ``federation.json``).
        log_dir: Where ``superlink.log`` and ``flwr-run.log`` go.
        host: Address sites reach: the SuperLink serves its Fleet API (and ``/health``)
            there, and nothing else.
        port: Port of the Fleet API.
        control_port: Port of the SuperLink's every API (Control, Runtime, Fleet) on
            :data:`CONTROL_HOST`, for this machine only (the coordinator's Control API
            client, ``flwr run``, Flower's ServerApp); ``None`` picks a free one. The port
            is written to ``STATE/flwr-home/config.toml`` for ``flwr ls``.
        security: TLS certificates and the members' node keys; required unless ``insecure``.
        insecure: No TLS and no node authentication; accepted on a loopback address only
            (see :func:`check_transport`), and only when asked for explicitly.
        kit_dir: The coordinator kit directory, handed to the ServerApp as run-config
            ``kit`` (``""`` when ``None``); it may be given with ``insecure`` too.
        rounds: Rounds to run; ``None`` uses the scenario's.
        exit_when_done: Exit when the run ends instead of serving until Ctrl-C.
        site_timeout: Seconds to wait for every site to connect before starting the
            run with at least ``scheduler.min_sites`` sites.
        startup_timeout: Seconds the SuperLink gets to answer its health check.
        metrics_listen: ``(host, port)`` of the operator endpoint (``/healthz``, ``/readyz``,
            ``/metrics`` in Prometheus format, :mod:`.health`); ``None`` serves none.
            ``fed-coordinator start`` passes ``127.0.0.1:9093`` unless told otherwise; any
            host is accepted, and the endpoint has neither TLS nor authentication.
    """

    scenario_path: Path
    state_dir: Path
    out_dir: Path
    log_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    security: CoordinatorSecurity | None = None
    insecure: bool = False
    kit_dir: Path | None = None
    rounds: int | None = None
    exit_when_done: bool = False
    site_timeout: float = 600.0
    startup_timeout: float = 120.0
    metrics_listen: tuple[str, int] | None = None
    control_port: int | None = None


#: The loopback host of the SuperLink's Control API: Flower's Control API has no
#: authentication, so it is never served on the address sites reach.
CONTROL_HOST = "127.0.0.1"

#: The module of fedcore's SuperLink launcher (:func:`~.flower_runtime.superlink_main`).
RUNTIME_MODULE = "fedcore.engines.deployment.flower_runtime"

#: The line ``fed-coordinator`` prints once its SuperLink serves and every node key is
#: registered: sites may connect from then on (:func:`run_deployment` waits for it).
READY_MARK = "SuperLink ready on"


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
            "kit": str(opts.kit_dir) if opts.kit_dir is not None else "",
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
            with_tail(
                f"`flwr run` could not submit the run (exit code {done.returncode})", log_path
            )
        )
    return int(run_id), str(payload.get("fab-hash", ""))


def _wait_for_sites(
    control: ControlApi,
    superlink: ManagedProcess,
    scenario: Scenario,
    address: str,
    timeout: float,
    emit: OnEvent,
    insecure: bool,
    on_online: Callable[[int], None] = lambda _: None,
) -> int:
    expected = len(scenario.sites)
    site_ids = {site.id for site in scenario.sites}
    minimum = scenario.scheduler.min_sites
    start = time.monotonic()
    shown: list[str] | None = None
    online: list[str] = []
    while True:
        if superlink.poll() is not None:
            raise DeploymentError(
                with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink.log_path)
            )
        try:
            online = control.online_nodes()
        except Exception as exc:
            logger.debug("ListNodes failed: %s", exc)
            online = shown or []
        if not insecure:  # registered nodes carry their site id: count the scenario's only
            online = [name for name in online if name in site_ids]
        if online != shown:
            names = f" ({', '.join(online)})" if online else ""
            emit(Event(f"  sites connected: {len(online)}/{expected}{names}"))
            on_online(len(online))
            shown = online
        if len(online) >= expected:
            return len(online)
        waited = time.monotonic() - start
        if waited > timeout:
            if len(online) >= minimum:
                emit(
                    Event(
                        f"only {len(online)} of {expected} sites connected after "
                        f"{waited:.0f} s; starting anyway (scheduler.min_sites is {minimum})",
                        "notice",
                    )
                )
                return len(online)
            how = (
                f"--coordinator {address} --insecure"
                if insecure
                else f"--coordinator HOST:{address.rsplit(':', 1)[1]} --kit SITE-KIT"
            )
            raise DeploymentError(
                f"only {len(online)} of {expected} sites connected within {timeout:.0f} s, and "
                f"the scenario needs at least scheduler.min_sites={minimum}. Start `fed-client "
                f"start --site SITE.yaml {how}` on each site (a site refused by this coordinator "
                "says why in its own output), or raise --site-timeout"
            )
        time.sleep(0.5)


def _watch_run(
    control: ControlApi,
    run_id: int,
    superlink: ManagedProcess,
    out_dir: Path,
    on_round: OnRound,
) -> tuple[str, str, str]:
    """Report each finished round until the run finishes; return its final status."""
    tail = RoundsTail(out_dir / "rounds.jsonl")
    failures = 0
    last: tuple[str, str, str] = ("pending", "", "")
    while True:
        for row in tail.read_new():
            on_round(row)
        if superlink.poll() is not None:
            raise DeploymentError(
                with_tail(
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
                    with_tail(f"the SuperLink stopped answering: {exc}", superlink.log_path)
                ) from exc
            status = last
        if status[0] != last[0]:
            logger.info("run %d: %s", run_id, status[0])
        last = status
        if status[0] == "finished":
            for row in tail.read_new():
                on_round(row)
            return status
        time.sleep(1.0)


def _ignore(_: Any) -> None:
    pass


def _check_options(opts: CoordinatorOptions) -> tuple[Scenario, dict[str, bytes], list[str]]:
    """Load the scenario and check the kit: ``(scenario, node keys, warnings)``."""
    security = opts.security
    check_transport(opts.host, insecure=opts.insecure, action="listen on")
    try:
        scenario = load_scenario(opts.scenario_path, check_files=False)  # data lives at the sites
    except ConfigError as exc:
        raise DeploymentConfigError(str(exc)) from None
    if opts.insecure and security is not None:
        raise DeploymentConfigError(
            "insecure=True and security=... exclude each other: without TLS there is no "
            "certificate to serve and no node key to check. Drop one of them"
        )
    if security is None and not opts.insecure:
        raise DeploymentConfigError(
            NO_KIT_MESSAGE.format(cmd="fed-coordinator", kit="KITS/coordinator")
        )
    _check_metrics_address(opts)
    if opts.control_port is not None and opts.control_port == opts.port:
        raise DeploymentConfigError(
            f"the Control API port ({opts.control_port}) must differ from the port sites "
            f"reach ({opts.port}): choose another --control-port, or leave it out to pick a "
            "free one"
        )
    if security is None:
        return scenario, {}, []
    warnings = security.check(opts.host, control_host=CONTROL_HOST)
    node_keys = security.registration_keys()
    missing = [s.id for s in scenario.sites if s.id not in node_keys]
    if missing:
        raise DeploymentConfigError(
            f"scenario site(s) {', '.join(missing)} have no node public key in the "
            f"coordinator kit (nodes/<site-id>.pub holds {', '.join(sorted(node_keys))}), "
            "so they could never connect. Fix: add the sites to the consortium file and "
            "provision again, or run a scenario with the kit's sites"
        )
    return scenario, node_keys, warnings


def _check_metrics_address(opts: CoordinatorOptions) -> None:
    if opts.metrics_listen is None:
        return
    host, port = opts.metrics_listen
    same_host = host == opts.host or is_wildcard_host(host) or is_wildcard_host(opts.host)
    if port == opts.port and same_host:
        raise DeploymentConfigError(
            f"the metrics endpoint ({format_address(host, port)}) and the SuperLink "
            f"({format_address(opts.host, opts.port)}) cannot share a port; choose another "
            "with --metrics-listen HOST:PORT (default 127.0.0.1:9093) or turn it off with "
            "--metrics-listen off"
        )


def _superlink_argv(opts: CoordinatorOptions, control_port: int | None) -> list[str]:
    """The SuperLink's command: fedcore's launcher with the Fleet API alone on ``opts.host``,
    everything on :data:`CONTROL_HOST`:``control_port``; ``None``: Flower's own command on
    ``opts.host`` (a loopback host only, see :func:`_control_port`)."""
    security = opts.security
    if control_port is None:
        argv = [flower_command("flower-superlink")]
        host, port = opts.host, opts.port
    else:
        fleet = format_address(opts.host, opts.port)
        argv = [sys.executable, "-m", RUNTIME_MODULE, "superlink", "--fleet-listen", fleet]
        host, port = CONTROL_HOST, control_port
    if security is None:
        argv += ["--insecure"]
    else:
        argv += [
            "--ssl-ca-certfile",
            str(security.ca_cert.resolve()),
            "--ssl-certfile",
            str(security.server_cert.resolve()),
            "--ssl-keyfile",
            str(security.server_key.resolve()),
            "--enable-supernode-auth",
        ]
    return argv + [
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def _control_port(opts: CoordinatorOptions, emit: OnEvent) -> int | None:
    """The loopback port of the Control API (``None``: Flower's SuperLink on ``opts.host``).

    Raises:
        DeploymentError: this Flower's internals moved, so the Control API cannot be kept
            off a non-loopback ``opts.host``.
        AddressInUseError: ``opts.control_port`` is taken.
    """
    from fedcore.engines.deployment.flower_runtime import superlink_internals_problems

    problems = superlink_internals_problems()
    if problems:
        if not is_loopback_host(opts.host):
            raise DeploymentError(
                f"cannot serve the SuperLink on {opts.host} with its Control API kept on "
                f"loopback: the Flower internals fedcore's launcher uses changed "
                f"({'; '.join(problems)}). Flower's own SuperLink would serve its Control "
                "API, which has no authentication, to everyone who reaches the sites' "
                "address. Install the Flower release fedcore pins (flwr 1.42), or listen on "
                "127.0.0.1 behind a TLS proxy that forwards only /v1/fleet/ and /health"
            )
        emit(
            Event(
                "Flower's own SuperLink on a loopback address (fedcore's launcher needs "
                "Flower internals that changed: " + "; ".join(problems) + ")",
                "warning",
            )
        )
        return None
    if opts.control_port is None:
        port = free_port(CONTROL_HOST)
        while port == opts.port:  # free now, but the sites' port is about to be taken
            port = free_port(CONTROL_HOST)
        return port
    if not port_is_free(CONTROL_HOST, opts.control_port):
        raise AddressInUseError(
            f"{format_address(CONTROL_HOST, opts.control_port)} (the SuperLink's Control API) "
            "is already in use; choose another port with --control-port, or leave it out "
            "to pick a free one"
        )
    return opts.control_port


def serve_coordinator(
    opts: CoordinatorOptions,
    *,
    on_event: OnEvent | None = None,
    on_round: OnRound | None = None,
) -> None:
    """Run a SuperLink, wait for the sites, run the scenario, report (``fed-coordinator start``).

    Args:
        opts: What to run; see :class:`CoordinatorOptions`.
        on_event: Receives each line of progress (start-up, sites, submission, outcome).
        on_round: Receives each round record as the ServerApp appends it to ``rounds.jsonl``.
            The same records feed the ``/metrics`` endpoint and the status page
            (``opts.metrics_listen``), which
            serves from before the SuperLink starts until every process was stopped.

    Returns:
        Only with ``exit_when_done``, once the run completed. Without it the service keeps
        serving after the run (a failed run is reported as a ``failed`` event) until
        Ctrl-C / SIGTERM or the SuperLink's exit.

    Raises:
        DeploymentConfigError: bad options, scenario or kit; nothing was started.
        AddressInUseError: the address to listen on (SuperLink or metrics endpoint) is taken.
        RunFailedError: the run failed (with ``exit_when_done``).
        ServerExitedError: the SuperLink exited while serving after the run.
        DeploymentInterrupted: Ctrl-C or SIGTERM, after every process was stopped.
        DeploymentError: a process could not start or died, or the SuperLink refused a key.
    """
    emit = on_event or _ignore
    metrics = CoordinatorMetrics()
    security = opts.security
    scenario, node_keys, warnings = _check_options(opts)
    rounds = opts.rounds or scenario.rounds
    dp = scenario.privacy.dp
    board = StatusBoard(
        scenario.name,
        [site.id for site in scenario.sites],
        privacy_mode=scenario.privacy.mode,
        dp=dp is not None,
        delta=dp.delta if dp is not None else None,
        planned_rounds=rounds,
    )

    def round_done(record: dict[str, Any]) -> None:
        metrics.observe(record)
        board.observe(record)
        (on_round or _ignore)(record)

    def sites_online(count: int) -> None:
        metrics.set_connected(count)
        board.set_connected(count)

    for warning in warnings:
        emit(Event(warning, "warning"))

    address = format_address(opts.host, opts.port)
    local = format_address(local_host(opts.host), opts.port)  # how this machine reaches it
    control_port = _control_port(opts, emit)
    # where the Control API is: loopback, or (Flower's own SuperLink) the one address
    control_address = local if control_port is None else format_address(CONTROL_HOST, control_port)
    if not port_is_free(opts.host, opts.port):
        raise AddressInUseError(
            f"{address} is already in use (another fed-coordinator?); "
            "choose another port with --listen HOST:PORT"
        )
    health: HealthServer | None = None
    if opts.metrics_listen is not None:
        health = HealthServer(metrics, *opts.metrics_listen, board=board)
        if not port_is_free(health.host, health.port):
            raise AddressInUseError(
                f"{health.address} (metrics endpoint) is already in use; choose another with "
                "--metrics-listen HOST:PORT, or turn it off with --metrics-listen off"
            )

    for path in (opts.state_dir, opts.out_dir, opts.log_dir):
        path.mkdir(parents=True, exist_ok=True)
    flwr_home = opts.state_dir / "flwr-home"
    ca_cert = security.ca_cert.resolve() if security is not None else None
    write_connection_config(flwr_home, control_address, ca_cert)
    env = flower_env(flwr_home)
    superlink_log = opts.log_dir / "superlink.log"
    emit(
        Event(
            f"fed-coordinator  scenario {scenario.name}: {len(scenario.sites)} sites, "
            f"{rounds} rounds, min_sites {scenario.scheduler.min_sites}",
            "heading",
        )
    )
    if security is None:
        transport = "insecure: no TLS, no node authentication, loopback only"
    else:
        transport = f"TLS, node authentication; {len(node_keys)} member node key(s)"
    emit(Event(f"  listen   {address} ({transport})"))
    if control_port is not None:
        emit(
            Event(
                f"  control  {control_address} (Control API, this machine only; {address} "
                "serves the Fleet API only)"
            )
        )
    if opts.kit_dir is not None:
        emit(Event(f"  kit      {opts.kit_dir}"))
    emit(Event(f"  state    {opts.out_dir} (rounds; the SuperLink's own state is in memory)"))
    emit(Event(f"  results  {opts.out_dir}"))
    emit(Event(f"  logs     {superlink_log}"))
    emit(Event(f"  inspect  FLWR_HOME={shlex.quote(str(flwr_home))} flwr ls {CONNECTION_NAME}"))
    if health is not None:
        emit(Event(f"  metrics  http://{health.address}/metrics (and /healthz, /readyz)"))
        emit(Event(f"  status   http://{health.address}/"))

    argv = _superlink_argv(opts, control_port)
    procs: list[ManagedProcess] = []
    control: ControlApi | None = None
    run_id: int | None = None
    finished = False
    with sigterm_as_interrupt():
        try:
            if health is not None:
                health.start()
            t0 = time.monotonic()
            superlink = ManagedProcess.start(
                "SuperLink", argv, log_path=superlink_log, env=env, registry=procs
            )
            took = wait_until_healthy(
                superlink,
                control_address,
                timeout=opts.startup_timeout,
                what="the SuperLink",
                ca_cert=ca_cert,
            )
            if control_address != local:  # the sites' address answers too (Fleet API, /health)
                took += wait_until_healthy(
                    superlink, local, timeout=30.0, what="the SuperLink", ca_cert=ca_cert
                )
            control = ControlApi(control_address, flwr_home, ca_cert)
            if security is not None:
                registered, _kept, dropped = control.sync_nodes(node_keys)
                for site_id in sorted(node_keys):
                    how = "registered" if site_id in registered else "already registered"
                    fingerprint = node_key_fingerprint(security.node_public_keys[site_id])
                    emit(Event(f"  node key {site_id}: {fingerprint} ({how})"))
                if dropped:
                    emit(
                        Event(
                            "unregistered node(s) whose key is no longer in the kit: "
                            + ", ".join(dropped),
                            "notice",
                        )
                    )
            emit(Event(f"{READY_MARK} {address} in {took:.1f} s", "ok"))
            metrics.set_phase("waiting_sites")
            online = _wait_for_sites(
                control,
                superlink,
                scenario,
                address,
                opts.site_timeout,
                emit,
                opts.insecure,
                on_online=sites_online,
            )
            metrics.set_phase("submitting")
            emit(Event(f"{online} site(s) connected after {time.monotonic() - t0:.1f} s", "ok"))

            removed = remove_stale_results(opts.out_dir)
            if removed:
                emit(Event(f"  removed results of an earlier run: {', '.join(removed)}"))
            app_dir, bundle = _copy_app(opts.state_dir)
            # The sites are there: the round driver need not wait long for them again.
            wait_sites = 30.0 if online >= len(scenario.sites) else 0.0
            run_id, fab_hash = _submit_run(opts, app_dir, env, wait_sites)
            if not bundle.startswith(fab_hash):  # `flwr run` shows the hash's first 8 digits
                raise DeploymentError(
                    f"`flwr run` submitted app bundle {fab_hash}..., not the bundle built "
                    f"from {app_dir} (sha256 {bundle}); see {opts.log_dir / 'flwr-run.log'}"
                )
            emit(Event(f"run {run_id} submitted (app bundle sha256 {bundle})", "ok"))
            metrics.set_phase("running")

            status, sub_status, details = _watch_run(
                control, run_id, superlink, opts.out_dir, round_done
            )
            finished = True
            failure = _report(status, sub_status, details, opts, superlink, emit)
            metrics.set_phase("completed" if failure is None else "failed")
            if opts.exit_when_done:
                if failure is not None:
                    raise RunFailedError(failure)
                return
            if failure is not None:
                emit(Event(failure, "failed"))
            emit(Event("still serving; press Ctrl-C to stop"))
            while superlink.poll() is None:
                time.sleep(1.0)
            raise ServerExitedError(
                with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink_log)
            )
        except DeploymentConfigError as exc:  # found once running: the run failed, not the usage
            raise DeploymentError(str(exc)) from None
        except KeyboardInterrupt as exc:
            raise DeploymentInterrupted(str(exc) or "Ctrl-C") from None
        finally:
            with deferred_signals(reraise=False):  # already stopping: a second Ctrl-C waits
                if control is not None and run_id is not None and not finished:
                    with contextlib.suppress(Exception):
                        control.stop_run(run_id)
                if control is not None:
                    control.close()
                try:
                    stop_processes(procs)
                finally:
                    metrics.set_down()
                    if health is not None:
                        health.stop()
                logger.info("coordinator processes stopped")


def _copy_app(state_dir: Path) -> tuple[Path, str]:
    """A fresh copy of the Flower app in ``STATE/app``, for ``flwr run``; ``(dir, sha256)``.

    Only the app's files (:data:`~.flower_cli.APP_FILES`) are copied, so nothing else in the
    installed directory (a ``__pycache__``, an editor's backup) reaches the bundle; the
    bundle Flower builds from the copy is checked to be the one each site approves by
    default (:func:`~.flower_runtime.app_bundle` of the same installed files).
    """
    from fedcore.engines.deployment.flower_runtime import app_bundle, bundle_hash, directory_bundle

    missing = [name for name in APP_FILES if not (APP_DIR / name).is_file()]
    if missing:
        raise DeploymentError(
            f"the Flower app directory {APP_DIR} lacks {', '.join(missing)}; the fedcore "
            "installation is incomplete (package data missing): reinstall fedcore"
        )
    app_dir = state_dir / "app"
    shutil.rmtree(app_dir, ignore_errors=True)
    app_dir.mkdir(parents=True)
    for name in APP_FILES:
        shutil.copyfile(APP_DIR / name, app_dir / name)
    submitted = bundle_hash(directory_bundle(app_dir))
    approved = bundle_hash(app_bundle())
    if submitted != approved:  # Flower's builder changed, or the copy did
        raise DeploymentError(
            f"the app bundle built from {app_dir} (sha256 {submitted}) is not the one sites "
            f"build from their installed fedcore (sha256 {approved}), so they would refuse "
            "the run: reinstall fedcore, or report this as a bug"
        )
    return app_dir, submitted


def _report(
    status: str,
    sub_status: str,
    details: str,
    opts: CoordinatorOptions,
    superlink: ManagedProcess,
    emit: OnEvent,
) -> str | None:
    """Report a completed run as an event; return why it failed, or ``None``."""
    federation = read_federation(opts.out_dir)
    if (
        sub_status == "completed"
        and federation is not None
        and federation.get("status") == "completed"
    ):
        n = len(federation.get("rounds") or [])
        if federation.get("model"):
            where = f"model {opts.out_dir / str(federation['model'])}"
        else:  # ckks: the coordinator never held the model in clear
            where = "the model stays at the sites (each in its state directory, under global/)"
        emit(Event(f"run completed: {n} rounds; {where}", "ok"))
        return None
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
    return with_tail(f"run failed: {reason}", superlink.log_path, lines=40)
