"""Provisioning: a consortium CA, TLS certificates, node keys and CKKS key kits, written as in :mod:`secure.kitfiles`."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedcore.config import (
    SITE_ID_PATTERN,
    CkksSpec,
    ConfigError,
    load_scenario,
    read_yaml,
    validation_message,
)
from fedcore.storage import atomic_write_bytes
from secure import kitfiles
from secure.manifest import KIT_KIND, KIT_VERSION, KitManifest, Role

CA_CURVE = ec.SECP384R1
"""The consortium CA's key: ECDSA P-384."""
TLS_CURVE = ec.SECP256R1
"""TLS leaf keys (coordinator server, site clients): ECDSA P-256, accepted by every TLS stack."""
NODE_CURVE = ec.SECP384R1
"""Node keys: ECDSA P-384, the curve Flower generates for SuperNode authentication (any NIST curve is accepted)."""

RESERVED_KIT_NAMES = frozenset({kitfiles.CA_DIR, kitfiles.COORDINATOR_DIR})
"""Kit directory names that a site id cannot take."""

CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates are valid from this long before provisioning, for machines whose clocks run behind."""

log = logging.getLogger(__name__)

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class ProvisionError(Exception):
    """The kits cannot be written where asked (existing kits without ``force``, a file in the way)."""


class CoordinatorSpec(BaseModel):
    """Where the coordinator is reached: the names put in its server certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1"],
        min_length=1,
        description="DNS names and IP addresses the sites use to reach the coordinator",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        bad = [h for h in hosts if not _is_ip(h) and not _is_dns_name(h)]
        if bad:
            raise ValueError(
                f"not an IP address or DNS name: {', '.join(repr(h) for h in bad)}; "
                "use names like coordinator.example.org or addresses like 10.0.0.5 (no port, no scheme)"
            )
        dupes = sorted(h for h, n in Counter(h.lower() for h in hosts).items() if n > 1)
        if dupes:
            raise ValueError(f"host(s) listed more than once: {', '.join(dupes)}")
        return hosts


class ConsortiumSpec(BaseModel):
    """What ``fedcore provision`` needs to know about a consortium."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        ...,
        min_length=1,
        max_length=48,
        pattern=r"^[^\x00-\x1f]+$",
        description="consortium name (certificate organization)",
    )
    sites: list[str] = Field(..., min_length=1, description="site ids, e.g. bank-a")
    coordinator: CoordinatorSpec = CoordinatorSpec()
    validity_days: int = Field(365, ge=1, le=3650, description="how long certificates are valid")
    ckks: CkksSpec = CkksSpec()

    @field_validator("sites")
    @classmethod
    def _sites(cls, sites: list[str]) -> list[str]:
        bad = [s for s in sites if not isinstance(s, str) or not re.match(SITE_ID_PATTERN, s)]
        if bad:
            raise ValueError(
                f"invalid site id(s) {', '.join(repr(s) for s in bad)}: use lowercase letters, digits, "
                "'-' and '_', starting with a letter or digit (e.g. bank-a)"
            )
        reserved = sorted(set(sites) & RESERVED_KIT_NAMES)
        if reserved:
            raise ValueError(
                f"site id(s) {', '.join(reserved)} are reserved for the CA and coordinator kits; "
                "rename the site(s)"
            )
        dupes = sorted(i for i, n in Counter(sites).items() if n > 1)
        if dupes:
            raise ValueError(f"site id(s) listed more than once: {', '.join(dupes)}")
        return sites

    @property
    def hosts(self) -> list[str]:
        """The coordinator's DNS names and IP addresses."""
        return list(self.coordinator.hosts)


@dataclass(frozen=True)
class KitSummary:
    """One kit written by :func:`provision` (no secret material)."""

    role: Role
    path: Path
    files: tuple[str, ...]
    not_after: dt.datetime
    site_id: str | None = None


@dataclass(frozen=True)
class ProvisionReport:
    """What :func:`provision` wrote and replaced."""

    consortium: str
    out_dir: Path
    kits: tuple[KitSummary, ...]
    ca_sha256: str
    """SHA-256 fingerprint of the CA certificate (DER), to compare out of band."""
    not_after: dt.datetime
    replaced: tuple[Path, ...] = ()
    """Kit directories that existed and were replaced (``force=True``)."""
    others: tuple[Path, ...] = field(default=())
    """Kits found in ``out_dir`` that are not part of this consortium; left as they were."""


# --------------------------------------------------------------------------- loading


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_dns_name(host: str) -> bool:
    name = host[2:] if host.startswith("*.") else host
    if not name or len(name) > 253 or name.endswith("."):
        return False
    return all(_DNS_LABEL.match(label) for label in name.split("."))


def _validation_message(err: ValidationError, data: Any) -> str:
    return validation_message(
        err,
        data,
        "a consortium file has name, sites, coordinator.hosts, validity_days and ckks",
    )


def _is_scenario(data: dict[str, Any]) -> bool:
    sites = data.get("sites")
    return isinstance(sites, list) and any(isinstance(s, dict) for s in sites)


