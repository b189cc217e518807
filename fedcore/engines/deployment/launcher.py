"""``fedcore run --engine deployment``: the production commands, one coordinator and one client per site, launched on loopback.

:func:`run_deployment` starts ``fed-coordinator start`` and one ``fed-client start`` per
site as subprocesses, exactly as operators would, tails ``OUT/rounds.jsonl`` for
progress and returns the parsed ``OUT/federation.json``. It reads the commands' exit
codes (:mod:`fedcore.exit_codes`), the contract of the commands it launches.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from fedcore.config import Scenario, load_scenario
from fedcore.engines.deployment.coordinator import READY_MARK
from fedcore.engines.deployment.errors import DeploymentError
from fedcore.engines.deployment.network import format_address, free_port
from fedcore.engines.deployment.processes import DEFAULT_GRACE, ManagedProcess, stop_processes
from fedcore.engines.deployment.progress import (
    RoundsTail,
    read_federation,
    read_from,
    remove_stale_results,
    with_tail,
)
from fedcore.engines.deployment.security import DeploymentSecurity
from fedcore.engines.deployment.signals import deferred_signals, sigterm_as_interrupt
from fedcore.exit_codes import EXIT_ADDRESS_IN_USE, EXIT_INTERRUPTED, EXIT_OK
from fedcore.round_record import RoundRecord

__all__ = ["run_deployment"]

logger = logging.getLogger(__name__)


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


def _check_site_kits(scenario: Scenario, security: DeploymentSecurity) -> dict[str, Path]:
    coordinator_kit = Path(security.coordinator_kit)
    if not coordinator_kit.is_dir():
        raise DeploymentError(
            f"the coordinator kit {coordinator_kit} is not a directory: expected the "
            "`coordinator` directory written by `fedcore provision`"
        )
    wanted = [s.id for s in scenario.sites]
    missing = [s for s in wanted if s not in security.site_kits]
    if missing:
        raise DeploymentError(
            f"security.site_kits must hold a kit for every scenario site ({', '.join(wanted)}); "
            f"missing: {', '.join(missing)}"
        )
    kits = {}
    for site_id in wanted:
        path = Path(security.site_kits[site_id]).resolve()
        if not path.is_dir():
            raise DeploymentError(f"site {site_id!r}: the site kit {path} is not a directory")
        kits[site_id] = path
    return kits


@dataclass(frozen=True)
class _Launch:
    """What every attempt of :func:`run_deployment` launches."""

    scenario: Scenario
    scenario_path: Path
    out_dir: Path
    log_dir: Path
    rounds: int | None
    sites: Mapping[str, Path]
    coordinator_kit: Path | None
    site_kits: Mapping[str, Path]
    insecure: bool
    on_round: Callable[[RoundRecord], None] | None
    deadline: float
    timeout: float


def run_deployment(
    scenario_path: Path,
    out_dir: Path,
    *,
    rounds: int | None,
    site_configs: Mapping[str, Path],
    security: DeploymentSecurity | None = None,
    insecure: bool = False,
    on_round: Callable[[RoundRecord], None] | None = None,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run a scenario with real Flower processes on loopback (``fedcore run --engine deployment``).

    Launches the production commands as subprocesses, exactly as operators would:
    ``fed-coordinator start --scenario FILE --state OUT/deployment/coordinator
    --listen 127.0.0.1:PORT --kit KITS/coordinator --exit-when-done --out OUT
    --log-dir OUT/logs --metrics-listen off`` and, once it reports its SuperLink ready (node keys
    registered), one ``fed-client start --site SITE.yaml --coordinator
    127.0.0.1:PORT --kit KITS/SITE`` per site. Their output goes to ``OUT/logs/``; each
    site keeps its state (Flower home, model copy, exports) in its site config's
    ``state_dir``, the one directory :func:`fedcore.site_paths.site_state_dir` resolves.
    Every process is stopped before this function returns or raises, also on
    KeyboardInterrupt and SIGTERM.

    Args:
        scenario_path: The scenario YAML.
        out_dir: Results directory (``rounds.jsonl``, ``federation.json``,
            ``model.safetensors``, ``logs/``). Results of an earlier run there are removed.
        rounds: Rounds to run; ``None`` uses the scenario's.
        site_configs: Site id -> site config YAML, one per scenario site.
        security: The provisioned kits: TLS and node authentication (the default way).
        insecure: Run without TLS and node keys (``--insecure``, loopback). Required when
            ``security`` is ``None``; with both, the kits only reach the apps (run-config and
            node-config ``kit``) and the traffic stays unencrypted.
        on_round: Called with each object the coordinator appends to ``rounds.jsonl``.
        timeout: Seconds the whole federation may take, start-up included.

    Returns:
        The parsed ``OUT/federation.json`` of a completed run.

    Raises:
        fedcore.config.ConfigError: if the scenario file is invalid.
        DeploymentError: if neither ``security`` nor ``insecure`` is given, a process could
            not start, the run failed, too few sites remain, or ``timeout`` passed; the
            message includes the log tail.
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after stopping every process.
    """
    scenario_path = Path(scenario_path).resolve()
    out_dir = Path(out_dir).resolve()
    scenario = load_scenario(scenario_path, check_files=False)
    sites = _check_site_configs(scenario, site_configs)
    if security is None and not insecure:
        raise DeploymentError(
            "run_deployment needs the provisioned kits (security=DeploymentSecurity(...), from "
            "`fedcore provision`) for TLS and node authentication, or insecure=True to run "
            "without them on loopback"
        )
    site_kits = _check_site_kits(scenario, security) if security is not None else {}
    if rounds is not None and rounds < 1:
        raise DeploymentError(
            f"rounds must be at least 1 (or None: the scenario's), found {rounds}"
        )
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_results(out_dir)
    launch = _Launch(
        scenario=scenario,
        scenario_path=scenario_path,
        out_dir=out_dir,
        log_dir=log_dir,
        rounds=rounds,
        sites=sites,
        coordinator_kit=Path(security.coordinator_kit).resolve() if security else None,
        site_kits=site_kits,
        insecure=insecure,
        on_round=on_round,
        deadline=time.monotonic() + timeout,
        timeout=timeout,
    )
    with sigterm_as_interrupt():
        for _attempt in range(3):
            port = free_port("127.0.0.1")
            procs: list[ManagedProcess] = []
            try:
                result = _run_once(launch, port, procs)
            finally:
                with deferred_signals():
                    stop_processes(procs, grace=DEFAULT_GRACE + 10.0)
            if result is not None:
                return result
            logger.warning("port %d was taken before the SuperLink bound it; retrying", port)
    raise DeploymentError("could not find a free port on 127.0.0.1 for the SuperLink after 3 tries")


