"""TLS and node-key security of a deployment: the coordinator's, a site's, and both for ``fedcore run``.

The files come from provisioned kits (``fedcore provision``); they are described here as
plain paths (the kit layout belongs to ``secure``) and checked with :mod:`fedcore.pki`
before any process starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore import pki
from fedcore.engines.deployment.errors import DeploymentConfigError
from fedcore.engines.deployment.network import local_host

__all__ = [
    "NO_KIT_MESSAGE",
    "CoordinatorSecurity",
    "DeploymentSecurity",
    "SiteSecurity",
]

_PROVISION_FIX = pki.PROVISION_FIX

#: Why a command without a kit and without ``--insecure`` refuses to start.
NO_KIT_MESSAGE = (
    "{cmd} runs with TLS and node authentication and needs a provisioned kit: write the kits "
    "with `fedcore provision CONSORTIUM.yaml --out KITS/` and pass --kit {kit}. For a test on "
    "one machine only, pass --insecure and a loopback address (127.0.0.1) instead"
)

_T = TypeVar("_T")


def _checked(load: Callable[[], _T]) -> _T:
    """Run a :mod:`fedcore.pki` loader; its error becomes a :class:`DeploymentConfigError`."""
    try:
        return load()
    except pki.PkiError as exc:
        raise DeploymentConfigError(str(exc)) from None


def _certificate(path: Path, what: str) -> x509.Certificate:
    """Load a certificate and check that it is valid now."""
    cert = _checked(lambda: pki.load_certificate(path, what=what))
    problem = pki.certificate_date_problem(cert)
    if problem is not None:
        raise DeploymentConfigError(f"{what} {path} {problem}. Fix: {_PROVISION_FIX}")
    return cert


def _node_public_key(path: Path, what: str) -> ec.EllipticCurvePublicKey:
    return _checked(lambda: pki.load_node_public_key(path, what=what))


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
            as node name before any site connects (the SuperLink's state is in memory, so
            the kit's keys are the members at every start).
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_public_keys: Mapping[str, Path]

    def __post_init__(self) -> None:
        # A private copy: the caller's mapping may change, this object does not.
        object.__setattr__(self, "node_public_keys", MappingProxyType(dict(self.node_public_keys)))

    def check(self, listen_host: str, control_host: str | None = None) -> list[str]:
        """Validate every file before the SuperLink starts.

        Args:
            listen_host: The host the SuperLink will listen on; the server certificate
                must name it (a wildcard: the loopback address this machine connects to).
            control_host: The loopback host of the SuperLink's Control API; the server
                certificate must name it too (``None``: no such check).

        Returns:
            Warnings that do not stop the coordinator (a private key readable by others).

        Raises:
            DeploymentConfigError: a file is missing or unreadable, a certificate expired, is
                not signed by the CA or does not name ``listen_host`` (or ``control_host``),
                the key does not match the certificate, or a node key is not an ECDSA key on
                a NIST curve.
        """
        ca = _certificate(self.ca_cert, "the CA certificate")
        server = _certificate(self.server_cert, "the server certificate")
        if pki.issuer_problem(server, ca) is not None:
            raise DeploymentConfigError(
                f"the server certificate {self.server_cert} is not signed by the CA in "
                f"{self.ca_cert}: expected both from one provisioning, found two different "
                f"ones. Fix: {_PROVISION_FIX}"
            )
        key = _checked(lambda: pki.load_private_key(self.server_key, what="the server key"))
        if not pki.same_public_key(key.public_key(), server.public_key()):
            raise DeploymentConfigError(
                f"the server key {self.server_key} does not belong to the server certificate "
                f"{self.server_cert}. Fix: {_PROVISION_FIX}"
            )
        host = local_host(listen_host)
        if not pki.certificate_names_host(server, host):
            names = ", ".join(pki.certificate_names(server)) or "no host at all"
            wildcard = (
                f" (this machine reaches a server listening on {listen_host} through {host})"
                if host != listen_host
                else ""
            )
            raise DeploymentConfigError(
                f"the server certificate {self.server_cert} does not name {host}{wildcard}: "
                f"it names {names}. Sites verify the host they connect to against this list. "
                "Fix: listen on one of those names with --listen HOST:PORT, or provision the "
                "coordinator again with this host among its names"
            )
        if control_host is not None and not pki.certificate_names_host(server, control_host):
            names = ", ".join(pki.certificate_names(server)) or "no host at all"
            raise DeploymentConfigError(
                f"the server certificate {self.server_cert} does not name {control_host}: it "
                f"names {names}. The coordinator keeps Flower's Control API on {control_host} "
                "(never on the address sites reach) and talks to it over TLS there. Fix: "
                f"provision the coordinator again with {control_host} among its hosts (the "
                "default hosts are localhost and 127.0.0.1)"
            )
        if not self.node_public_keys:
            raise DeploymentConfigError(
                "the coordinator kit holds no node public key (nodes/<site-id>.pub), so no site "
                f"could ever connect. Fix: {_PROVISION_FIX}"
            )
        self.registration_keys()
        return [w for w in [pki.loose_permissions(self.server_key)] if w]

    def registration_keys(self) -> dict[str, bytes]:
        """Site id -> the public key as the SuperLink registers it (PEM SubjectPublicKeyInfo)."""
        return {
            site_id: pki.public_key_pem(
                _node_public_key(path, f"site {site_id!r}'s node public key")
            )
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
            DeploymentConfigError: a file is missing or unreadable, the CA certificate expired,
                the node key is not an unencrypted OpenSSH ECDSA key on a NIST curve, or
                the public key is not the private key's.
        """
        _certificate(self.ca_cert, "the CA certificate")
        private = _checked(lambda: pki.load_node_private_key(self.node_private_key))
        public = _node_public_key(self.node_public_key, "the node public key")
        if not pki.same_public_key(private.public_key(), public):
            raise DeploymentConfigError(
                f"the node public key {self.node_public_key} is not the public half of "
                f"{self.node_private_key}: expected one key pair from one site kit. "
                f"Fix: {_PROVISION_FIX}"
            )
        return [w for w in [pki.loose_permissions(self.node_private_key)] if w]


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
