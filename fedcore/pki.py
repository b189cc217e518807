"""Certificates and keys of a consortium: load, parse and check them once, with messages that say how to fix them.

Used by ``secure.kit`` (``fedcore provision --check``, signing replies) and by the deployment
engine (TLS and node keys of the SuperLink and SuperNodes). Every loader raises
:class:`PkiError` whose message says what was expected, what was found and how to fix it.
Node keys are OpenSSH ECDSA keys on a NIST curve, as Flower's SuperNode authentication needs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import ipaddress
import os
import stat
from collections.abc import Collection
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

__all__ = [
    "NIST_CURVES",
    "PROVISION_FIX",
    "PkiError",
    "certificate_date_problem",
    "certificate_names",
    "certificate_names_host",
    "curve_label",
    "describe_key",
    "issuer_problem",
    "load_certificate",
    "load_node_private_key",
    "load_node_public_key",
    "load_private_key",
    "loose_permissions",
    "node_key_fingerprint",
    "parse_node_public_key",
    "public_key_pem",
    "read_key_file",
    "same_public_key",
    "ssh_fingerprint",
]

NIST_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
"""Curves of node keys that Flower's SuperNode authentication accepts (P-256, P-384, P-521)."""

PROVISION_FIX = (
    "write the kits again with `fedcore provision CONSORTIUM.yaml --out KITS/` and hand each "
    "machine its own kit"
)
"""The usual fix for a damaged or mixed-up kit file."""

_CURVE_LABELS = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_NIST_TEXT = "ECDSA on a NIST curve (P-256, P-384, P-521)"


class PkiError(ValueError):
    """A certificate or key file that cannot be used; the message says expected, found and fix."""


# --------------------------------------------------------------------------- describing keys


def curve_label(key: object) -> str:
    """``P-256``/``P-384``/``P-521`` for an EC key on a NIST curve, else the curve's or key type's name."""
    curve = getattr(key, "curve", None)
    if curve is None:
        return type(key).__name__.lstrip("_")
    name = str(curve.name)
    return _CURVE_LABELS.get(name, name)


def describe_key(key: object) -> str:
    """What a key is, for messages: ``ECDSA P-384``, ``ECDSA secp256k1`` or ``Ed25519PublicKey``."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {curve_label(key)}"
    return type(key).__name__.lstrip("_")


def public_key_pem(key: PublicKeyTypes) -> bytes:
    """A public key as PEM SubjectPublicKeyInfo (how Flower registers node keys)."""
    return bytes(
        key.public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared as SubjectPublicKeyInfo)."""
    return public_key_pem(a) == public_key_pem(b)


def _with_fix(message: str, fix: str) -> str:
    return f"{message}. Fix: {fix}" if fix else message


# --------------------------------------------------------------------------- files


def read_key_file(path: Path, *, what: str, fix: str = PROVISION_FIX) -> bytes:
    """The bytes of a certificate or key file.

    Args:
        path: The file.
        what: What the file is, for messages ("the CA certificate").
        fix: How to get a good file, appended to the message of a missing one.

    Raises:
        PkiError: the file does not exist or cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(
            f"{what} {path} does not exist: expected a file of a provisioned kit. Check --kit, "
            f"or {fix}"
        ) from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def loose_permissions(path: Path, *, name: str | None = None) -> str | None:
    """Why a private key file is exposed (readable or writable by group or others), or ``None``.

    Args:
        path: The file holding a secret.
        name: How to call it in the message (default: ``path``).

    Returns:
        ``"NAME has permissions 0644, expected readable by its owner only ...: chmod 600 PATH"``,
        or ``None`` when the file is private, missing, or not on POSIX.
    """
    if os.name != "posix":
        return None
    try:
        mode = stat.S_IMODE(Path(path).stat().st_mode)
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{name or path} has permissions {mode:04o}, expected readable by its owner only "
            f"(it holds a secret key): chmod 600 {path}"
        )
    return None


# --------------------------------------------------------------------------- certificates


def load_certificate(path: Path, *, what: str, fix: str = PROVISION_FIX) -> x509.Certificate:
    """Load a PEM certificate (its dates are checked by :func:`certificate_date_problem`).

    Raises:
        PkiError: the file is missing, unreadable or not a PEM certificate.
    """
    data = read_key_file(path, what=what, fix=fix)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PkiError(
            _with_fix(
                f"{what} {path} is not a PEM certificate: expected '-----BEGIN CERTIFICATE-----', "
                f"found {_first_line(data)}",
                fix,
            )
        ) from None


def _first_line(data: bytes) -> str:
    line = data.strip().split(b"\n", 1)[0][:40]
    return repr(line.decode("ascii", errors="replace")) if line else "an empty file"


def certificate_date_problem(
    cert: x509.Certificate, *, now: dt.datetime | None = None
) -> str | None:
    """Why ``cert`` is not valid at ``now`` (default: now, UTC), or ``None`` if it is.

    Returns:
        ``"is not valid before 2025-06-01 12:00 UTC (check this machine's clock)"`` or
        ``"expired on 2025-07-01 12:00 UTC (3 days ago)"``, to follow the file's name.
    """
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return f"is not valid before {start:%Y-%m-%d %H:%M} UTC (check this machine's clock)"
    if now >= end:
        days = int((now - end).total_seconds() // 86400)
        return f"expired on {end:%Y-%m-%d %H:%M} UTC ({days} days ago)"
    return None


def issuer_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Why ``cert`` is not signed directly by ``issuer``, or ``None`` if it is.

    Returns:
        ``"issuer differs"`` (another CA's name) or ``"signature does not verify"``.
    """
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError:
        return "issuer differs"
    except (TypeError, InvalidSignature):
        return "signature does not verify"
    return None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The host names and IP addresses a certificate names (subjectAltName), in its order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def certificate_names_host(cert: x509.Certificate, host: str) -> bool:
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
        if pattern.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == pattern[2:]:
            return True
    return False


