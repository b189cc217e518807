"""Addresses and ports: parse and format HOST:PORT, loopback and wildcard hosts, free ports, transport checks."""

from __future__ import annotations

import ipaddress
import re
import socket

from fedcore.engines.deployment.errors import DeploymentConfigError

__all__ = [
    "check_transport",
    "format_address",
    "free_port",
    "is_loopback_host",
    "is_wildcard_host",
    "local_host",
    "parse_address",
    "port_is_free",
]


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPv6]:PORT``) into host and port.

    Args:
        text: The address, e.g. ``127.0.0.1:9092`` or ``[::1]:9092``.

    Returns:
        ``(host, port)``; an IPv6 host comes back without brackets.

    Raises:
        DeploymentConfigError: if the text is not ``HOST:PORT`` with a port in 1..65535.
    """
    expected = "expected HOST:PORT such as 127.0.0.1:9092"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text.strip())
    if not match:
        raise DeploymentConfigError(f"{expected}, found {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise DeploymentConfigError(f"{expected} with a port between 1 and 65535, found {text!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    """Join host and port, bracketing an IPv6 host (``[::1]:9092``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1`` or ``localhost``).

    Host names other than ``localhost`` are not resolved and count as non-loopback.
    """
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(host: str, *, insecure: bool, action: str) -> None:
    """Refuse plaintext traffic that would leave the machine.

    With TLS (``insecure=False``) any host is fine. Without TLS (``--insecure``)
    only a loopback address is, so model updates never cross a network unencrypted
    and no other machine can join.

    Args:
        host: The host to listen on or connect to.
        insecure: Whether the user asked for a connection without TLS (``--insecure``).
        action: What is done with ``host``, for the message ("listen on", "connect to").

    Raises:
        DeploymentConfigError: if ``insecure`` and ``host`` is not a loopback address.
    """
    if insecure and not is_loopback_host(host):
        raise DeploymentConfigError(
            f"refusing to {action} {host} without TLS: it is not a loopback address, so model "
            "updates would cross the network unencrypted and any machine could join. Drop "
            "--insecure and pass --kit KITDIR (a kit written by `fedcore provision`) for TLS "
            "and node authentication, or use 127.0.0.1 (or ::1, localhost) for a test on one "
            "machine."
        )


def is_wildcard_host(host: str) -> bool:
    """Whether ``host`` means "every interface" (``0.0.0.0`` or ``::``)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def local_host(host: str) -> str:
    """The host this machine uses to reach a server listening on ``host``.

    A wildcard becomes loopback (``127.0.0.1`` / ``::1``), like Flower's own SuperExec does.
    """
    if is_wildcard_host(host):
        return "::1" if ":" in host else "127.0.0.1"
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nobody listens on right now.

    The port is only free at the time of the call; callers retry when a server
    then fails to bind it (:class:`AddressInUseError`).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (with ``SO_REUSEADDR``, like uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
