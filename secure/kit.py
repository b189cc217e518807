"""Provisioned kits: load and check them, sign site replies with the node key, verify signatures."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcore import pki
from secure import kitfiles
from secure.manifest import (
    KIT_KIND,
    KIT_VERSION,
    ROLES,
    KitError,
    KitManifest,
    Role,
    describe_role,
    expected_files,
    permission_problems,
    read_manifest,
)

__all__ = [
    "KIT_KIND",
    "KIT_VERSION",
    "RENEW_DAYS",
    "ROLES",
    "Check",
    "Kit",
    "KitCheck",
    "KitError",
    "KitManifest",
    "Role",
    "check_kit",
    "expected_files",
    "load_kit",
    "permission_problems",
    "read_manifest",
    "registered_nodes",
    "sign",
    "verify_signature",
    "verify_site_signature",
]

RENEW_DAYS = 30
"""A certificate with fewer days left than this is reported (still valid) as due for renewal."""


@dataclass(frozen=True, eq=False)
class Kit:
    """A loaded kit: its manifest and the path of each of its files.

    Keys are read from disk on first use and kept (see :func:`sign`,
    :func:`registered_nodes`).
    """

    path: Path
    manifest: KitManifest
    files: dict[str, Path]
    """Every file but ``kit.json`` by its name relative to the kit (``client.key``, ``nodes/bank-a.pub``)."""
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def role(self) -> Role:
        """``ca``, ``coordinator`` or ``site``."""
        return self.manifest.role

    @property
    def site_id(self) -> str | None:
        """The site's id (site kits), else ``None``."""
        return self.manifest.site_id

    @property
    def consortium(self) -> str:
        """The consortium's name."""
        return self.manifest.consortium

    def file(self, name: str) -> Path:
        """The path of one of the kit's files, e.g. ``kit.file(kitfiles.CLIENT_KEY)``.

        Raises:
            KitError: this kit's role has no such file.
        """
        try:
            return self.files[name]
        except KeyError:
            raise KitError(
                f"{describe_role(self.manifest)} ({self.path}) has no {name}; "
                f"it holds {', '.join(sorted(self.files))}"
            ) from None

    @property
    def ca_cert(self) -> Path:
        """The consortium CA certificate (PEM): TLS root for every party."""
        return self.file(kitfiles.CA_CERT)

    @property
    def cert(self) -> Path:
        """This kit's TLS certificate: ``server.crt`` (coordinator) or ``client.crt`` (site)."""
        return self.file(
            kitfiles.SERVER_CERT if self.role == "coordinator" else kitfiles.CLIENT_CERT
        )

    @property
    def key(self) -> Path:
        """This kit's TLS private key: ``server.key`` (coordinator) or ``client.key`` (site)."""
        return self.file(kitfiles.SERVER_KEY if self.role == "coordinator" else kitfiles.CLIENT_KEY)

    @property
    def node_key(self) -> Path:
        """The site's OpenSSH ECDSA node private key (Flower ``--auth-supernode-private-key``)."""
        return self.file(kitfiles.NODE_KEY)

    @property
    def node_pub(self) -> Path:
        """The site's OpenSSH node public key (what ``flwr supernode register`` takes)."""
        return self.file(kitfiles.NODE_PUB)

    @property
    def ckks_context(self) -> Path:
        """The serialized CKKS context: with the secret key (site) or without (coordinator)."""
        return self.file(
            kitfiles.CKKS_PUBLIC if self.role == "coordinator" else kitfiles.CKKS_SECRET
        )


# --------------------------------------------------------------------------- loading


def load_kit(path: Path | str, *, role: Role | None = None) -> Kit:
    """Load a kit and check that it is complete and private; contents are checked by :func:`check_kit`.

    Args:
        path: The kit directory (``KITS/coordinator``, ``KITS/<site-id>`` or ``KITS/ca``).
        role: The role the caller needs (``"site"`` for ``fed-client``, ``"coordinator"``
            for ``fed-coordinator``); ``None`` accepts any.

    Returns:
        The kit.

    Raises:
        KitError: not a kit, another role, files missing, or a secret file readable by
            others (with the ``chmod`` that fixes it, as ssh does).
    """
    path = Path(path)
    manifest = read_manifest(path)
    if role is not None and manifest.role != role:
        hint = "KITS/<site-id>" if role == "site" else f"KITS/{role}"
        raise KitError(
            f"{path} is {describe_role(manifest)}, expected a {role} kit: pass {hint} instead"
        )
    files = {rel: path / rel for rel in expected_files(manifest)}
    missing = [rel for rel, p in files.items() if not p.is_file()]
    if missing:
        raise KitError(
            f"{path} ({describe_role(manifest)}) lacks {', '.join(missing)}: copy the whole kit "
            "directory again from where it was provisioned"
        )
    problems = permission_problems(path, manifest)
    if problems:
        raise KitError(f"{path}: refusing a kit whose secrets are exposed: " + "; ".join(problems))
    return Kit(path=path, manifest=manifest, files=files)


