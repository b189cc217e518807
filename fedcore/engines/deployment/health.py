"""The coordinator's operator endpoint over HTTP: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and the status page.

A :class:`http.server.ThreadingHTTPServer` in a daemon thread, bound to loopback unless the
operator names another host. It serves the :class:`~.metrics.CoordinatorMetrics` and the
:class:`~.status.StatusBoard` of the service that started it and stops with it
(:meth:`HealthServer.stop` in a ``finally``). The status page (``/``) is one self-contained
document that needs no network beyond this endpoint (its Content-Security-Policy forbids any
other); it polls ``/status.json``.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedcore.engines.deployment.errors import AddressInUseError, DeploymentError
from fedcore.engines.deployment.metrics import CoordinatorMetrics
from fedcore.engines.deployment.network import format_address
from fedcore.engines.deployment.status import STATUS_PAGE, StatusBoard

__all__ = ["HealthServer", "status_snapshot"]

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: CoordinatorMetrics
    board: StatusBoard


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "fedcore-coordinator"
    sys_version = ""
    _TEXT: ClassVar[str] = "text/plain; charset=utf-8"
    _HTML: ClassVar[str] = "text/html; charset=utf-8"
    _JSON: ClassVar[str] = "application/json"
    # The page may talk to this endpoint only: no other host, font, script or image.
    _PAGE_POLICY: ClassVar[str] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        metrics = self.server.metrics
        if path == "/healthz":
            self._send(200, "ok\n")
        elif path == "/readyz":
            ready, why = metrics.readiness()
            self._send(200 if ready else 503, f"{'ready' if ready else 'not ready'}: {why}\n")
        elif path == "/metrics":
            self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
        elif path in ("/", "/status"):
            self._send(200, STATUS_PAGE, self._HTML, {"Content-Security-Policy": self._PAGE_POLICY})
        elif path == "/status.json":
            body = json.dumps(status_snapshot(metrics, self.server.board), allow_nan=False)
            self._send(200, body, self._JSON)
        else:
            self._send(404, "not found; try /, /status.json, /healthz, /readyz or /metrics\n")

    def _send(
        self,
        code: int,
        body: str | bytes,
        content_type: str = _TEXT,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        logger.debug("%s %s", self.address_string(), format % args)


def status_snapshot(metrics: CoordinatorMetrics, board: StatusBoard) -> dict[str, Any]:
    """``/status.json``: the board's snapshot plus the service's ``phase``, ``ready`` and
    ``readiness`` (why), taken from ``metrics`` as ``/readyz`` does."""
    ready, why = metrics.readiness()
    return board.snapshot() | {"phase": metrics.phase, "ready": ready, "readiness": why}


class HealthServer:
    """Serves ``/healthz`` (200 while the process lives), ``/readyz`` (200 once the run was
    submitted, else 503 with the reason), ``/metrics`` (Prometheus text format), the status page
    at ``/`` (also ``/status``) and its data at ``/status.json`` (:func:`status_snapshot`);
    404 otherwise.

    Args:
        metrics: What ``/readyz`` and ``/metrics`` report, and the phase on the status page.
        host: Address to bind (default loopback, ``127.0.0.1``).
        port: Port to bind; 0 picks a free one (see :attr:`port` once started).
        board: What the status page shows; ``None`` starts an empty one (no scenario).
    """

    def __init__(
        self,
        metrics: CoordinatorMetrics,
        host: str = "127.0.0.1",
        port: int = 0,
        board: StatusBoard | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535; found {port}")
        self.metrics = metrics
        self.board = board if board is not None else StatusBoard()
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` it serves on (the bound port once started)."""
        return format_address(self.host, self.port)

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises:
            AddressInUseError: ``host:port`` is taken.
            DeploymentError: it cannot bind for another reason (e.g. an unknown host).
        """
        if self._server is not None:
            return
        cls = _IPv6Server if ":" in self.host else _Server
        try:
            server = cls((self.host, self.port), _Handler)
        except OSError as exc:
            where = format_address(self.host, self.port)
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(
                    f"{where} (metrics endpoint) is already in use; choose another with "
                    "--metrics-listen HOST:PORT, or turn it off with --metrics-listen off"
                ) from None
            raise DeploymentError(f"cannot serve the metrics endpoint on {where}: {exc}") from exc
        server.metrics = self.metrics
        server.board = self.board
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"fedcore-health-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("metrics endpoint and status page on http://%s", self.address)

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
