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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcore.engines.deployment.coordinator_options import (
    CONTROL_HOST,
    RUNTIME_MODULE,
    CoordinatorOptions,
    _check_options,
    _control_port,
    _superlink_argv,
)
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
    format_address,
    local_host,
    port_is_free,
)
from fedcore.engines.deployment.processes import ManagedProcess, stop_processes, wait_until_healthy
from fedcore.engines.deployment.progress import (
    read_federation,
    remove_stale_results,
    with_tail,
)
from fedcore.engines.deployment.run_watch import OnRound, _wait_for_sites, _watch_run
from fedcore.engines.deployment.signals import deferred_signals, sigterm_as_interrupt
from fedcore.engines.deployment.status import StatusBoard
from fedcore.pki import node_key_fingerprint

__all__ = [
    "CONTROL_HOST",
    "READY_MARK",
    "RUNTIME_MODULE",
    "CoordinatorOptions",
    "OnRound",
    "serve_coordinator",
]

logger = logging.getLogger(__name__)


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


def _ignore(_: Any) -> None:
    pass


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
