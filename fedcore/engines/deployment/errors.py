"""Typed errors of the deployment engine and the progress events its services report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AddressInUseError",
    "DeploymentConfigError",
    "DeploymentError",
    "DeploymentInterrupted",
    "Event",
    "EventLevel",
    "OnEvent",
    "RunFailedError",
    "ServerExitedError",
]


class DeploymentError(RuntimeError):
    """The deployment could not start, a process died, or the federation failed."""


class DeploymentConfigError(DeploymentError):
    """Bad arguments, scenario, site config or kit: nothing was started."""


class AddressInUseError(DeploymentError):
    """The address a server should listen on is already taken."""


class RunFailedError(DeploymentError):
    """The federation ran and failed; the message says why, with the SuperLink's log tail."""


class ServerExitedError(DeploymentError):
    """The SuperLink exited on its own while the coordinator kept serving after its run."""


class DeploymentInterrupted(DeploymentError):
    """Stopped by Ctrl-C or SIGTERM, after every process was stopped; the message names the signal."""


EventLevel = Literal["heading", "info", "ok", "notice", "warning", "failed"]
"""How much an event matters: ``heading`` (what starts), ``info`` (a detail), ``ok`` (a
step done), ``notice`` (something unexpected that does not stop the service),
``warning`` (a configuration problem that does not stop it), ``failed`` (a run failed; the
service goes on serving)."""


@dataclass(frozen=True)
class Event:
    """One line of progress from a service, in plain text (the command line styles it).

    Attributes:
        text: What happened, e.g. ``"SuperLink ready on 127.0.0.1:9092 in 1.2 s"``.
        level: See :data:`EventLevel`.
    """

    text: str
    level: EventLevel = "info"


OnEvent = Callable[[Event], None]
"""Receives a service's progress events."""