# --------------------------------------------------------------------------- private keys


def load_private_key(
    path: Path,
    *,
    what: str,
    curves: Collection[str] | None = None,
    fix: str = PROVISION_FIX,
) -> PrivateKeyTypes:
    """Load an unencrypted PEM private key (a TLS key or a CA key).

    Args:
        path: The key file.
        what: What the key is, for messages ("the server key").
        curves: If given, the key must be ECDSA on one of these curves (``secp384r1``...).
        fix: How to get a good key, appended to messages.

    Raises:
        PkiError: missing, encrypted, not a PEM private key, or not on one of ``curves``.
    """
    key = _read_private_key(path, what, fix, ssh=False)
    if curves is not None and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in curves
    ):
        wanted = ", ".join(_CURVE_LABELS.get(c, c) for c in sorted(curves))
        raise PkiError(
            _with_fix(f"{what} {path} is {describe_key(key)}, expected ECDSA on {wanted}", fix)
        )
    return key


def _read_private_key(path: Path, what: str, fix: str, *, ssh: bool) -> PrivateKeyTypes:
    """An unencrypted private key: OpenSSH format (``ssh``) or PEM (PKCS#8, SEC1, PKCS#1)."""
    data = read_key_file(path, what=what, fix=fix)
    kind, header = ("an OpenSSH", "OPENSSH PRIVATE KEY") if ssh else ("a PEM", "PRIVATE KEY")
    try:
        if ssh:
            return serialization.load_ssh_private_key(data, password=None)
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiError(
            f"{what} {path} is encrypted with a passphrase: expected it unencrypted, because "
            "Flower reads it without asking. Fix: protect it with file permissions instead "
            "(chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(
            _with_fix(
                f"{what} {path} is not {kind} private key: expected "
                f"'-----BEGIN {header}-----', found {_first_line(data)}",
                fix,
            )
        ) from None


def load_node_private_key(
    path: Path, *, what: str = "the node private key", fix: str = PROVISION_FIX
) -> ec.EllipticCurvePrivateKey:
    """Load a site's node private key: unencrypted OpenSSH, ECDSA on a NIST curve.

    Raises:
        PkiError: missing, encrypted, not an OpenSSH private key, or another key type or curve.
    """
    key = _read_private_key(path, what, fix, ssh=True)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in NIST_CURVES:
        raise PkiError(_not_nist(f"{what} {path}", key, fix))
    return key


def _not_nist(what: str, key: object, fix: str) -> str:
    return _with_fix(
        f"{what} is {describe_key(key)}, expected {_NIST_TEXT}, which Flower's node "
        "authentication requires",
        fix,
    )


# --------------------------------------------------------------------------- node public keys


@functools.lru_cache(maxsize=1024)
def parse_node_public_key(
    data: bytes, *, what: str = "the node public key", fix: str = PROVISION_FIX
) -> ec.EllipticCurvePublicKey:
    """Parse an OpenSSH node public key (one ``ecdsa-sha2-nistp384 AAAA... comment`` line).

    Parsed keys are cached, so verifying many signatures costs one parse per key.

    Raises:
        PkiError: not an OpenSSH public key, or not ECDSA on a NIST curve.
    """
    try:
        key = serialization.load_ssh_public_key(bytes(data).strip())
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(
            _with_fix(
                f"{what} is not an OpenSSH public key: expected one line like "
                f"'ecdsa-sha2-nistp384 AAAA...', found {_first_line(data)}",
                fix,
            )
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise PkiError(_not_nist(what, key, fix))
    return key


def load_node_public_key(
    path: Path, *, what: str = "the node public key", fix: str = PROVISION_FIX
) -> ec.EllipticCurvePublicKey:
    """Read and parse an OpenSSH node public key file (see :func:`parse_node_public_key`).

    Raises:
        PkiError: missing, unreadable, not an OpenSSH public key, or not ECDSA on a NIST curve.
    """
    data = read_key_file(path, what=what, fix=fix)
    return parse_node_public_key(data, what=f"{what} {path}", fix=fix)


def ssh_fingerprint(public_key_openssh: bytes) -> str:
    """The ``SHA256:...`` fingerprint that ``ssh-keygen -lf`` prints for an OpenSSH public key.

    Raises:
        PkiError: the bytes are not ``TYPE BASE64 [comment]``.
    """
    parts = bytes(public_key_openssh).split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (IndexError, binascii.Error):
        raise PkiError(
            "cannot fingerprint a public key that is not one OpenSSH line: expected "
            f"'ecdsa-sha2-nistp384 AAAA...', found {_first_line(public_key_openssh)}"
        ) from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def node_key_fingerprint(path: Path) -> str:
    """:func:`ssh_fingerprint` of a public key file, or ``"?"`` if it is unreadable.

    Operators compare it on both machines: ``fed-coordinator`` prints it for every
    registered site and ``fed-client`` for its own key.
    """
    try:
        return ssh_fingerprint(Path(path).read_bytes())
    except (OSError, PkiError):
        return "?"
