"""The coordinator's operator endpoint over HTTP: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus).

A :class:`http.server.ThreadingHTTPServer` in a daemon thread, bound to loopback unless the
operator names another host. It serves the :class:`~.metrics.CoordinatorMetrics` of the
service that started it and stops with it (:meth:`HealthServer.stop` in a ``finally``).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedcore.engines.deployment.errors import AddressInUseError, DeploymentError
from fedcore.engines.deployment.metrics import CoordinatorMetrics
from fedcore.engines.deployment.network import format_address

__all__ = ["HealthServer"]

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: CoordinatorMetrics


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "fedcore-coordinator"
    sys_version = ""
    _TEXT: ClassVar[str] = "text/plain; charset=utf-8"

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
        else:
            self._send(404, "not found; try /healthz, /readyz or /metrics\n")

    def _send(self, code: int, body: str | bytes, content_type: str = _TEXT) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        logger.debug("%s %s", self.address_string(), format % args)


class HealthServer:
    """Serves ``/healthz`` (200 while the process lives), ``/readyz`` (200 once the run was
    submitted, else 503 with the reason) and ``/metrics`` (Prometheus text format); 404 otherwise.

    Args:
        metrics: What ``/readyz`` and ``/metrics`` report.
        host: Address to bind (default loopback, ``127.0.0.1``).
        port: Port to bind; 0 picks a free one (see :attr:`port` once started).
    """

    def __init__(self, metrics: CoordinatorMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535; found {port}")
        self.metrics = metrics
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
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"fedcore-health-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("metrics endpoint on http://%s", self.address)

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
