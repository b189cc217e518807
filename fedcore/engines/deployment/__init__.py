"""Deployment engine: a real Flower SuperLink and one SuperNode per site, with TLS and node keys.

Three layers, each owning the processes it starts:

* :func:`run_deployment` (``fedcore run --engine deployment``, :mod:`.launcher`) launches the
  very same production commands an operator runs, ``fed-coordinator start`` and one
  ``fed-client start`` per site, tails ``OUT/rounds.jsonl`` for progress and returns the
  parsed ``OUT/federation.json``.
* :func:`serve_coordinator` (``fed-coordinator start``, :mod:`.coordinator`) runs
  ``flower-superlink`` with TLS and SuperNode authentication, registers every member's node
  public key, waits for the sites, submits the run with ``flwr run`` and watches it.
  With ``metrics_listen`` it also serves ``/healthz``, ``/readyz``, ``/metrics``
  (Prometheus) and a status page at ``/`` for the operator (:mod:`.health`, :mod:`.metrics`,
  :mod:`.status`).
* :func:`serve_site` (``fed-client start``, :mod:`.site`) runs ``flower-supernode`` for one
  site; it trusts only the consortium CA and signs its requests with the site's node key.

The services do no UI: they report progress through callbacks (:class:`Event` lines, round
records) and fail with the typed errors of :mod:`.errors`; ``fedcore.cli`` prints and picks
exit codes. Security comes from provisioned kits (``fedcore provision``), described here as
:class:`CoordinatorSecurity` / :class:`SiteSecurity` (plain paths, checked with
:mod:`fedcore.pki`). Without them the engine refuses to run, unless the caller asked for
``insecure`` traffic on a loopback address.

Every child is started in its own session (process group) and stopped by PID
(:mod:`.processes`): SIGTERM to its group, SIGKILL after a grace period, also for the
descendants it spawned (Flower's SuperExec, ``flwr-serverapp``, ``flwr-clientapp``), in
``finally`` blocks that also run on SIGINT and SIGTERM (:mod:`.signals`). On Linux each
child also gets SIGTERM from the kernel if its parent dies without cleaning up
(``PR_SET_PDEATHSIG``).

This package never imports ``coordinator``, ``clients`` or ``secure``: it launches commands.
"""

from __future__ import annotations

from fedcore.engines.deployment.coordinator import READY_MARK, CoordinatorOptions, serve_coordinator
from fedcore.engines.deployment.errors import (
    AddressInUseError,
    DeploymentConfigError,
    DeploymentError,
    DeploymentInterrupted,
    Event,
    EventLevel,
    OnEvent,
    RunFailedError,
    ServerExitedError,
)
from fedcore.engines.deployment.flower_cli import (
    APP_DIR,
    ControlApi,
    config_args,
    flower_env,
)
from fedcore.engines.deployment.health import HealthServer
from fedcore.engines.deployment.launcher import run_deployment
from fedcore.engines.deployment.metrics import CoordinatorMetrics
from fedcore.engines.deployment.network import (
    check_transport,
    format_address,
    free_port,
    is_loopback_host,
    local_host,
    parse_address,
)
from fedcore.engines.deployment.processes import ManagedProcess, stop_processes
from fedcore.engines.deployment.progress import RoundsTail
from fedcore.engines.deployment.security import (
    CoordinatorSecurity,
    DeploymentSecurity,
    SiteSecurity,
)
from fedcore.engines.deployment.site import SiteOptions, serve_site
from fedcore.engines.deployment.status import StatusBoard

__all__ = [
    "APP_DIR",
    "READY_MARK",
    "AddressInUseError",
    "ControlApi",
    "CoordinatorMetrics",
    "CoordinatorOptions",
    "CoordinatorSecurity",
    "DeploymentConfigError",
    "DeploymentError",
    "DeploymentInterrupted",
    "DeploymentSecurity",
    "Event",
    "EventLevel",
    "HealthServer",
    "ManagedProcess",
    "OnEvent",
    "RoundsTail",
    "RunFailedError",
    "ServerExitedError",
    "SiteOptions",
    "SiteSecurity",
    "StatusBoard",
    "check_transport",
    "config_args",
    "flower_env",
    "format_address",
    "free_port",
    "is_loopback_host",
    "local_host",
    "parse_address",
    "run_deployment",
    "serve_coordinator",
    "serve_site",
    "stop_processes",
]
