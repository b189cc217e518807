"""What ``fed-coordinator start`` is asked to do, checked, and the SuperLink command line it gives."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from fedcore.config import ConfigError, Scenario, load_scenario
from fedcore.engines.deployment.errors import (
    AddressInUseError,
    DeploymentConfigError,
    DeploymentError,
    Event,
    OnEvent,
)
from fedcore.engines.deployment.flower_cli import flower_command
from fedcore.engines.deployment.network import (
    check_transport,
    format_address,
    free_port,
    is_loopback_host,
    is_wildcard_host,
    port_is_free,
)
from fedcore.engines.deployment.security import NO_KIT_MESSAGE, CoordinatorSecurity


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
