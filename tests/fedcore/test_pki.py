"""fedcore.pki: certificates and keys made here with cryptography, loaded, checked and refused."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fedcore import pki

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


_Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _openssh_private(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _openssh_public(key: _Key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _certificate(
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    name: str = "fedcore test",
    issuer: str = "fedcore test",
    hosts: list[x509.GeneralName] | None = None,
    days: int = 30,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=days))
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(hosts), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


# --------------------------------------------------------------------------- node keys


def test_node_key_pair_on_a_nist_curve_loads(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write(tmp_path / "node.key", _openssh_private(key))
    public = _write(tmp_path / "node.pub", _openssh_public(key) + b" fedcore-node-a\n", 0o644)
    loaded = pki.load_node_private_key(private)
    parsed = pki.load_node_public_key(public)
    assert pki.same_public_key(loaded.public_key(), parsed)
    assert pki.curve_label(loaded) == "P-384" and pki.describe_key(parsed) == "ECDSA P-384"
    assert pki.public_key_pem(parsed).startswith(b"-----BEGIN PUBLIC KEY-----")
    assert pki.loose_permissions(private) is None


def test_wrong_curve_keys_are_refused(tmp_path: Path) -> None:
    # OpenSSH cannot even encode an ECDSA key off the NIST curves: the PEM loader is the one
    # that meets them (a TLS key), and refuses them when asked for the node-key curves.
    key = ec.generate_private_key(ec.SECP256K1())  # the Bitcoin curve: not NIST
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write(tmp_path / "server.key", pem)
    with pytest.raises(pki.PkiError) as refused:
        pki.load_private_key(path, what="the server key", curves=pki.NIST_CURVES)
    message = str(refused.value)
    assert f"the server key {path} is ECDSA secp256k1" in message
    assert "expected ECDSA on P-256, P-384, P-521" in message
    assert "Fix: write the kits again with `fedcore provision" in message


def test_rsa_node_keys_are_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = _write(tmp_path / "node.key", _openssh_private(key))
    with pytest.raises(pki.PkiError) as refused:
        pki.load_node_private_key(private)
    assert "is RSAPrivateKey, expected ECDSA on a NIST curve (P-256, P-384, P-521)" in str(
        refused.value
    )
    public = _openssh_public(key)
    with pytest.raises(pki.PkiError, match="is RSAPublicKey, expected ECDSA on a NIST curve"):
        pki.parse_node_public_key(public)


def test_non_ecdsa_node_keys_are_refused(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    private = _write(tmp_path / "node.key", _openssh_private(key))
    with pytest.raises(pki.PkiError, match="is Ed25519PrivateKey, expected ECDSA on a NIST"):
        pki.load_node_private_key(private)
    with pytest.raises(pki.PkiError, match="is Ed25519PublicKey, expected ECDSA on a NIST"):
        pki.parse_node_public_key(_openssh_public(key))


def test_node_key_files_of_the_wrong_format_say_what_was_found(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private = _write(tmp_path / "node.key", pem)
    with pytest.raises(pki.PkiError) as refused:
        pki.load_node_private_key(private)
    assert "is not an OpenSSH private key: expected '-----BEGIN OPENSSH PRIVATE KEY-----'" in str(
        refused.value
    )
    assert "found '-----BEGIN PRIVATE KEY-----'" in str(refused.value)
    with pytest.raises(pki.PkiError, match="not an OpenSSH public key: expected one line like"):
        pki.parse_node_public_key(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(pki.PkiError, match=r"nope.pub does not exist: expected a file"):
        pki.load_node_public_key(tmp_path / "nope.pub")


def test_encrypted_private_keys_are_refused_with_the_fix(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = _write(tmp_path / "server.key", locked)
    with pytest.raises(pki.PkiError, match=r"encrypted with a passphrase.*chmod 600"):
        pki.load_private_key(path, what="the server key")


def test_private_key_curve_is_checked_when_asked(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write(tmp_path / "tls.key", pem)
    assert pki.curve_label(pki.load_private_key(path, what="the key")) == "secp256k1"
    with pytest.raises(pki.PkiError, match=r"is ECDSA secp256k1, expected ECDSA on P-256, P-384"):
        pki.load_private_key(path, what="the key", curves=pki.NIST_CURVES)


# --------------------------------------------------------------------------- permissions


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_world_readable_private_key_is_reported(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = _write(tmp_path / "node.key", _openssh_private(key), 0o644)
    problem = pki.loose_permissions(path, name="node.key")
    assert problem is not None
    assert problem.startswith("node.key has permissions 0644, expected readable by its owner")
    assert problem.endswith(f"chmod 600 {path}")
    os.chmod(path, 0o640)  # group-readable is exposed too
    assert pki.loose_permissions(path) is not None
    os.chmod(path, 0o600)
    assert pki.loose_permissions(path) is None
    assert pki.loose_permissions(tmp_path / "missing.key") is None


# --------------------------------------------------------------------------- certificates


def test_certificate_chain_names_and_dates(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate(ca_key, ca_key, name="ca", issuer="ca")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    hosts: list[x509.GeneralName] = [
        x509.DNSName("*.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    leaf = _certificate(leaf_key, ca_key, name="server", issuer="ca", hosts=hosts)
    path = _write(tmp_path / "server.crt", leaf.public_bytes(serialization.Encoding.PEM), 0o644)
    loaded = pki.load_certificate(path, what="the server certificate")
    assert pki.issuer_problem(loaded, ca) is None
    assert pki.certificate_names(loaded) == ["*.example.org", "127.0.0.1"]
    assert pki.certificate_names_host(loaded, "fed.example.org")
    assert pki.certificate_names_host(loaded, "127.0.0.1")
    assert not pki.certificate_names_host(loaded, "example.org")
    assert not pki.certificate_names_host(loaded, "127.0.0.2")
    assert pki.certificate_date_problem(loaded, now=NOW + dt.timedelta(days=1)) is None
    early = pki.certificate_date_problem(loaded, now=NOW - dt.timedelta(days=1))
    assert early == "is not valid before 2025-06-01 12:00 UTC (check this machine's clock)"
    late = pki.certificate_date_problem(loaded, now=NOW + dt.timedelta(days=33))
    assert late == "expired on 2025-07-01 12:00 UTC (3 days ago)"


def test_a_certificate_of_another_ca_is_told_apart(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate(ca_key, ca_key, name="ca", issuer="ca")
    other_key = ec.generate_private_key(ec.SECP384R1())
    forged = _certificate(ec.generate_private_key(ec.SECP256R1()), other_key, issuer="ca")
    foreign = _certificate(ec.generate_private_key(ec.SECP256R1()), other_key, issuer="other")
    assert pki.issuer_problem(forged, ca) == "signature does not verify"
    assert pki.issuer_problem(foreign, ca) == "issuer differs"


def test_a_file_that_is_not_a_certificate_says_what_it_holds(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = _write(tmp_path / "ca.crt", _openssh_public(key), 0o644)
    with pytest.raises(pki.PkiError) as refused:
        pki.load_certificate(path, what="the CA certificate", fix="restore ca.crt")
    message = str(refused.value)
    assert message.startswith(f"the CA certificate {path} is not a PEM certificate: expected")
    assert "found 'ecdsa-sha2-nistp256" in message and message.endswith("Fix: restore ca.crt")


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_ssh_keygens(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    line = _openssh_public(key) + b" comment"
    blob = base64.b64decode(line.split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert pki.ssh_fingerprint(line) == expected
    path = _write(tmp_path / "node.pub", line, 0o644)
    assert pki.node_key_fingerprint(path) == expected
    assert pki.node_key_fingerprint(tmp_path / "missing.pub") == "?"
    with pytest.raises(pki.PkiError, match="not one OpenSSH line"):
        pki.ssh_fingerprint(b"garbage")