# --------------------------------------------------------------------------- keys


_T = TypeVar("_T")
_KIT_FIX = "restore the kit from the provisioning output, or re-provision"


def _pki(load: Callable[[], _T]) -> _T:
    """Run a :mod:`fedcore.pki` loader; its error becomes a failed check."""
    try:
        return load()
    except pki.PkiError as exc:
        raise _Fail(str(exc)) from None


def _load_cert(path: Path) -> x509.Certificate:
    return _pki(lambda: pki.load_certificate(path, what="the certificate", fix=_KIT_FIX))


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = _pki(
        lambda: pki.load_private_key(
            path, what="the private key", curves=pki.NIST_CURVES, fix=_KIT_FIX
        )
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # load_private_key checked the curve
    return key


def _load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return _pki(lambda: pki.load_node_private_key(path, fix=_KIT_FIX))


def _node_public_key(data: bytes, what: str = "the node public key") -> ec.EllipticCurvePublicKey:
    """Parse an OpenSSH node public key; a bad one raises :class:`KitError`."""
    try:
        return pki.parse_node_public_key(bytes(data).strip(), what=what, fix=_KIT_FIX)
    except pki.PkiError as exc:
        raise KitError(str(exc)) from None


# --------------------------------------------------------------------------- signing


def sign(kit: Kit, payload: bytes) -> bytes:
    """Sign ``payload`` with the site's node key (ECDSA, SHA-256); the key is loaded once.

    Args:
        kit: A site kit.
        payload: The bytes to sign (e.g. a canonical encoding of a reply).

    Returns:
        The DER-encoded ECDSA signature.

    Raises:
        KitError: ``kit`` is not a site kit, or its node key cannot be read.
    """
    if kit.role != "site":
        raise KitError(
            f"only a site kit signs replies; {kit.path} is {describe_role(kit.manifest)}"
        )
    key = kit._cache.get("node_key")
    if key is None:
        try:
            key = _load_node_private_key(kit.node_key)
        except _Fail as exc:
            raise KitError(f"{kit.path}: {exc}") from None
        kit._cache["node_key"] = key
    signature: bytes = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return signature


def verify_signature(public_key_openssh: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the node key's ECDSA (SHA-256) signature of ``payload``.

    Parsed public keys are cached, so verifying many replies costs one parse per key.

    Args:
        public_key_openssh: The signer's registered OpenSSH public key (``node.pub``).
        payload: The signed bytes.
        signature: DER-encoded ECDSA signature, as :func:`sign` returns.

    Returns:
        ``True`` if it verifies; ``False`` for a wrong, damaged or foreign signature.

    Raises:
        KitError: ``public_key_openssh`` is not an ECDSA OpenSSH public key.
    """
    key = _node_public_key(public_key_openssh)
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def registered_nodes(coordinator_kit: Kit) -> dict[str, bytes]:
    """The registered node public keys of the consortium's sites, read once per kit.

    Args:
        coordinator_kit: The coordinator kit.

    Returns:
        Site id -> OpenSSH public key (one line, as in ``nodes/<site-id>.pub``).

    Raises:
        KitError: not a coordinator kit, or a key file that is not an ECDSA public key.
    """
    if coordinator_kit.role != "coordinator":
        raise KitError(
            f"registered node keys are in the coordinator kit; {coordinator_kit.path} is "
            f"{describe_role(coordinator_kit.manifest)}"
        )
    nodes: dict[str, bytes] | None = coordinator_kit._cache.get("nodes")
    if nodes is None:
        nodes = {}
        for site in coordinator_kit.manifest.sites:
            p = coordinator_kit.file(f"{kitfiles.NODES_DIR}/{site}.pub")
            data = p.read_bytes().strip()
            _node_public_key(data, what=f"the node public key {p}")
            nodes[site] = data
        coordinator_kit._cache["nodes"] = nodes
    return dict(nodes)


def verify_site_signature(
    coordinator_kit: Kit, site_id: str, payload: bytes, signature: bytes
) -> bool:
    """Whether ``signature`` was made by the kit of ``site_id``; ``False`` for a site not registered."""
    key = registered_nodes(coordinator_kit).get(site_id)
    return key is not None and verify_signature(key, payload, signature)


# --------------------------------------------------------------------------- checking


class _Fail(Exception):
    """A check that did not pass, with its reason."""


@dataclass(frozen=True)
class Check:
    """One verified property of a kit."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class KitCheck:
    """The result of :func:`check_kit`: every check with its reason, and which keys the kit holds."""

    path: Path
    role: Role
    consortium: str
    site_id: str | None
    checks: tuple[Check, ...]
    keys: tuple[str, ...]
    """What the kit holds, for display (never key material)."""
    days_left: int | None
    """Days until the first of the kit's certificates expires (negative once expired)."""

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """The checks that did not pass."""
        return tuple(c for c in self.checks if not c.ok)


def _days(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 86400)


def _date(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _ckks_holds_secret(data: bytes) -> bool:
    """Whether serialized CKKS context bytes hold the secret key.

    Raises:
        ValueError: the bytes are not a CKKS context.
    """
    from secure import ckks  # TenSEAL loads slowly: only when a kit is checked

    try:
        ckks.context_from_bytes(data, expect_secret=False)
    except ValueError:
        ckks.context_from_bytes(data, expect_secret=True)  # raises unless a secret context
        return True
    return False


class _Checker:
    """Runs the checks of :func:`check_kit` on one kit, recording each result."""

    def __init__(self, path: Path, manifest: KitManifest, now: dt.datetime) -> None:
        self.path = path
        self.m = manifest
        self.now = now
        self.checks: list[Check] = []
        self.keys: list[str] = []
        self.days_left: int | None = None
        self._ckks: dict[str, bool] = {}
        self.present = {
            rel: path / rel for rel in expected_files(manifest) if (path / rel).is_file()
        }

    def run(self, name: str, needs: list[str], fn: Callable[[], str]) -> None:
        missing = [rel for rel in needs if rel not in self.present]
        if missing:
            self.checks.append(Check(name, False, f"not checked: {', '.join(missing)} missing"))
            return
        try:
            self.checks.append(Check(name, True, fn()))
        except _Fail as exc:
            self.checks.append(Check(name, False, str(exc)))
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            self.checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))

    def p(self, rel: str) -> Path:
        return self.present[rel]

    def ckks_secret(self, rel: str) -> bool:
        if rel not in self._ckks:
            self._ckks[rel] = _ckks_holds_secret(self.p(rel).read_bytes())
        return self._ckks[rel]

    # ---- the checks

    def files(self) -> str:
        missing = [rel for rel in expected_files(self.m) if rel not in self.present]
        if missing:
            raise _Fail(f"missing {', '.join(missing)}: copy the whole kit directory again")
        return f"{len(self.present) + 1} files present"

    def permissions(self) -> str:
        problems = permission_problems(self.path, self.m)
        if problems:
            raise _Fail("; ".join(problems))
        return "secret files are readable by their owner only"

    def hashes(self) -> str:
        listed = set(self.m.files)
        unlisted = [rel for rel in expected_files(self.m) if rel not in listed]
        bad = [
            rel
            for rel, digest in sorted(self.m.files.items())
            if rel in self.present
            and hashlib.sha256(self.p(rel).read_bytes()).hexdigest() != digest
        ]
        if bad or unlisted:
            parts = []
            if bad:
                parts.append(f"{', '.join(bad)} changed since provisioning (SHA-256 differs)")
            if unlisted:
                parts.append(f"{', '.join(unlisted)} not listed in {kitfiles.MANIFEST}")
            raise _Fail("; ".join(parts) + ": restore the kit from the provisioning output")
        return f"{len(self.m.files)} files match {kitfiles.MANIFEST}"

    def leaf_name(self) -> str:
        if self.m.role == "coordinator":
            return kitfiles.SERVER_CERT
        return kitfiles.CLIENT_CERT

    def key_name(self) -> str:
        if self.m.role == "coordinator":
            return kitfiles.SERVER_KEY
        return kitfiles.CLIENT_KEY

    def chain(self) -> str:
        ca = _load_cert(self.p(kitfiles.CA_CERT))
        der = ca.public_bytes(serialization.Encoding.DER)
        if hashlib.sha256(der).hexdigest() != self.m.ca_sha256:
            raise _Fail(
                f"{kitfiles.CA_CERT} is not the consortium CA named in {kitfiles.MANIFEST} "
                "(fingerprint differs): restore ca.crt from the provisioning output"
            )
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise _Fail(f"{kitfiles.CA_CERT} is not a CA certificate (basicConstraints CA:false)")
        if pki.issuer_problem(ca, ca) is not None:
            raise _Fail(f"{kitfiles.CA_CERT} is not self-signed")
        if self.m.role == "ca":
            return f"{kitfiles.CA_CERT} is a self-signed CA"
        leaf_rel = self.leaf_name()
        leaf = _load_cert(self.p(leaf_rel))
        why = pki.issuer_problem(leaf, ca)
        if why is not None:
            raise _Fail(
                f"{leaf_rel} is not signed by this kit's {kitfiles.CA_CERT} ({why}): the kit mixes "
                "files from different provisioning runs; re-provision or restore both files"
            )
        return f"{leaf_rel} is signed by the consortium CA"

    def identity(self) -> str:
        leaf_rel = self.leaf_name()
        leaf = _load_cert(self.p(leaf_rel))
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if self.m.role == "coordinator":
            if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
                raise _Fail(f"{leaf_rel} is not a TLS server certificate (no serverAuth usage)")
            names = pki.certificate_names(leaf)
            if not names:
                raise _Fail(f"{leaf_rel} names no host (no subjectAltName)")
            if sorted(names) != sorted(self.m.coordinator_hosts):
                raise _Fail(
                    f"{leaf_rel} names {', '.join(names)}, the manifest lists "
                    f"{', '.join(self.m.coordinator_hosts)}"
                )
            return f"server certificate for {', '.join(names)}"
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise _Fail(f"{leaf_rel} is not a TLS client certificate (no clientAuth usage)")
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else ""
        if cn != self.m.site_id:
            raise _Fail(f"{leaf_rel} is for site {cn!r}, this kit is for {self.m.site_id!r}")
        return f"client certificate for site {cn}"

    def validity(self) -> str:
        rels = [kitfiles.CA_CERT] + ([self.leaf_name()] if self.m.role != "ca" else [])
        notes, errors, left = [], [], []
        for rel in rels:
            cert = _load_cert(self.p(rel))
            end = cert.not_valid_after_utc
            problem = pki.certificate_date_problem(cert, now=self.now)
            if problem is not None:
                fix = "" if problem.startswith("is not valid before") else ": re-provision"
                errors.append(f"{rel} {problem}{fix}")
            left.append(_days(end - self.now))
            notes.append(f"{rel} until {_date(end)}")
        self.days_left = min(left)
        if errors:
            raise _Fail("; ".join(errors))
        soon = " — renew soon" if self.days_left < RENEW_DAYS else ""
        return f"{self.days_left} days left{soon} ({'; '.join(notes)})"

    def key_matches(self) -> str:
        if self.m.role == "ca":
            cert_rel, key_rel = kitfiles.CA_CERT, kitfiles.CA_KEY
        else:
            cert_rel, key_rel = self.leaf_name(), self.key_name()
        cert = _load_cert(self.p(cert_rel))
        key = _load_private_key(self.p(key_rel))
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not pki.same_public_key(
            key.public_key(), pub
        ):
            raise _Fail(
                f"{key_rel} is not the private key of {cert_rel}: restore both from the same "
                "provisioning run"
            )
        return f"{key_rel} matches {cert_rel} ({pki.describe_key(key)})"

    def node_key(self) -> str:
        key = _load_node_private_key(self.p(kitfiles.NODE_KEY))
        pub_bytes = self.p(kitfiles.NODE_PUB).read_bytes()
        try:
            pub = _node_public_key(pub_bytes, what=kitfiles.NODE_PUB)
        except KitError as exc:
            raise _Fail(str(exc)) from None
        if not pki.same_public_key(key.public_key(), pub):
            raise _Fail(
                f"{kitfiles.NODE_KEY} does not match {kitfiles.NODE_PUB}: the coordinator would "
                "reject this site; restore both from the provisioning output"
            )
        return (
            f"{kitfiles.NODE_KEY} matches {kitfiles.NODE_PUB} "
            f"({pki.describe_key(key)}, {pki.ssh_fingerprint(pub_bytes)})"
        )

    def nodes(self) -> str:
        bad = []
        for site in self.m.sites:
            rel = f"{kitfiles.NODES_DIR}/{site}.pub"
            try:
                _node_public_key(self.p(rel).read_bytes(), what=rel)
            except KitError as exc:
                bad.append(str(exc))
        if bad:
            raise _Fail("; ".join(bad))
        return f"{len(self.m.sites)} node public keys ({', '.join(self.m.sites)})"

    def ckks(self) -> str:
        if self.m.role == "coordinator":
            rel = kitfiles.CKKS_PUBLIC
            if self.ckks_secret(rel):
                raise _Fail(
                    f"{rel} holds the CKKS secret key: the coordinator could decrypt every site's "
                    "update and the global model. Replace the coordinator kit with a fresh one "
                    "from `fedcore provision`"
                )
            return f"{rel} holds no secret key"
        rel = kitfiles.CKKS_SECRET
        if not self.ckks_secret(rel):
            raise _Fail(
                f"{rel} holds no secret key, so this site cannot decrypt the aggregate: restore "
                "it from the site kit written by `fedcore provision`"
            )
        return f"{rel} holds the consortium's secret key"

    # ---- what the kit holds, for display

    def describe_keys(self) -> None:
        for rel in expected_files(self.m):
            if rel in self.present:
                try:
                    self.keys.append(f"{rel}: {self.describe(rel)}")
                except (_Fail, KitError, OSError, ValueError, TypeError, UnsupportedAlgorithm):
                    self.keys.append(f"{rel}: unreadable")

    def describe(self, rel: str) -> str:
        name = rel.rsplit("/", 1)[-1]
        if name == kitfiles.CA_CERT:
            return f"consortium CA certificate (SHA-256 {self.m.ca_sha256[:16]}…)"
        if name in (kitfiles.CA_KEY, kitfiles.SERVER_KEY, kitfiles.CLIENT_KEY):
            curve = pki.curve_label(_load_private_key(self.p(rel)))
            if name == kitfiles.CA_KEY:
                return f"CA private key (ECDSA {curve}), signs certificates: keep offline"
            kind = "server" if name == kitfiles.SERVER_KEY else "client"
            return f"TLS {kind} private key (ECDSA {curve})"
        if name in (kitfiles.SERVER_CERT, kitfiles.CLIENT_CERT):
            return f"TLS {'server' if name == kitfiles.SERVER_CERT else 'client'} certificate"
        if name == kitfiles.NODE_KEY:
            curve = pki.curve_label(_load_node_private_key(self.p(rel)))
            return (
                f"node private key (ECDSA {curve}), signs replies and authenticates the SuperNode"
            )
        if name.endswith(".pub"):
            owner = "" if name == kitfiles.NODE_PUB else f" of {name.removesuffix('.pub')}"
            return f"node public key{owner} ({pki.ssh_fingerprint(self.p(rel).read_bytes())})"
        private = self.ckks_secret(rel)
        if name == kitfiles.CKKS_PUBLIC:
            if private:
                return "CKKS context WITH the consortium's secret key (must not be here)"
            return "CKKS public context (adds ciphertexts, no secret key)"
        if private:
            return "CKKS secret key shared by the consortium's sites"
        return "CKKS context without its secret key"


def check_kit(path: Path | str, *, now: dt.datetime | None = None) -> KitCheck:
    """Verify a kit: files, permissions, hashes, certificate chain and validity, keys, CKKS context.

    Args:
        path: The kit directory.
        now: The time to check validity at (default: now, UTC).

    Returns:
        Every check with its reason (see :attr:`KitCheck.ok`) and the keys the kit holds.

    Raises:
        KitError: ``path`` is not a kit (no or damaged ``kit.json``).
    """
    path = Path(path)
    manifest = read_manifest(path)
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    c = _Checker(path, manifest, now)
    role = manifest.role
    c.run("files present", [], c.files)
    c.run("permissions", [], c.permissions)
    c.run("file hashes", [], c.hashes)
    if role == "ca":
        c.run("CA certificate", [kitfiles.CA_CERT], c.chain)
        c.run("validity", [kitfiles.CA_CERT], c.validity)
        c.run("key matches certificate", [kitfiles.CA_CERT, kitfiles.CA_KEY], c.key_matches)
    else:
        certs = [kitfiles.CA_CERT, c.leaf_name()]
        c.run("certificate chain", certs, c.chain)
        c.run("certificate identity", certs[1:], c.identity)
        c.run("validity", certs, c.validity)
        c.run("key matches certificate", [c.leaf_name(), c.key_name()], c.key_matches)
        if role == "site":
            c.run("node key", [kitfiles.NODE_KEY, kitfiles.NODE_PUB], c.node_key)
            c.run("CKKS context", [kitfiles.CKKS_SECRET], c.ckks)
        else:
            c.run(
                "registered nodes",
                [f"{kitfiles.NODES_DIR}/{s}.pub" for s in manifest.sites],
                c.nodes,
            )
            c.run("CKKS context", [kitfiles.CKKS_PUBLIC], c.ckks)
    c.describe_keys()
    return KitCheck(
        path=path,
        role=role,
        consortium=manifest.consortium,
        site_id=manifest.site_id,
        checks=tuple(c.checks),
        keys=tuple(c.keys),
        days_left=c.days_left,
    )
