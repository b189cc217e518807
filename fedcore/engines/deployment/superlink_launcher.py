"""The SuperLink launcher: Flower's SuperLink app (a Flower internal) with every API on loopback and only the Fleet API on the address sites reach."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

__all__ = ["PUBLIC_PATH", "FleetOnlyGate", "superlink_main"]

#: What the SuperLink serves on the address sites reach: Flower's Fleet API (every call a
#: SuperNode makes) and ``/health``. Everything else (the Control API, which has no
#: authentication: submit runs, register nodes; the Runtime API; the API docs) is served on
#: the loopback socket only.
PUBLIC_PATH = re.compile(r"/v1/fleet/[a-z0-9-]+|/health")

_NOT_SERVED = json.dumps(
    {"detail": "Not Found: this address serves Flower's Fleet API only"}
).encode()

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_Asgi = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class FleetOnlyGate:
    """ASGI wrapper: the whole app for connections to ``control``; elsewhere the Fleet API only.

    A connection's local address (``scope["server"]``, the socket it was accepted on, never a
    header) decides: on the loopback socket ``control`` every request passes; on any other
    socket only paths matching :data:`PUBLIC_PATH` do, and the rest get a 404 (websockets are
    closed). The check is a tuple comparison and one regular-expression match per request.

    Args:
        app: The SuperLink's ASGI app (``flwr.superlink.main.create_app``).
        control: ``(host, port)`` of the loopback socket that serves everything.
    """

    def __init__(self, app: _Asgi, control: tuple[str, int]) -> None:
        self.app = app
        self.control = (str(control[0]), int(control[1]))

    def allows(self, scope: _Scope) -> bool:
        """Whether the request ``scope`` describes is served."""
        if scope["type"] == "lifespan":
            return True
        server = scope.get("server")
        if server is not None and (str(server[0]), int(server[1])) == self.control:
            return True
        return scope["type"] == "http" and PUBLIC_PATH.fullmatch(scope.get("path", "")) is not None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if self.allows(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_NOT_SERVED)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _NOT_SERVED})
        else:
            await send({"type": "websocket.close", "code": 1008})


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket on ``host:port`` (as uvicorn binds one), for ``Server.run(sockets=)``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise SystemExit(f"fedcore: the SuperLink cannot listen on {where}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def superlink_main(argv: Sequence[str]) -> None:
    """Flower's SuperLink (``flower-superlink ARGV``) with its Control API on loopback only.

    ``ARGV`` holds Flower's own arguments, whose ``--host``/``--port`` must be a loopback
    address: there the SuperLink serves every API (the coordinator's Control API client,
    ``flwr run``, Flower's SuperExec and ServerApp use it). ``--fleet-listen HOST:PORT`` is the
    address sites reach: the same app behind :class:`FleetOnlyGate`, on the same TLS settings,
    in the same process (no extra hop per request).
    """
    parser = argparse.ArgumentParser(prog="fedcore-superlink")
    parser.add_argument("--fleet-listen", required=True, metavar="HOST:PORT")
    args, rest = parser.parse_known_args(list(argv))
    fleet_host, _, fleet_port = args.fleet_listen.rpartition(":")
    fleet_host = fleet_host.strip("[]")
    # at call time: flower_runtime, which checks Flower's internals, imports this module
    from fedcore.engines.deployment.flower_runtime import (
        _SUPERLINK_CLI,
        superlink_internals_problems,
    )

    problems = superlink_internals_problems()
    if problems:
        raise SystemExit(
            "fedcore: cannot keep the Control API on loopback with this Flower: "
            + "; ".join(problems)
        )
    import uvicorn
    from flwr.superlink.main import create_app

    fsl = importlib.import_module(_SUPERLINK_CLI)
    sys.argv = ["flower-superlink", *rest]
    config = fsl._parse_superlink_lifespan_config()
    control = (str(config.host), int(config.port))
    try:
        import ipaddress

        loopback = ipaddress.ip_address(control[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(
            f"fedcore: --host {control[0]} must be a loopback address (127.0.0.1): the "
            "Control API is served there; sites reach --fleet-listen"
        )
    sockets = [
        _listening_socket(*control),
        _listening_socket(fleet_host, int(fleet_port)),
    ]
    app = create_app(config, fsl.SuperLinkLifespan)
    server = uvicorn.Server(
        uvicorn.Config(
            app=FleetOnlyGate(app, control),
            reload=False,
            access_log=True,
            log_config=fsl.get_uvicorn_log_config(fsl.console_handler.level),
            ssl_keyfile=config.ssl_keyfile,
            ssl_certfile=config.ssl_certfile,
            workers=1,
        )
    )
    print(
        f"fedcore: SuperLink serves every API on {control[0]}:{control[1]} (loopback) and "
        f"the Fleet API only on {args.fleet_listen}",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=sockets)