def load_consortium(path: Path | str) -> ConsortiumSpec:
    """Load a consortium from a consortium YAML or a fedcore scenario YAML.

    A consortium file lists ``name``, ``sites`` (ids), ``coordinator: {hosts: [...]}``,
    ``validity_days`` and ``ckks``. A scenario file (sites are mappings with ``id``
    and ``data``) gives the name, the site ids and ``privacy.ckks``; its data files
    are not checked.

    Args:
        path: The YAML file.

    Returns:
        The validated consortium.

    Raises:
        ConfigError: naming the file and each bad field.
    """
    path = Path(path)
    data = read_yaml(path)
    if _is_scenario(data):
        sc = load_scenario(path, check_files=False)
        derived = {"name": sc.name, "sites": [s.id for s in sc.sites], "ckks": sc.privacy.ckks}
        try:
            return ConsortiumSpec.model_validate(derived)
        except ValidationError as exc:
            raise ConfigError(
                path, "scenario cannot be provisioned: " + _validation_message(exc, derived)
            ) from None
    try:
        return ConsortiumSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _validation_message(exc, data)) from None


# --------------------------------------------------------------------------- files


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600).

    The bytes go to a temporary file in the same directory, which is flushed,
    restricted to 0600 and renamed over ``path``: a reader sees the old file or
    the new one, never half of it.
    """
    atomic_write_bytes(path, data, mode=0o600)


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- keys and certificates


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a TLS leaf signs (ECDHE handshakes) only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _new_ca(spec: ConsortiumSpec, not_before: dt.datetime, not_after: dt.datetime) -> _Authority:
    key = ec.generate_private_key(CA_CURVE())
    name = _name(f"{spec.name} CA", spec.name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return _Authority(key, cert)


def _leaf(
    ca: _Authority,
    common_name: str,
    organization: str,
    usage: x509.ObjectIdentifier,
    not_before: dt.datetime,
    not_after: dt.datetime,
    sans: Sequence[x509.GeneralName] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(TLS_CURVE())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return key, builder.sign(ca.key, hashes.SHA384())


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        if _is_ip(h):
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        else:
            out.append(x509.DNSName(h))
    return out


def node_key_pair(site_id: str) -> tuple[bytes, bytes]:
    """A fresh ECDSA node key pair in OpenSSH format: (private, public with a comment)."""
    key = ec.generate_private_key(NODE_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" fedcore-node-{site_id}\n".encode()


def _ckks_contexts(spec: CkksSpec) -> tuple[bytes, bytes]:
    """The consortium's CKKS contexts, serialized: (with the secret key, without any)."""
    from secure import ckks  # TenSEAL loads slowly: only when provisioning

    params = ckks.CkksParams.from_spec(spec)
    secret = ckks.context_to_bytes(ckks.new_secret_context(params), secret=True)
    public = ckks.context_to_bytes(ckks.public_context(params), secret=False)
    return secret, public


# --------------------------------------------------------------------------- kits


def _write_kit(
    kit_dir: Path,
    files: dict[str, bytes],
    *,
    role: Role,
    spec: ConsortiumSpec,
    created: dt.datetime,
    not_after: dt.datetime,
    ca_sha256: str,
    site_id: str | None = None,
) -> tuple[str, ...]:
    _mkdir_private(kit_dir)
    for rel, data in files.items():
        target = kit_dir / rel
        if target.parent != kit_dir:
            _mkdir_private(target.parent)
        write_private_file(target, data)
    manifest = KitManifest(
        kind=KIT_KIND,
        version=KIT_VERSION,
        role=role,
        consortium=spec.name,
        site_id=site_id,
        created=created,
        not_after=not_after,
        ca_sha256=ca_sha256,
        coordinator_hosts=spec.hosts,
        sites=list(spec.sites) if role == "coordinator" else [],
        ckks=spec.ckks,
        files={rel: _sha256(data) for rel, data in sorted(files.items())},
    )
    blob = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    write_private_file(kit_dir / kitfiles.MANIFEST, blob.encode())
    return (kitfiles.MANIFEST, *sorted(files))