#: Variables that set how many threads a site's torch (OpenMP / MKL) computes with.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _site_env(env: Mapping[str, str], sites: int) -> dict[str, str]:
    """The environment of the sites' ``fed-client``: this machine's cores shared among the sites.

    On one machine every site trains at the same time; torch's default of one thread per
    core in each site would put ``sites`` times as many busy threads as cores, and OpenMP
    threads that wait for a core spin. Each site gets ``cores // sites`` threads (at least
    one) unless the caller set the variables. Small models give bit-identical results with
    any thread count (the engine-equivalence test holds the deployment and in-process
    models equal).
    """
    out = dict(env)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, sites)))
    for name in THREAD_VARIABLES:
        out.setdefault(name, threads)
    return out


def _run_once(launch: _Launch, port: int, procs: list[ManagedProcess]) -> dict[str, Any] | None:
    """One attempt of :func:`run_deployment`; ``None`` means "port taken, retry"."""
    address = format_address("127.0.0.1", port)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    state = launch.out_dir / "deployment"
    log_dir = launch.log_dir
    transport = ["--insecure"] if launch.insecure else []
    argv = _python_module("fedcore.cli.coordinator_cmd") + [
        "start",
        "--scenario",
        str(launch.scenario_path),
        "--state",
        str(state / "coordinator"),
        "--listen",
        address,
        *transport,
        *(["--kit", str(launch.coordinator_kit)] if launch.coordinator_kit else []),
        "--exit-when-done",
        "--out",
        str(launch.out_dir),
        "--log-dir",
        str(log_dir),
        # no operator endpoint: a fixed default port would clash between concurrent runs
        "--metrics-listen",
        "off",
        "--site-timeout",
        str(max(30.0, min(120.0, launch.timeout / 4))),
    ]
    if launch.rounds is not None:
        argv += ["--rounds", str(launch.rounds)]
    coordinator_log = log_dir / "fed-coordinator.log"
    # The log is appended to across runs in the same OUT: look for the mark of this start only
    # (an earlier run's mark let the sites start before their keys were registered).
    log_offset = coordinator_log.stat().st_size if coordinator_log.exists() else 0
    coordinator = ManagedProcess.start(
        "fed-coordinator", argv, log_path=coordinator_log, env=env, registry=procs
    )
    if not launch.insecure:
        # Sites connect only once their node keys are registered, or they would be refused.
        while READY_MARK not in read_from(coordinator.log_path, log_offset):
            code = coordinator.poll()
            if code is not None:
                if code == EXIT_ADDRESS_IN_USE:
                    return None
                return _outcome(code, launch.out_dir, coordinator)
            if time.monotonic() > launch.deadline:
                raise DeploymentError(
                    with_tail(
                        f"fed-coordinator did not get ready within {launch.timeout:.0f} s",
                        coordinator.log_path,
                    )
                )
            time.sleep(0.2)
    clients: dict[str, ManagedProcess] = {}
    site_env = _site_env(env, len(launch.sites))
    for site_id, site_path in launch.sites.items():
        kit = launch.site_kits.get(site_id)
        clients[site_id] = ManagedProcess.start(
            f"fed-client {site_id}",
            _python_module("fedcore.cli.client_cmd")
            + [
                "start",
                "--site",
                str(site_path),
                "--coordinator",
                address,
                *transport,
                *(["--kit", str(kit)] if kit is not None else []),
                "--log-file",
                str(log_dir / f"supernode-{site_id}.log"),
            ],
            log_path=log_dir / f"fed-client-{site_id}.log",
            env=site_env,
            registry=procs,
        )
    tail = RoundsTail(launch.out_dir / "rounds.jsonl")
    dead: set[str] = set()
    minimum = launch.scenario.scheduler.min_sites

    def drain() -> None:
        for row in tail.read_new():
            if launch.on_round is not None:
                launch.on_round(cast(RoundRecord, row))

    while True:
        drain()
        code = coordinator.poll()
        if code is not None:
            drain()
            if code == EXIT_ADDRESS_IN_USE:
                return None
            return _outcome(code, launch.out_dir, coordinator)
        for site_id, client in clients.items():
            client_code = client.poll()
            if site_id in dead or client_code is None:
                continue
            dead.add(site_id)
            live = len(clients) - len(dead)
            what = f"site {site_id!r}: fed-client exited with code {client_code}"
            if live < minimum:
                message = with_tail(
                    f"{what}; {live} of {len(clients)} sites remain but the scenario needs "
                    f"scheduler.min_sites={minimum}, so the federation cannot go on",
                    client.log_path,
                    lines=6,
                )
                raise DeploymentError(
                    with_tail(message, log_dir / f"supernode-{site_id}.log", lines=15)
                )
            logger.warning(
                "%s; going on with %d of %d sites (min_sites=%d)", what, live, len(clients), minimum
            )
        for proc in procs:
            proc.refresh()
        if time.monotonic() > launch.deadline:
            raise DeploymentError(
                with_tail(
                    f"the federation did not finish within {launch.timeout:.0f} s (timeout); "
                    "raise it or run fewer rounds",
                    coordinator.log_path,
                )
            )
        time.sleep(0.5)


def _outcome(code: int, out_dir: Path, coordinator: ManagedProcess) -> dict[str, Any]:
    federation = read_federation(out_dir)
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
    raise DeploymentError(with_tail(reason, coordinator.log_path, lines=40))
