"""Deployment engine: a real Flower SuperLink and one SuperNode per site, with TLS and node keys.

Three layers, each owning the processes it starts:

* :func:`run_deployment` (``fedcore run --engine deployment``) launches the very
  same production commands an operator runs, ``fed-coordinator start`` and one
  ``fed-client start`` per site, tails ``OUT/rounds.jsonl`` for progress and
  returns the parsed ``OUT/federation.json``.
* :func:`serve_coordinator` (``fed-coordinator start``) runs ``flower-superlink``
  with TLS and SuperNode authentication, registers every member's node public
  key, waits for the sites, submits the run with ``flwr run`` and watches it.
* :func:`serve_site` (``fed-client start``) runs ``flower-supernode`` for one site;
  it trusts only the consortium CA and signs its requests with the site's node key.

Security comes from provisioned kits (``fedcore provision``), described to this
module as :class:`CoordinatorSecurity` / :class:`SiteSecurity` (plain paths: the
kit layout itself belongs to ``secure``). Without them the engine refuses to run,
unless the caller asked for ``insecure`` traffic on a loopback address.

Every child is started in its own session (process group) and stopped by PID:
SIGTERM to its group, SIGKILL after a grace period, also for the descendants it
spawned (Flower's SuperExec, ``flwr-serverapp``, ``flwr-clientapp``), in
``finally`` blocks that also run on SIGINT and SIGTERM. On Linux each child also
gets SIGTERM from the kernel if its parent dies without cleaning up
(``PR_SET_PDEATHSIG``).

This module never imports ``coordinator``, ``clients`` or ``secure``: it launches commands.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import functools
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any

import psutil
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from rich.console import Console
from rich.markup import escape

from fedcore.config import Scenario, load_scenario, load_site_config

__all__ = [
    "APP_DIR",
    "EXIT_ADDRESS_IN_USE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "READY_MARK",
    "AddressInUseError",
    "CoordinatorOptions",
    "CoordinatorSecurity",
    "DeploymentError",
    "DeploymentSecurity",
    "ManagedProcess",
    "RoundsTail",
    "SiteOptions",
    "SiteSecurity",
    "check_transport",
    "config_args",
    "flower_env",
    "format_address",
    "format_round",
    "free_port",
    "is_loopback_host",
    "load_node_public_key",
    "local_host",
    "node_key_fingerprint",
    "parse_address",
    "run_deployment",
    "serve_coordinator",
    "serve_site",
    "stop_processes",
]

logger = logging.getLogger(__name__)

#: The Flower app directory that ``fed-coordinator`` submits (shipped as package data).
APP_DIR = Path(__file__).resolve().parent.parent / "cli" / "flowerapp"

#: Name of the SuperLink connection written into the coordinator's ``FLWR_HOME``.
CONNECTION_NAME = "fedcore"

EXIT_OK = 0  #: the run completed
EXIT_FAILED = 1  #: the run failed, or a process died
EXIT_USAGE = 2  #: bad arguments or configuration file
EXIT_ADDRESS_IN_USE = 3  #: the address to listen on is taken
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C or SIGTERM

#: Seconds a process gets to exit after SIGTERM before it is killed.
DEFAULT_GRACE = 10.0

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98|errno 48", re.IGNORECASE)


class DeploymentError(RuntimeError):
    """The deployment could not start, a process died, or the federation failed."""


class AddressInUseError(DeploymentError):
    """The address a server should listen on is already taken."""


# --------------------------------------------------------------------------- addresses


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPv6]:PORT``) into host and port.

    Args:
        text: The address, e.g. ``127.0.0.1:9092`` or ``[::1]:9092``.

    Returns:
        ``(host, port)``; an IPv6 host comes back without brackets.

    Raises:
        DeploymentError: if the text is not ``HOST:PORT`` with a port in 1..65535.
    """
    expected = "expected HOST:PORT such as 127.0.0.1:9092"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text.strip())
    if not match:
        raise DeploymentError(f"{expected}, found {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise DeploymentError(f"{expected} with a port between 1 and 65535, found {text!r}")
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
        DeploymentError: if ``insecure`` and ``host`` is not a loopback address.
    """
    if insecure and not is_loopback_host(host):
        raise DeploymentError(
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


# --------------------------------------------------------------------------- security

_NIST_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_PROVISION_FIX = (
    "write the kits again with `fedcore provision CONSORTIUM.yaml --out KITS/` and hand each "
    "machine its own kit"
)


@dataclass(frozen=True)
class CoordinatorSecurity:
    """TLS and SuperNode authentication of the coordinator's SuperLink (from a coordinator kit).

    Attributes:
        ca_cert: PEM certificate of the consortium CA (``ca.crt``).
        server_cert: PEM certificate of the SuperLink, signed by the CA; it must name the
            host the coordinator listens on (for a wildcard such as ``0.0.0.0``: ``127.0.0.1``).
        server_key: PEM private key of ``server_cert`` (unencrypted).
        node_public_keys: Site id -> the site's node public key (OpenSSH ECDSA, NIST curve):
            the consortium's members. Each is registered with the SuperLink under the site id
            as node name before any site connects; a node registered earlier (same
            ``superlink.db``) whose key is no longer here is unregistered.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_public_keys: Mapping[str, Path]

    def __post_init__(self) -> None:
        # A private copy: the caller's mapping may change, this object does not.
        object.__setattr__(self, "node_public_keys", MappingProxyType(dict(self.node_public_keys)))

    def check(self, listen_host: str) -> list[str]:
        """Validate every file before the SuperLink starts.

        Args:
            listen_host: The host the SuperLink will listen on; the server certificate
                must name it (a wildcard: the loopback address this machine connects to).

        Returns:
            Warnings that do not stop the coordinator (a private key readable by others).

        Raises:
            DeploymentError: a file is missing or unreadable, a certificate expired, is
                not signed by the CA or does not name ``listen_host``, the key does not
                match the certificate, or a node key is not an ECDSA key on a NIST curve.
        """
        ca = _load_certificate(self.ca_cert, "the CA certificate")
        server = _load_certificate(self.server_cert, "the server certificate")
        try:
            server.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise DeploymentError(
                f"the server certificate {self.server_cert} is not signed by the CA in "
                f"{self.ca_cert}: expected both from one provisioning, found two different "
                f"ones. Fix: {_PROVISION_FIX}"
            ) from None
        key = _load_private_key_pem(self.server_key, "the server key")
        if _spki(key.public_key()) != _spki(server.public_key()):
            raise DeploymentError(
                f"the server key {self.server_key} does not belong to the server certificate "
                f"{self.server_cert}. Fix: {_PROVISION_FIX}"
            )
        host = local_host(listen_host)
        if not _certificate_names_host(server, host):
            names = ", ".join(_certificate_names(server)) or "no host at all"
            wildcard = (
                f" (this machine reaches a server listening on {listen_host} through {host})"
                if host != listen_host
                else ""
            )
            raise DeploymentError(
                f"the server certificate {self.server_cert} does not name {host}{wildcard}: "
                f"it names {names}. Sites verify the host they connect to against this list. "
                "Fix: listen on one of those names with --listen HOST:PORT, or provision the "
                "coordinator again with this host among its names"
            )
        if not self.node_public_keys:
            raise DeploymentError(
                "the coordinator kit holds no node public key (nodes/<site-id>.pub), so no site "
                f"could ever connect. Fix: {_PROVISION_FIX}"
            )
        for site_id, path in self.node_public_keys.items():
            load_node_public_key(path, what=f"site {site_id!r}'s node public key")
        return [w for w in [_loose_permissions(self.server_key)] if w]

    def registration_keys(self) -> dict[str, bytes]:
        """Site id -> the public key as the SuperLink registers it (PEM SubjectPublicKeyInfo)."""
        return {
            site_id: load_node_public_key(path, what=f"site {site_id!r}'s node public key")
            for site_id, path in self.node_public_keys.items()
        }


@dataclass(frozen=True)
class SiteSecurity:
    """TLS trust and node key of one site's SuperNode (from a site kit).

    Attributes:
        ca_cert: PEM certificate of the consortium CA: the only issuer the site trusts
            for the coordinator's server certificate.
        node_private_key: The site's node private key (OpenSSH ECDSA, NIST curve); the
            SuperNode signs every request with it.
        node_public_key: Its public half (OpenSSH), registered at the coordinator.
        site_id: The site the kit was provisioned for; ``None`` skips the check that it
            matches the site config's ``id``.
    """

    ca_cert: Path
    node_private_key: Path
    node_public_key: Path
    site_id: str | None = None

    def check(self) -> list[str]:
        """Validate the files before the SuperNode starts.

        Returns:
            Warnings that do not stop the site (a private key readable by others).

        Raises:
            DeploymentError: a file is missing or unreadable, the CA certificate expired,
                the node key is not an unencrypted OpenSSH ECDSA key on a NIST curve, or
                the public key is not the private key's.
        """
        _load_certificate(self.ca_cert, "the CA certificate")
        private = _load_node_private_key(self.node_private_key)
        public = load_node_public_key(self.node_public_key, what="the node public key")
        if _spki(private.public_key()) != public:
            raise DeploymentError(
                f"the node public key {self.node_public_key} is not the public half of "
                f"{self.node_private_key}: expected one key pair from one site kit. "
                f"Fix: {_PROVISION_FIX}"
            )
        return [w for w in [_loose_permissions(self.node_private_key)] if w]


@dataclass(frozen=True)
class DeploymentSecurity:
    """Provisioned kits for :func:`run_deployment`: one for the coordinator, one per site.

    Attributes:
        coordinator_kit: The coordinator kit directory (``fed-coordinator start --kit``).
        site_kits: Site id -> that site's kit directory (``fed-client start --kit``),
            one per scenario site.
    """

    coordinator_kit: Path
    site_kits: Mapping[str, Path]

    def __post_init__(self) -> None:
        object.__setattr__(self, "site_kits", MappingProxyType(dict(self.site_kits)))


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DeploymentError(
            f"{what} {path} does not exist: expected a file of a provisioned kit. Check --kit, "
            f"or {_PROVISION_FIX}"
        ) from None
    except OSError as exc:
        raise DeploymentError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _load_certificate(path: Path, what: str) -> x509.Certificate:
    data = _read_bytes(path, what)
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise DeploymentError(
            f"{what} {path} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----'). "
            f"Fix: {_PROVISION_FIX}"
        ) from None
    now = datetime.datetime.now(datetime.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise DeploymentError(
            f"{what} {path} is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            "is this machine's clock right?"
        )
    if now > cert.not_valid_after_utc:
        raise DeploymentError(
            f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC. "
            f"Fix: {_PROVISION_FIX}"
        )
    return cert


def _load_private_key_pem(path: Path, what: str) -> PrivateKeyTypes:
    data = _read_bytes(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DeploymentError(
            f"{what} {path} is encrypted with a passphrase; the SuperLink needs it unencrypted "
            "(protect it with file permissions: chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"{what} {path} is not a PEM private key. Fix: {_PROVISION_FIX}"
        ) from None


def _load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read_bytes(path, "the node private key")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:
        raise DeploymentError(
            f"the node private key {path} is encrypted with a passphrase; the SuperNode needs "
            "it unencrypted (protect it with file permissions: chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"the node private key {path} is not an OpenSSH private key (expected "
            f"'-----BEGIN OPENSSH PRIVATE KEY-----'). Fix: {_PROVISION_FIX}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _NIST_CURVES:
        raise DeploymentError(
            f"the node private key {path} must be ECDSA on a NIST curve (P-256, P-384, P-521) "
            f"for Flower's node authentication, found {_describe_key(key)}. Fix: {_PROVISION_FIX}"
        )
    return key


def load_node_public_key(path: Path, *, what: str = "the node public key") -> bytes:
    """Read an OpenSSH ECDSA node public key; return it as Flower registers it (PEM SPKI).

    Raises:
        DeploymentError: if the file is missing, not an OpenSSH public key, or not
            ECDSA on a NIST curve.
    """
    data = _read_bytes(path, what)
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"{what} {path} is not an OpenSSH public key (expected one line "
            f"'ecdsa-sha2-nistp384 AAAA...'). Fix: {_PROVISION_FIX}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NIST_CURVES:
        raise DeploymentError(
            f"{what} {path} must be ECDSA on a NIST curve (P-256, P-384, P-521) for Flower's "
            f"node authentication, found {_describe_key(key)}. Fix: {_PROVISION_FIX}"
        )
    return _spki(key)


def node_key_fingerprint(path: Path) -> str:
    """``SHA256:...`` fingerprint of an OpenSSH public key file, as ``ssh-keygen -lf`` prints it.

    Operators compare it on both machines: ``fed-coordinator`` prints it for every
    registered site and ``fed-client`` for its own key. Returns ``"?"`` if unreadable.
    """
    try:
        fields = Path(path).read_text(encoding="ascii").split()
        blob = base64.b64decode(fields[1], validate=True)
    except (OSError, UnicodeError, IndexError, ValueError):
        return "?"
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def _describe_key(key: object) -> str:
    curve = getattr(key, "curve", None)
    name = type(key).__name__.lstrip("_")
    return f"{name} ({curve.name})" if curve is not None else name


def _loose_permissions(path: Path) -> str | None:
    """A warning if a private key file can be read by group or others (POSIX only)."""
    if os.name != "posix":
        return None
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); it holds a "
            f"private key: chmod 600 {path}"
        )
    return None


def _certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _certificate_names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether a TLS client connecting to ``host`` accepts ``cert`` (subjectAltName only)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    wanted = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        pattern = name.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            if wanted.split(".", 1)[1] == pattern[2:]:
                return True
    return False


# --------------------------------------------------------------------------- Flower plumbing


def _toml_string(value: str) -> str:
    if not any(c in value for c in "'\n\r"):
        return f"'{value}'"  # TOML literal string: no escapes at all
    if not any(c in value for c in '"\\\n\r'):
        return f'"{value}"'
    raise DeploymentError(
        f"cannot pass {value!r} to Flower: a value may not hold a newline, nor both a "
        "quote (') and a double quote or backslash. Rename the file or directory."
    )


def config_args(values: Mapping[str, str | int | float | bool]) -> str:
    """Render values for Flower's ``--run-config`` / ``--node-config`` (``k='v' n=3``).

    Flower splits the text on spaces outside quotes and parses each value as TOML;
    strings become TOML literal strings, so paths need no escaping.

    Raises:
        DeploymentError: for a key Flower cannot parse or a string that cannot be quoted.
    """
    parts = []
    for key, value in values.items():
        if not _CONFIG_KEY.match(key):
            raise DeploymentError(f"config key {key!r} must match {_CONFIG_KEY.pattern}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = _toml_string(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def flower_command(name: str) -> str:
    """Absolute path of a Flower console script from this Python environment.

    Raises:
        DeploymentError: if it is neither next to ``sys.executable`` nor on ``PATH``.
    """
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found:
        return found
    raise DeploymentError(
        f"the Flower command {name!r} was found neither next to {sys.executable} nor on PATH; "
        "install flwr 1.42 into this environment (pip install 'flwr>=1.42,<1.43')"
    )


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: private ``FLWR_HOME``, no telemetry, scripts on PATH.

    * ``FLWR_HOME`` keeps installed app bundles, credentials and the connection
      config per coordinator / site instead of in ``~/.flwr``.
    * Flower's usage telemetry and update check are off unless the caller set
      them (a consortium's machines should not phone home).
    * The directory of the Flower scripts goes first on ``PATH``: SuperLink and
      SuperNode start ``flower-superexec`` (which starts ``flwr-serverapp`` /
      ``flwr-clientapp``) by bare name.

    Flower's polling is fixed in 1.42: an idle SuperNode polls every 3 s and
    ``Grid.send_and_receive`` every 3 s. ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``
    (SuperExec, default 1 s) is left alone: 0.2 s measured no faster round here.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["PYTHONUNBUFFERED"] = "1"
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def write_connection_config(flwr_home: Path, address: str, ca_cert: Path | None = None) -> Path:
    """Write ``FLWR_HOME/config.toml`` with the SuperLink connection ``fedcore``.

    Args:
        flwr_home: The coordinator's Flower home.
        address: ``HOST:PORT`` of the SuperLink as this machine reaches it.
        ca_cert: The CA that signed the SuperLink's certificate (``root-certificates``,
            TLS); ``None`` writes ``insecure = true``.

    Returns:
        The path of the file, for ``FLWR_HOME=... flwr ls fedcore``.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    transport = (
        f"root-certificates = {_toml_string(str(Path(ca_cert).resolve()))}\n"
        if ca_cert is not None
        else "insecure = true\n"
    )
    path.write_text(
        "# Written by fed-coordinator: `FLWR_HOME=<this dir> flwr ls fedcore` inspects runs.\n"
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\naddress = {_toml_string(address)}\n{transport}",
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- logs


def tail_text(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, without ANSI colours ("" if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = _ANSI.sub("", data)
    return "\n".join(text.splitlines()[-lines:])


def _with_tail(message: str, path: Path, lines: int = 25) -> str:
    tail = tail_text(path, lines)
    if not tail:
        return f"{message}\n(log: {path}, empty)"
    indented = "\n".join(f"  | {line}" for line in tail.splitlines())
    return f"{message}\nlast lines of {path}:\n{indented}"


class RoundsTail:
    """Follows a JSON-lines file (``OUT/rounds.jsonl``) and yields each new complete object."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """Return the objects appended since the last call (incomplete last lines wait)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() < self._offset:  # replaced or truncated: start over
                    self._offset, self._partial = 0, b""
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        rows: list[dict[str, Any]] = []
        for raw in complete:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                logger.warning("%s: skipping a line that is not JSON (%s)", self.path, exc)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                logger.warning("%s: skipping a line that is not a JSON object", self.path)
        return rows


def format_round(row: Mapping[str, Any]) -> str:
    """One line for a finished round: ``round 2  sites 3  loss 0.4121  PR-AUC 0.613  8.1 s``."""

    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-"

    def mb(key: str) -> str:
        value = row.get(key)
        return f"{value / 1e6:.2f} MB" if isinstance(value, int | float) else "-"

    sites = row.get("sites", "?")
    if isinstance(sites, list):
        sites = f"{len(sites)} ({', '.join(str(s) for s in sites)})"
    return (
        f"round {row.get('round', '?')}  sites {sites}  "
        f"loss {num('loss', '.4f')}  PR-AUC {num('pr_auc', '.3f')}  {num('seconds', '.1f')} s  "
        f"up {mb('bytes_up')}  down {mb('bytes_down')}"
    )


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`KeyboardInterrupt` (like SIGINT) inside the block.

    So every ``finally`` that runs on Ctrl-C also runs when a supervisor or
    ``kill`` stops the process. No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


@contextlib.contextmanager
def deferred_signals(*, reraise: bool = True) -> Iterator[None]:
    """Hold off SIGINT/SIGTERM/SIGHUP during cleanup so it cannot be cut short.

    Args:
        reraise: Raise :class:`KeyboardInterrupt` after the block if a signal came.

    No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
    if received and reraise:
        raise KeyboardInterrupt(f"received {signal.Signals(received[0]).name}")


# --------------------------------------------------------------------------- processes


@functools.cache
def _make_preexec() -> Callable[[], None] | None:
    """Child setup that asks the kernel to SIGTERM the child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        parent = os.getppid()
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sigterm)

    return preexec


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ManagedProcess:
    """A child process in its own session, with its output in a log file.

    It remembers every descendant it has seen (Flower's SuperExec starts its
    ServerApp/ClientApp processes in other process groups), so :meth:`kill` also
    reaches processes that were re-parented after their parent died. Descendants
    are remembered as :class:`psutil.Process`, which guards against PID reuse.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.started_at = time.monotonic()
        self._seen: dict[int, psutil.Process] = {}
        self.refresh()

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        registry: list[ManagedProcess] | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, appending stdout and stderr to ``log_path``.

        Args:
            name: Label used in messages, e.g. ``"SuperLink"``.
            argv: The command; never run through a shell.
            log_path: Log file (created with its parent directories, appended to).
            env: Environment of the child (default: this process's).
            cwd: Working directory of the child.
            registry: If given, the process is appended to it before any signal can
                interrupt, so the caller's cleanup always sees it.

        Returns:
            The running process.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with deferred_signals():
            with log_path.open("ab") as fh:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(f"=== {stamp} fedcore starts {name}: {' '.join(argv)}\n".encode())
                fh.flush()
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_make_preexec(),
                    close_fds=True,
                )
            proc = cls(name, popen, log_path)
            if registry is not None:
                registry.append(proc)
        logger.info("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    @property
    def pid(self) -> int:
        """PID of the process (also its process group id)."""
        return self.popen.pid

    def poll(self) -> int | None:
        """Exit code, or ``None`` while it runs."""
        return self.popen.poll()

    def refresh(self) -> None:
        """Remember the process's current descendants (cheap; call it while polling)."""
        if self.popen.poll() is not None:
            return
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            known = self._seen.get(child.pid)
            if known is None or not _alive(known):
                self._seen[child.pid] = child

    def survivors(self) -> list[psutil.Process]:
        """Descendants seen so far that are still running (zombies excluded)."""
        return [p for p in self._seen.values() if _alive(p)]

    def running(self) -> bool:
        """Whether the process or any descendant it started is still running."""
        return self.popen.poll() is None or bool(self.survivors())

    def _signal_group(self, sig: int) -> None:
        # Only while the leader is unreaped: until then its PID (= the group id)
        # cannot be reused by another process.
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the process group; if the leader is gone, SIGTERM its descendants."""
        self.refresh()
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
        else:
            self.terminate_survivors()

    def terminate_survivors(self) -> None:
        """SIGTERM every descendant seen that is still running."""
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.terminate()

    def kill(self) -> None:
        """SIGKILL the process group and every descendant seen, then reap the leader."""
        self.refresh()
        self._signal_group(signal.SIGKILL)
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        deadline = time.monotonic() + 5.0  # SIGKILL is asynchronous
        while self.survivors() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop it and its descendants: SIGTERM, then SIGKILL after ``grace`` seconds."""
        stop_processes([self], grace=grace)

    def log_tail(self, lines: int = 25) -> str:
        """The end of this process's log, without colours."""
        return tail_text(self.log_path, lines)

    def __repr__(self) -> str:
        return f"ManagedProcess(name={self.name!r}, pid={self.pid}, returncode={self.poll()})"


def stop_processes(procs: Iterable[ManagedProcess], grace: float = DEFAULT_GRACE) -> None:
    """Stop processes together: SIGTERM each group, wait up to ``grace`` s, then SIGKILL.

    Descendants that outlive their leader get SIGTERM, then SIGKILL. Safe to call
    twice and on processes that already exited.
    """
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
        for proc in procs:
            proc.refresh()
    # Leaders are gone (or out of time); give orphaned descendants a short SIGTERM window.
    for proc in procs:
        proc.terminate_survivors()
    deadline = time.monotonic() + min(3.0, grace)
    while time.monotonic() < deadline and any(p.survivors() for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if proc.running():
            logger.warning(
                "%s (pid %d) did not stop after SIGTERM; killing it", proc.name, proc.pid
            )
        proc.kill()


def wait_until_healthy(
    proc: ManagedProcess,
    address: str,
    *,
    timeout: float,
    what: str,
    ca_cert: Path | None = None,
) -> float:
    """Poll ``ADDRESS/health`` until it answers 200; return the seconds it took.

    Args:
        proc: The server process.
        address: ``HOST:PORT`` to poll.
        timeout: Seconds to wait.
        what: The server, for messages ("the SuperLink").
        ca_cert: Poll over HTTPS, trusting only this CA (the server uses TLS).

    Raises:
        AddressInUseError: if the process exited because its port was taken.
        DeploymentError: if it exited, its certificate was refused, or it did not
            answer within ``timeout`` (with its log tail).
    """
    context: ssl.SSLContext | None = None
    if ca_cert is not None:
        context = ssl.create_default_context(cafile=str(ca_cert))
    url = f"{'https' if context else 'http'}://{address}/health"
    start = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            tail = proc.log_tail(60)
            if _ADDRESS_IN_USE.search(tail):
                raise AddressInUseError(
                    _with_tail(
                        f"{what} could not listen on {address}: address already in use",
                        proc.log_path,
                    )
                )
            raise DeploymentError(
                _with_tail(f"{what} exited with code {code} while starting", proc.log_path)
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=context) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise DeploymentError(
                    f"{what} on {address} presents a certificate this machine refuses: "
                    f"{exc.reason.verify_message or exc.reason}. Expected one signed by "
                    f"{ca_cert} that names {address.rsplit(':', 1)[0]}"
                ) from None
        except OSError:
            pass
        if time.monotonic() - start > timeout:
            raise DeploymentError(
                _with_tail(
                    f"{what} did not answer {url} within {timeout:.0f} s; is the machine "
                    "overloaded? Check its log",
                    proc.log_path,
                )
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- coordinator


@dataclass(frozen=True)
class CoordinatorOptions:
    """What ``fed-coordinator start`` was asked to do (paths are made absolute).

    Attributes:
        scenario_path: The scenario YAML.
        state_dir: SuperLink database (``superlink.db``), ``FLWR_HOME``, submitted app copy.
        out_dir: Where the ServerApp writes results (``rounds.jsonl``, ``federation.json``).
        log_dir: Where ``superlink.log`` and ``flwr-run.log`` go.
        host: Address to listen on.
        port: Port of the SuperLink (Fleet, Control and Runtime APIs share it).
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


#: Why a command without a kit and without ``--insecure`` refuses to start.
NO_KIT_MESSAGE = (
    "{cmd} runs with TLS and node authentication and needs a provisioned kit: write the kits "
    "with `fedcore provision CONSORTIUM.yaml --out KITS/` and pass --kit {kit}. For a test on "
    "one machine only, pass --insecure and a loopback address (127.0.0.1) instead"
)

#: The line ``fed-coordinator`` prints once its SuperLink serves and every node key is
#: registered: sites may connect from then on (:func:`run_deployment` waits for it).
READY_MARK = "SuperLink ready on"


def _flower_error_text(exc: Exception) -> str:
    """The reason inside a Flower Control/Fleet API error, or the exception text."""
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    if text:
        with contextlib.suppress(ValueError, TypeError):
            data = json.loads(text)
            if isinstance(data, dict):
                message = data.get("detail") or data.get("public_message") or data.get("message")
                code = data.get("code")
                if message:
                    return f"[code: {code}] {message}" if code else str(message)
    return str(exc) or type(exc).__name__


class _ControlApi:
    """Minimal client for the SuperLink's Control API (what ``flwr ls`` uses), in-process.

    Calling ``flwr ls`` instead would start a Python process that imports flwr
    (~2.4 s CPU) for every poll.
    """

    def __init__(self, address: str, flwr_home: Path, ca_cert: Path | None = None) -> None:
        from flwr.cli.typing import SuperLinkConnection
        from flwr.cli.utils import init_http_client_from_connection

        connection = SuperLinkConnection(
            name=CONNECTION_NAME,
            address=address,
            root_certificates=str(ca_cert) if ca_cert is not None else None,
            insecure=ca_cert is None,
        )
        previous = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(flwr_home)  # where the flwr CLI keeps credentials
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using SuperLink: ..."
                self._client = init_http_client_from_connection(connection)
        finally:
            if previous is None:
                os.environ.pop("FLWR_HOME", None)
            else:
                os.environ["FLWR_HOME"] = previous

    def nodes(self) -> list[Any]:
        """Every node the SuperLink knows (``NodeInfo``: id, name, status, public key ...)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        return list(self._client.ListNodes(ListNodesRequest()).nodes_info)

    def online_nodes(self) -> list[str]:
        """Names (site ids) of the nodes online now; a node without a name shows its id."""
        return sorted(
            node.name or str(node.node_id) for node in self.nodes() if node.status == "online"
        )

    def sync_nodes(self, keys: Mapping[str, bytes]) -> tuple[list[str], list[str], list[str]]:
        """Make the registered node keys the members' keys, before any site connects.

        Registers each key not registered yet under its site id as node name, and
        unregisters every registered node whose key is not in ``keys`` (a member that
        left, or a key replaced by a new provisioning). The SuperLink never lets an
        unregistered key register again.

        Args:
            keys: Site id -> public key as Flower stores it (PEM SubjectPublicKeyInfo).

        Returns:
            ``(registered, kept, unregistered)``: site ids registered now, site ids that
            were registered already, and names or ids of the nodes unregistered.

        Raises:
            DeploymentError: if the SuperLink refuses a registration.
        """
        from flwr.proto.control_pb2 import RegisterNodeRequest, UnregisterNodeRequest

        by_key = {key: site_id for site_id, key in keys.items()}
        if len(by_key) != len(keys):
            twins = sorted(s for s in keys if list(keys.values()).count(keys[s]) > 1)
            raise DeploymentError(
                f"sites {', '.join(twins)} have the same node public key in the coordinator "
                f"kit: each site needs its own key pair. Fix: {_PROVISION_FIX}"
            )
        registered: list[str] = []
        kept: list[str] = []
        unregistered: list[str] = []
        present: set[bytes] = set()
        for node in self.nodes():
            if node.status == "unregistered":
                continue
            site_id = by_key.get(bytes(node.public_key))
            if site_id is None:
                try:
                    self._client.UnregisterNode(UnregisterNodeRequest(node_id=node.node_id))
                except Exception as exc:
                    raise DeploymentError(
                        f"could not unregister node {node.node_id} ({node.name or 'no name'}), "
                        f"whose key is not in the coordinator kit: {_flower_error_text(exc)}"
                    ) from None
                unregistered.append(node.name or str(node.node_id))
                continue
            present.add(bytes(node.public_key))
            kept.append(site_id)
            if node.name and node.name != site_id:
                logger.warning(
                    "node %d is registered as %r but its key is site %r's in the kit",
                    node.node_id,
                    node.name,
                    site_id,
                )
        for site_id, key in keys.items():
            if key in present:
                continue
            try:
                self._client.RegisterNode(RegisterNodeRequest(public_key=key, name=site_id))
            except Exception as exc:
                raise DeploymentError(
                    f"the SuperLink refused to register site {site_id!r}'s node key: "
                    f"{_flower_error_text(exc)}. A key unregistered once cannot be registered "
                    "again in the same state directory: provision a new key for the site, or "
                    "start with a fresh --state"
                ) from None
            registered.append(site_id)
        return sorted(registered), sorted(kept), sorted(unregistered)

    def run_status(self, run_id: int) -> tuple[str, str, str]:
        """``(status, sub_status, details)``, e.g. ``("finished", "failed", "...")``."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        for proto in res.run_dict.values():
            run = run_from_proto(proto)
            return run.status.status, run.status.sub_status, run.status.details
        raise DeploymentError(f"the SuperLink does not know run {run_id}")

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self._client.StopRun(StopRunRequest(run_id=run_id))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _remove_stale_results(out_dir: Path) -> list[str]:
    """Delete ``rounds.jsonl`` / ``federation.json`` of an earlier run in ``out_dir``."""
    removed = []
    for name in ("rounds.jsonl", "federation.json"):
        path = out_dir / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed


def _read_federation(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / "federation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
            _with_tail(
                f"`flwr run` could not submit the run (exit code {done.returncode})", log_path
            )
        )
    return int(run_id), str(payload.get("fab-hash", ""))


def _wait_for_sites(
    control: _ControlApi,
    superlink: ManagedProcess,
    scenario: Scenario,
    address: str,
    timeout: float,
    console: Console,
    insecure: bool,
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
                _with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink.log_path)
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
            console.print(f"  sites connected: {len(online)}/{expected}{names}", highlight=False)
            shown = online
        if len(online) >= expected:
            return len(online)
        waited = time.monotonic() - start
        if waited > timeout:
            if len(online) >= minimum:
                console.print(
                    f"[yellow]![/] only {len(online)} of {expected} sites connected after "
                    f"{waited:.0f} s; starting anyway (scheduler.min_sites is {minimum})"
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
    control: _ControlApi,
    run_id: int,
    superlink: ManagedProcess,
    out_dir: Path,
    console: Console,
) -> tuple[str, str, str]:
    """Print each finished round until the run finishes; return its final status."""
    tail = RoundsTail(out_dir / "rounds.jsonl")
    failures = 0
    last: tuple[str, str, str] = ("pending", "", "")
    while True:
        for row in tail.read_new():
            console.print(f"  {escape(format_round(row))}", highlight=False)
        if superlink.poll() is not None:
            raise DeploymentError(
                _with_tail(
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
                    _with_tail(f"the SuperLink stopped answering: {exc}", superlink.log_path)
                ) from exc
            status = last
        if status[0] != last[0]:
            logger.info("run %d: %s", run_id, status[0])
        last = status
        if status[0] == "finished":
            for row in tail.read_new():
                console.print(f"  {escape(format_round(row))}", highlight=False)
            return status
        time.sleep(1.0)


def serve_coordinator(opts: CoordinatorOptions, console: Console | None = None) -> int:
    """Run a SuperLink, wait for the sites, run the scenario, report (``fed-coordinator start``).

    Args:
        opts: What to run; see :class:`CoordinatorOptions`.
        console: Where progress goes (default: stdout).

    Returns:
        An exit code: :data:`EXIT_OK` (completed), :data:`EXIT_FAILED`,
        :data:`EXIT_USAGE`, :data:`EXIT_ADDRESS_IN_USE` or :data:`EXIT_INTERRUPTED`.
        Without ``exit_when_done`` it returns only after Ctrl-C / SIGTERM.
    """
    from fedcore.config import ConfigError

    console = console or Console(soft_wrap=True)
    security = opts.security
    node_keys: dict[str, bytes] = {}
    warnings: list[str] = []
    try:
        check_transport(opts.host, insecure=opts.insecure, action="listen on")
        scenario = load_scenario(opts.scenario_path, check_files=False)  # data lives at the sites
        if opts.insecure and security is not None:
            raise DeploymentError(
                "insecure=True and security=... exclude each other: without TLS there is no "
                "certificate to serve and no node key to check. Drop one of them"
            )
        if security is None and not opts.insecure:
            raise DeploymentError(
                NO_KIT_MESSAGE.format(cmd="fed-coordinator", kit="KITS/coordinator")
            )
        if security is not None:
            warnings = security.check(opts.host)
            node_keys = security.registration_keys()
            missing = [s.id for s in scenario.sites if s.id not in node_keys]
            if missing:
                raise DeploymentError(
                    f"scenario site(s) {', '.join(missing)} have no node public key in the "
                    f"coordinator kit (nodes/<site-id>.pub holds {', '.join(sorted(node_keys))}), "
                    "so they could never connect. Fix: add the sites to the consortium file and "
                    "provision again, or run a scenario with the kit's sites"
                )
    except (DeploymentError, ConfigError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)

    address = format_address(opts.host, opts.port)
    local = format_address(local_host(opts.host), opts.port)  # how this machine reaches it
    if not port_is_free(opts.host, opts.port):
        console.print(
            f"[red]error:[/] {address} is already in use (another fed-coordinator?); "
            "choose another port with --listen HOST:PORT",
            highlight=False,
        )
        return EXIT_ADDRESS_IN_USE

    for path in (opts.state_dir, opts.out_dir, opts.log_dir):
        path.mkdir(parents=True, exist_ok=True)
    flwr_home = opts.state_dir / "flwr-home"
    ca_cert = security.ca_cert.resolve() if security is not None else None
    write_connection_config(flwr_home, local, ca_cert)
    env = flower_env(flwr_home)
    superlink_log = opts.log_dir / "superlink.log"
    rounds = opts.rounds or scenario.rounds
    console.print(
        f"[bold]fed-coordinator[/]  scenario [bold]{escape(scenario.name)}[/]: "
        f"{len(scenario.sites)} sites, {rounds} rounds, min_sites {scenario.scheduler.min_sites}",
        highlight=False,
    )
    if security is None:
        transport = "insecure: no TLS, no node authentication, loopback only"
    else:
        transport = f"TLS, node authentication; {len(node_keys)} member node key(s)"
    console.print(f"  listen   {address} ({transport})", highlight=False)
    if opts.kit_dir is not None:
        console.print(f"  kit      {opts.kit_dir}", highlight=False)
    console.print(f"  state    {opts.state_dir / 'superlink.db'}", highlight=False)
    console.print(f"  results  {opts.out_dir}", highlight=False)
    console.print(f"  logs     {superlink_log}", highlight=False)
    console.print(
        f"  inspect  FLWR_HOME={shlex.quote(str(flwr_home))} flwr ls {CONNECTION_NAME}",
        highlight=False,
    )

    argv = [flower_command("flower-superlink")]
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
    argv += [
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--database",
        str(opts.state_dir / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]

    procs: list[ManagedProcess] = []
    control: _ControlApi | None = None
    run_id: int | None = None
    finished = False
    with sigterm_as_interrupt():
        try:
            t0 = time.monotonic()
            superlink = ManagedProcess.start(
                "SuperLink", argv, log_path=superlink_log, env=env, registry=procs
            )
            took = wait_until_healthy(
                superlink,
                local,
                timeout=opts.startup_timeout,
                what="the SuperLink",
                ca_cert=ca_cert,
            )
            control = _ControlApi(local, flwr_home, ca_cert)
            if security is not None:
                registered, kept, dropped = control.sync_nodes(node_keys)
                for site_id in sorted(node_keys):
                    how = "registered" if site_id in registered else "already registered"
                    fingerprint = node_key_fingerprint(security.node_public_keys[site_id])
                    console.print(
                        f"  node key {escape(site_id)}: {fingerprint} ({how})", highlight=False
                    )
                if dropped:
                    console.print(
                        f"[yellow]![/] unregistered node(s) whose key is no longer in the kit: "
                        f"{escape(', '.join(dropped))}",
                        highlight=False,
                    )
            console.print(f"[green]✓[/] {READY_MARK} {address} in {took:.1f} s", highlight=False)
            online = _wait_for_sites(
                control, superlink, scenario, address, opts.site_timeout, console, opts.insecure
            )
            console.print(
                f"[green]✓[/] {online} site(s) connected after {time.monotonic() - t0:.1f} s"
            )

            removed = _remove_stale_results(opts.out_dir)
            if removed:
                console.print(f"  removed results of an earlier run: {', '.join(removed)}")
            if not (APP_DIR / "pyproject.toml").is_file():
                raise DeploymentError(
                    f"the Flower app directory {APP_DIR} lacks pyproject.toml; the fedcore "
                    "installation is incomplete (package data missing): reinstall fedcore"
                )
            app_dir = opts.state_dir / "app"
            shutil.rmtree(app_dir, ignore_errors=True)
            shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            # The sites are there: the round driver need not wait long for them again.
            wait_sites = 30.0 if online >= len(scenario.sites) else 0.0
            run_id, fab_hash = _submit_run(opts, app_dir, env, wait_sites)
            console.print(
                f"[green]✓[/] run {run_id} submitted (app bundle {fab_hash})", highlight=False
            )

            status, sub_status, details = _watch_run(
                control, run_id, superlink, opts.out_dir, console
            )
            finished = True
            code = _report(status, sub_status, details, opts, superlink, console)
            if opts.exit_when_done:
                return code
            console.print("still serving; press Ctrl-C to stop")
            while superlink.poll() is None:
                time.sleep(1.0)
            console.print(
                escape(
                    _with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink_log)
                ),
                highlight=False,
            )
            return EXIT_FAILED
        except AddressInUseError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_ADDRESS_IN_USE
        except DeploymentError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_FAILED
        except KeyboardInterrupt as exc:
            console.print(f"[yellow]interrupted[/] ({escape(str(exc) or 'Ctrl-C')}); stopping")
            return EXIT_INTERRUPTED
        finally:
            with deferred_signals(reraise=False):  # already stopping: a second Ctrl-C waits
                if control is not None and run_id is not None and not finished:
                    with contextlib.suppress(Exception):
                        control.stop_run(run_id)
                if control is not None:
                    control.close()
                stop_processes(procs)
                logger.info("coordinator processes stopped")


def _report(
    status: str,
    sub_status: str,
    details: str,
    opts: CoordinatorOptions,
    superlink: ManagedProcess,
    console: Console,
) -> int:
    federation = _read_federation(opts.out_dir)
    if (
        sub_status == "completed"
        and federation is not None
        and federation.get("status") == "completed"
    ):
        n = len(federation.get("rounds") or [])
        if federation.get("model"):
            where = f"model {opts.out_dir / str(federation['model'])}"
        else:  # ckks: the coordinator never held the model in clear
            where = "the model stays at the sites (each in its state_dir, under global/)"
        console.print(f"[green]✓ run completed[/]: {n} rounds; {where}", highlight=False)
        return EXIT_OK
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
    message = _with_tail(f"run failed: {reason}", superlink.log_path, lines=40)
    console.print(f"[red]✗[/] {escape(message)}", highlight=False)
    return EXIT_FAILED


# --------------------------------------------------------------------------- site


@dataclass(frozen=True)
class SiteOptions:
    """What ``fed-client start`` was asked to do (paths are made absolute).

    Attributes:
        site_path: The site config YAML; only its path goes to the ClientApp (``node_config``).
        host: Coordinator host.
        port: Coordinator port.
        security: The CA to trust and the node key to sign with; required unless ``insecure``.
        insecure: No TLS and no node key; accepted for a loopback coordinator only (see
            :func:`check_transport`), and only when asked for explicitly.
        kit_dir: The site kit directory, handed to the ClientApp as node-config ``kit``
            (``""`` when ``None``); it may be given with ``insecure`` too.
        state_dir: The SuperNode's ``FLWR_HOME`` and default log place; ``None`` uses the
            site config's ``state_dir`` or ``./fedcore-site-ID``.
        log_file: SuperNode log; ``None`` is ``STATE/logs/supernode.log``.
        startup_timeout: Seconds the SuperNode gets to answer its health check.
        refused_retry_for: Seconds to keep starting the SuperNode again, every
            :data:`REFUSED_RETRY_DELAY` s, while the coordinator refuses the node key
            (a coordinator still registering keys, or this node's previous connection not
            timed out yet); then give up. ``0`` gives up at the first refusal.
    """

    site_path: Path
    host: str
    port: int
    security: SiteSecurity | None = None
    insecure: bool = False
    kit_dir: Path | None = None
    state_dir: Path | None = None
    log_file: Path | None = None
    startup_timeout: float = 120.0
    refused_retry_for: float = 90.0


#: Seconds between two SuperNode starts while the coordinator refuses the node key.
REFUSED_RETRY_DELAY = 5.0

_REFUSED = re.compile(r"\[code: 200[14]\]")
_TLS_VERIFY = re.compile(r"CERTIFICATE_VERIFY_FAILED[^\n]*", re.IGNORECASE)
_TLS_NAME = re.compile(r"(hostname|ip address) mismatch", re.IGNORECASE)
_TLS_PROTOCOL = re.compile(
    r"WRONG_VERSION_NUMBER|RECORD_LAYER_FAILURE|PACKET_LENGTH_TOO_LONG|"
    r"Server disconnected without sending a response",
    re.IGNORECASE,
)


def _read_from(path: Path, offset: int) -> str:
    """The text a log gained after ``offset`` bytes, without ANSI colours."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return _ANSI.sub("", data.decode("utf-8", errors="replace"))


def _supernode_failure(
    log_text: str, site_id: str, coordinator: str, security: SiteSecurity | None
) -> tuple[str, bool] | None:
    """Explain why a SuperNode could not connect; ``(message, retry)`` or ``None`` if unknown."""
    if _REFUSED.search(log_text):
        if security is None:
            return (
                f"the coordinator {coordinator} requires node authentication: this site needs "
                "its kit (--kit KITS/SITE-ID) instead of --insecure",
                False,
            )
        fingerprint = node_key_fingerprint(security.node_public_key)
        return (
            f"the coordinator {coordinator} refused this site's node key {fingerprint}. Either "
            f"the key is not registered there (the coordinator kit's nodes/{site_id}.pub must be "
            f"this kit's node.pub, {security.node_public_key}; fed-coordinator registers the "
            "kit's keys when it starts, so restart it after provisioning), or a node with this "
            "key is connected already (another fed-client with this kit, or one stopped less "
            "than a minute ago)",
            True,
        )
    verify = _TLS_VERIFY.search(log_text)
    if verify and security is not None:
        host = coordinator.rsplit(":", 1)[0].strip("[]")
        if _TLS_NAME.search(verify.group(0)):
            return (
                f"the coordinator's TLS certificate does not name {host}: connect with a host "
                "name the certificate lists (--coordinator HOST:PORT, as the consortium "
                f"operator provisioned it), or ask the operator to provision it for {host}",
                False,
            )
        return (
            f"the coordinator {coordinator} presents a TLS certificate that this site's CA "
            f"({security.ca_cert}) did not sign: the site kit and the coordinator kit come "
            "from different provisionings, or --coordinator points at another server. Fix: use "
            "the site kit written by the same `fedcore provision` run as the coordinator's",
            False,
        )
    if _TLS_PROTOCOL.search(log_text):
        if security is None:
            return (
                f"the coordinator {coordinator} speaks TLS but this site connects without it "
                "(--insecure): pass --kit KITS/SITE-ID instead",
                False,
            )
        return (
            f"the coordinator {coordinator} does not speak TLS (was it started with "
            "--insecure?); a site with a kit only connects with TLS",
            False,
        )
    return None


def serve_site(opts: SiteOptions, console: Console | None = None) -> int:
    """Run one site's SuperNode until Ctrl-C / SIGTERM (``fed-client start``).

    The SuperNode gets ``--node-config "site-config='ABS_PATH' kit='KIT_DIR'"``: the
    paths are all that reaches the ClientApp, and they stay on this machine. With
    :class:`SiteSecurity` it trusts only the consortium CA
    (``--root-certificates``) and signs its requests with the node key
    (``--auth-supernode-private-key``).

    Returns:
        :data:`EXIT_USAGE` for a bad site file, kit or address (a kit of another site
        included), :data:`EXIT_FAILED` if the SuperNode dies or the coordinator refuses
        it (the message says why), :data:`EXIT_INTERRUPTED` after Ctrl-C / SIGTERM.
    """
    from fedcore.config import ConfigError

    console = console or Console(soft_wrap=True)
    security = opts.security
    warnings: list[str] = []
    try:
        check_transport(opts.host, insecure=opts.insecure, action="connect to")
        site = load_site_config(opts.site_path)
        if opts.insecure and security is not None:
            raise DeploymentError(
                "insecure=True and security=... exclude each other: without TLS the node key "
                "is never used. Drop one of them"
            )
        if security is None and not opts.insecure:
            raise DeploymentError(NO_KIT_MESSAGE.format(cmd="fed-client", kit=f"KITS/{site.id}"))
        if security is not None:
            if security.site_id is not None and security.site_id != site.id:
                where = f" {opts.kit_dir}" if opts.kit_dir is not None else ""
                raise DeploymentError(
                    f"the kit{where} was provisioned for site {security.site_id!r}, but the "
                    f"site config {opts.site_path} is site {site.id!r}: expected this site's "
                    f"own kit. Fix: pass --kit with the kit of {site.id!r} (KITS/{site.id})"
                )
            warnings = security.check()
        node_config = config_args(
            {
                "site-config": str(opts.site_path.resolve()),
                "kit": str(opts.kit_dir.resolve()) if opts.kit_dir is not None else "",
            }
        )
    except (DeploymentError, ConfigError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    site_path = opts.site_path.resolve()
    state_dir = (opts.state_dir or site.state_dir or Path(f"fedcore-site-{site.id}")).resolve()
    log_file = (opts.log_file or state_dir / "logs" / "supernode.log").resolve()
    coordinator = format_address(opts.host, opts.port)
    env = flower_env(state_dir / "flwr-home")
    if security is None:
        transport = "insecure: no TLS, no node key, loopback only"
        auth_args = ["--insecure"]
    else:
        transport = f"TLS, node key {node_key_fingerprint(security.node_public_key)}"
        auth_args = [
            "--root-certificates",
            str(security.ca_cert.resolve()),
            "--auth-supernode-private-key",
            str(security.node_private_key.resolve()),
        ]
    console.print(
        f"[bold]fed-client[/]  site [bold]{escape(site.id)}[/] → coordinator {coordinator} "
        f"({transport})",
        highlight=False,
    )
    console.print(f"  site config  {site_path} (stays on this machine)", highlight=False)
    if opts.kit_dir is not None:
        console.print(f"  kit          {opts.kit_dir.resolve()}", highlight=False)
    console.print(f"  logs         {log_file}", highlight=False)

    procs: list[ManagedProcess] = []
    first_refusal: float | None = None
    with sigterm_as_interrupt():
        try:
            while True:
                supernode, log_offset = _start_supernode(
                    site.id,
                    coordinator,
                    auth_args,
                    node_config,
                    log_file,
                    env,
                    opts,
                    procs,
                    console,
                )
                code, log_text, connected = _watch_supernode(
                    supernode, log_offset, coordinator, console
                )
                stop_processes(procs)
                procs.clear()
                if connected:  # it was in once: a later refusal gets a fresh retry window
                    first_refusal = None
                failure = _supernode_failure(log_text, site.id, coordinator, security)
                if failure is None:
                    message = _with_tail(f"the SuperNode exited with code {code}", log_file)
                    console.print(f"[red]error:[/] {escape(message)}", highlight=False)
                    return EXIT_FAILED
                reason, retry = failure
                now = time.monotonic()
                first_refusal = now if first_refusal is None else first_refusal
                left = opts.refused_retry_for - (now - first_refusal)
                if not retry or left <= 0:
                    console.print(f"[red]error:[/] {escape(reason)}", highlight=False)
                    console.print(f"  (SuperNode log: {log_file})", highlight=False)
                    return EXIT_FAILED
                console.print(
                    f"[yellow]![/] {escape(reason)}; trying again in {REFUSED_RETRY_DELAY:.0f} s "
                    f"(for {left:.0f} s more)",
                    highlight=False,
                )
                time.sleep(REFUSED_RETRY_DELAY)
        except DeploymentError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_FAILED
        except KeyboardInterrupt as exc:
            console.print(f"[yellow]interrupted[/] ({escape(str(exc) or 'Ctrl-C')}); stopping")
            return EXIT_INTERRUPTED
        finally:
            with deferred_signals(reraise=False):  # already stopping: a second Ctrl-C waits
                stop_processes(procs)


def _start_supernode(
    site_id: str,
    coordinator: str,
    auth_args: Sequence[str],
    node_config: str,
    log_file: Path,
    env: Mapping[str, str],
    opts: SiteOptions,
    procs: list[ManagedProcess],
    console: Console,
) -> tuple[ManagedProcess, int]:
    """Start ``flower-supernode`` on a free loopback port; return it and its log offset."""
    for attempt in range(3):
        port = free_port("127.0.0.1")
        try:
            log_offset = log_file.stat().st_size
        except OSError:
            log_offset = 0
        supernode = ManagedProcess.start(
            f"SuperNode {site_id}",
            [
                flower_command("flower-supernode"),
                *auth_args,
                "--superlink",
                coordinator,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--node-config",
                node_config,
            ],
            log_path=log_file,
            env=env,
            registry=procs,
        )
        try:
            took = wait_until_healthy(
                supernode,
                format_address("127.0.0.1", port),
                timeout=opts.startup_timeout,
                what="the SuperNode",
            )
        except AddressInUseError:
            stop_processes([supernode])
            procs.remove(supernode)
            if attempt == 2:
                raise
            continue
        except DeploymentError:
            # It exited while starting: the caller explains why from its log.
            if supernode.poll() is None:
                raise
            return supernode, log_offset
        console.print(f"[green]✓[/] SuperNode up in {took:.1f} s (ClientAppIo 127.0.0.1:{port})")
        return supernode, log_offset
    raise AssertionError("unreachable")


#: Seconds without a connection after which ``fed-client`` says what to check.
CONNECT_HINT_AFTER = 30.0


def _watch_supernode(
    supernode: ManagedProcess, log_offset: int, coordinator: str, console: Console
) -> tuple[int, str, bool]:
    """Follow a SuperNode until it exits; return its exit code, its log, whether it connected."""
    connected = False
    hinted = False
    while True:
        code = supernode.poll()
        if code is not None:
            return code, _read_from(supernode.log_path, log_offset), connected
        if not connected:
            match = re.search(r"SuperNode ID: (\d+)", _read_from(supernode.log_path, log_offset))
            if match:
                connected = True
                console.print(f"[green]✓[/] connected to {coordinator} as node {match.group(1)}")
            elif not hinted and time.monotonic() - supernode.started_at > CONNECT_HINT_AFTER:
                hinted = True
                console.print(
                    f"[yellow]![/] not connected to {coordinator} after "
                    f"{CONNECT_HINT_AFTER:.0f} s; still trying. Check that fed-coordinator runs "
                    "there and listens on that address, and that both sides use TLS (--kit) or "
                    "both --insecure",
                    highlight=False,
                )
        supernode.refresh()
        time.sleep(0.5)


# --------------------------------------------------------------------------- fedcore run


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
    on_round: Callable[[dict[str, Any]], None] | None
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
    on_round: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run a scenario with real Flower processes on loopback (``fedcore run --engine deployment``).

    Launches the production commands as subprocesses, exactly as operators would:
    ``fed-coordinator start --scenario FILE --state OUT/deployment/coordinator
    --listen 127.0.0.1:PORT --kit KITS/coordinator --exit-when-done --out OUT
    --log-dir OUT/logs`` and, once it reports its SuperLink ready (node keys
    registered), one ``fed-client start --site SITE.yaml --coordinator
    127.0.0.1:PORT --kit KITS/SITE`` per site. Their output goes to ``OUT/logs/``.
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
    _remove_stale_results(out_dir)
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
        "--site-timeout",
        str(max(30.0, min(120.0, launch.timeout / 4))),
    ]
    if launch.rounds is not None:
        argv += ["--rounds", str(launch.rounds)]
    coordinator = ManagedProcess.start(
        "fed-coordinator", argv, log_path=log_dir / "fed-coordinator.log", env=env, registry=procs
    )
    if not launch.insecure:
        # Sites connect only once their node keys are registered, or they would be refused.
        while READY_MARK not in tail_text(coordinator.log_path, 200):
            code = coordinator.poll()
            if code is not None:
                if code == EXIT_ADDRESS_IN_USE:
                    return None
                return _outcome(code, launch.out_dir, coordinator)
            if time.monotonic() > launch.deadline:
                raise DeploymentError(
                    _with_tail(
                        f"fed-coordinator did not get ready within {launch.timeout:.0f} s",
                        coordinator.log_path,
                    )
                )
            time.sleep(0.2)
    clients: dict[str, ManagedProcess] = {}
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
                "--state",
                str(state / "sites" / site_id),
                "--log-file",
                str(log_dir / f"supernode-{site_id}.log"),
            ],
            log_path=log_dir / f"fed-client-{site_id}.log",
            env=env,
            registry=procs,
        )
    tail = RoundsTail(launch.out_dir / "rounds.jsonl")
    dead: set[str] = set()
    minimum = launch.scenario.scheduler.min_sites

    def drain() -> None:
        for row in tail.read_new():
            if launch.on_round is not None:
                launch.on_round(row)

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
                message = _with_tail(
                    f"{what}; {live} of {len(clients)} sites remain but the scenario needs "
                    f"scheduler.min_sites={minimum}, so the federation cannot go on",
                    client.log_path,
                    lines=6,
                )
                raise DeploymentError(
                    _with_tail(message, log_dir / f"supernode-{site_id}.log", lines=15)
                )
            logger.warning(
                "%s; going on with %d of %d sites (min_sites=%d)", what, live, len(clients), minimum
            )
        for proc in procs:
            proc.refresh()
        if time.monotonic() > launch.deadline:
            raise DeploymentError(
                _with_tail(
                    f"the federation did not finish within {launch.timeout:.0f} s (timeout); "
                    "raise it or run fewer rounds",
                    coordinator.log_path,
                )
            )
        time.sleep(0.5)


def _outcome(code: int, out_dir: Path, coordinator: ManagedProcess) -> dict[str, Any]:
    federation = _read_federation(out_dir)
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
    raise DeploymentError(_with_tail(reason, coordinator.log_path, lines=40))