def _existing_kits(out_dir: Path, names: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(kit directories this run would replace, other kits already in ``out_dir``)."""
    if not out_dir.is_dir():
        return [], []
    wanted = set(names)
    clash = [out_dir / n for n in names if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    others = sorted(
        p
        for p in out_dir.iterdir()
        if p.name not in wanted and p.is_dir() and (p / kitfiles.MANIFEST).is_file()
    )
    return clash, others


def _swap_in(staging: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move the finished kits from ``staging`` into ``out_dir``; on failure put the old ones back."""
    moved: list[str] = []
    installed: list[str] = []
    try:
        for name in names:
            target = out_dir / name
            if target.exists() or target.is_symlink():
                target.rename(staging / f".replaced-{name}")
                moved.append(name)
            (staging / name).rename(target)
            installed.append(name)
    except BaseException:
        for name in installed:
            (out_dir / name).rename(staging / name)
        for name in moved:
            (staging / f".replaced-{name}").rename(out_dir / name)
        raise


def provision(
    spec: ConsortiumSpec,
    out_dir: Path | str,
    *,
    now: dt.datetime | None = None,
    force: bool = False,
) -> ProvisionReport:
    """Create the consortium's CA, coordinator kit and one kit per site under ``out_dir``.

    Layout as in :mod:`secure.kitfiles`. Every file is written 0600 (directories
    0700), atomically; the kits are built in a staging directory inside
    ``out_dir`` and moved into place only when all of them are complete.

    Args:
        spec: The consortium.
        out_dir: Where ``ca/``, ``coordinator/`` and ``<site-id>/`` are written.
        now: Provisioning time (default: the current time, UTC); certificates are
            valid from ``now`` (less a few minutes of clock skew) for
            ``spec.validity_days`` days.
        force: Replace kit directories that already exist (listed in the report).

    Returns:
        What was written, with paths and expiry; no secret material.

    Raises:
        ProvisionError: ``out_dir`` is not a directory, or kits already exist there
            and ``force`` is false.
    """
    out_dir = Path(out_dir)
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    if out_dir.exists() and not out_dir.is_dir():
        raise ProvisionError(
            f"{out_dir} exists and is not a directory: pass --out a new or existing directory"
        )
    names = [kitfiles.CA_DIR, kitfiles.COORDINATOR_DIR, *spec.sites]
    clash, others = _existing_kits(out_dir, names)
    if clash and not force:
        raise ProvisionError(
            f"kit director{'ies' if len(clash) > 1 else 'y'} already exist: "
            f"{', '.join(str(p) for p in clash)}. Replacing them discards their keys, and every kit "
            "of the consortium must then be redistributed: run `fedcore provision` again with "
            "--force to replace them, or choose another output directory"
        )
    if not out_dir.exists():
        out_dir.mkdir(mode=0o700, parents=True)
        os.chmod(out_dir, 0o700)

    not_before = now - CLOCK_SKEW
    not_after = now + dt.timedelta(days=spec.validity_days)
    ca = _new_ca(spec, not_before, not_after)
    ca_pem = _pem_cert(ca.cert)
    ca_sha256 = _sha256(ca.cert.public_bytes(serialization.Encoding.DER))
    secret_ctx, public_ctx = _ckks_contexts(spec.ckks)
    nodes = {site: node_key_pair(site) for site in spec.sites}
    common: dict[str, Any] = {
        "spec": spec,
        "created": now,
        "not_after": not_after,
        "ca_sha256": ca_sha256,
    }

    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".provision-"))
    try:
        kits: list[KitSummary] = []
        files = _write_kit(
            staging / kitfiles.CA_DIR,
            {kitfiles.CA_CERT: ca_pem, kitfiles.CA_KEY: _pem_key(ca.key)},
            role="ca",
            **common,
        )
        kits.append(KitSummary("ca", out_dir / kitfiles.CA_DIR, files, not_after))

        server_key, server_cert = _leaf(
            ca,
            spec.hosts[0],
            spec.name,
            ExtendedKeyUsageOID.SERVER_AUTH,
            not_before,
            not_after,
            _host_names(spec.hosts),
        )
        coord_files = {
            kitfiles.CA_CERT: ca_pem,
            kitfiles.SERVER_CERT: _pem_cert(server_cert),
            kitfiles.SERVER_KEY: _pem_key(server_key),
            kitfiles.CKKS_PUBLIC: public_ctx,
        }
        for site, (_, pub) in nodes.items():
            coord_files[f"{kitfiles.NODES_DIR}/{site}.pub"] = pub
        files = _write_kit(
            staging / kitfiles.COORDINATOR_DIR, coord_files, role="coordinator", **common
        )
        kits.append(KitSummary("coordinator", out_dir / kitfiles.COORDINATOR_DIR, files, not_after))

        for site in spec.sites:
            client_key, client_cert = _leaf(
                ca,
                site,
                spec.name,
                ExtendedKeyUsageOID.CLIENT_AUTH,
                not_before,
                not_after,
                [x509.DNSName(site)],
            )
            node_key, node_pub = nodes[site]
            site_files = {
                kitfiles.CA_CERT: ca_pem,
                kitfiles.CLIENT_CERT: _pem_cert(client_cert),
                kitfiles.CLIENT_KEY: _pem_key(client_key),
                kitfiles.NODE_KEY: node_key,
                kitfiles.NODE_PUB: node_pub,
                kitfiles.CKKS_SECRET: secret_ctx,
            }
            files = _write_kit(staging / site, site_files, role="site", site_id=site, **common)
            kits.append(KitSummary("site", out_dir / site, files, not_after, site_id=site))

        _swap_in(staging, out_dir, names)
        for k in kits:
            log.info("wrote the %s kit %s (%d files)", k.site_id or k.role, k.path, len(k.files))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return ProvisionReport(
        consortium=spec.name,
        out_dir=out_dir,
        kits=tuple(kits),
        ca_sha256=ca_sha256,
        not_after=not_after,
        replaced=tuple(clash),
        others=tuple(others),
    )
