"""`secure.provision`: consortium files, the kit layout, certificates, node keys, CKKS contexts, no leaked secrets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import stat
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcore.config import CkksSpec, ConfigError
from secure import kitfiles
from secure.kit import KitManifest
from secure.provision import (
    ConsortiumSpec,
    ProvisionError,
    load_consortium,
    provision,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)

CONSORTIUM = textwrap.dedent(
    """
    name: nordic-banks
    sites: [bank-a, bank-b, bank-c]
    coordinator:
      hosts: [fed.example.org, 10.0.0.5, "::1"]
    validity_days: 90
    ckks: {clip: 0.5}
    """
)
SITES = ["bank-a", "bank-b", "bank-c"]


def write(tmp: Path, text: str, name: str = "consortium.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prov")
    spec = load_consortium(write(tmp, CONSORTIUM))
    provision(spec, tmp / "kits", now=NOW)
    return tmp / "kits"


# --------------------------------------------------------------------------- loading


def test_load_consortium_file(tmp_path: Path) -> None:
    spec = load_consortium(write(tmp_path, CONSORTIUM))
    assert spec.name == "nordic-banks" and spec.sites == SITES
    assert spec.hosts == ["fed.example.org", "10.0.0.5", "::1"]
    assert spec.validity_days == 90 and spec.ckks.clip == 0.5


def test_defaults(tmp_path: Path) -> None:
    spec = load_consortium(write(tmp_path, "name: x\nsites: [a, b]\n"))
    assert spec.hosts == ["localhost", "127.0.0.1"]
    assert spec.validity_days == 365 and spec.ckks == CkksSpec()


def test_load_scenario_file() -> None:
    spec = load_consortium(ROOT / "scenarios" / "bank-fraud.yaml")
    assert spec.name == "bank-fraud"
    assert spec.sites == ["bank-a", "bank-b", "bank-c", "bank-d", "bank-e"]
    assert spec.ckks == CkksSpec() and spec.hosts == ["localhost", "127.0.0.1"]


def test_scenario_data_files_are_not_needed(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        name: s
        scheduler: {min_sites: 1}
        sites:
          - id: h-1
            data: {kind: csv, path: nowhere.csv, columns: {payer: a, payee: b, amount: c, timestamp: d, label: e}}
        """
    )
    assert load_consortium(write(tmp_path, text)).sites == ["h-1"]


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("name: x\nsites: [a]\nvalidity: 3\n", "validity", "unknown field"),
        ("name: x\nsites: [Bank A]\n", "sites", "invalid site id"),
        ("name: x\nsites: [a, a]\n", "sites", "more than once"),
        ("name: x\nsites: [a, coordinator]\n", "sites", "reserved"),
        ("name: x\nsites: []\n", "sites", "at least 1"),
        ("sites: [a]\n", "name", "required field is missing"),
        (
            "name: x\nsites: [a]\ncoordinator: {hosts: ['https://x:8']}\n",
            "coordinator.hosts",
            "no port",
        ),
        ("name: x\nsites: [a]\nvalidity_days: 0\n", "validity_days", "greater than or equal to 1"),
        (
            "name: x\nsites: [a]\nckks: {poly_modulus_degree: 1000}\n",
            "ckks.poly_modulus_degree",
            "8192",
        ),
        ("name: x\nsites:\n  - {id: a, data: {kind: nope}}\n", "sites[0]", "kind"),
        ("name: [unclosed\n", "line 2", "invalid YAML"),
    ],
)
def test_bad_files_name_file_and_field(tmp_path: Path, text: str, field: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert info.value.path == str(path)
    assert field in info.value.message and says in info.value.message, info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_consortium(tmp_path / "none.yaml")


# --------------------------------------------------------------------------- layout


def expected_layout() -> set[str]:
    site = {
        kitfiles.MANIFEST,
        kitfiles.CA_CERT,
        kitfiles.CLIENT_CERT,
        kitfiles.CLIENT_KEY,
        kitfiles.NODE_KEY,
        kitfiles.NODE_PUB,
        kitfiles.CKKS_SECRET,
    }
    out = {f"{kitfiles.CA_DIR}/{n}" for n in (kitfiles.MANIFEST, kitfiles.CA_CERT, kitfiles.CA_KEY)}
    out |= {
        f"{kitfiles.COORDINATOR_DIR}/{n}"
        for n in (
            kitfiles.MANIFEST,
            kitfiles.CA_CERT,
            kitfiles.SERVER_CERT,
            kitfiles.SERVER_KEY,
            kitfiles.CKKS_PUBLIC,
        )
    }
    out |= {f"{kitfiles.COORDINATOR_DIR}/{kitfiles.NODES_DIR}/{s}.pub" for s in SITES}
    out |= {f"{s}/{n}" for s in SITES for n in site}
    return out


def test_layout_and_permissions(kits: Path) -> None:
    files = {p.relative_to(kits).as_posix() for p in kits.rglob("*") if p.is_file()}
    assert files == expected_layout()  # nothing else: no temp files left behind
    for p in kits.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {mode:o}"
    assert stat.S_IMODE(kits.stat().st_mode) == 0o700


def test_manifests(kits: Path) -> None:
    import hashlib

    for kit in ["ca", "coordinator", *SITES]:
        m = KitManifest.model_validate_json((kits / kit / kitfiles.MANIFEST).read_text())
        assert m.kind == "fedcore-kit" and m.version == 1 and m.consortium == "nordic-banks"
        assert m.role == ("site" if kit in SITES else kit)
        assert m.site_id == (kit if kit in SITES else None)
        assert m.created == NOW and m.not_after == NOW + dt.timedelta(days=90)
        assert m.coordinator_hosts == ["fed.example.org", "10.0.0.5", "::1"]
        assert m.ckks.clip == 0.5
        on_disk = {
            p.relative_to(kits / kit).as_posix()
            for p in (kits / kit).rglob("*")
            if p.is_file() and p.name != kitfiles.MANIFEST
        }
        assert set(m.files) == on_disk
        for rel, digest in m.files.items():
            assert hashlib.sha256((kits / kit / rel).read_bytes()).hexdigest() == digest
    coord = json.loads((kits / "coordinator" / kitfiles.MANIFEST).read_text())
    assert coord["sites"] == SITES


# --------------------------------------------------------------------------- certificates


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_certificate(kits: Path) -> None:
    ca = cert(kits / "ca" / kitfiles.CA_CERT)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP384R1 | ec.SECP256R1)
    ca.verify_directly_issued_by(ca)
    assert ca.not_valid_after_utc == NOW + dt.timedelta(days=90)
    assert ca.not_valid_before_utc <= NOW
    for kit in ["coordinator", *SITES]:
        assert (kits / kit / kitfiles.CA_CERT).read_bytes() == (
            kits / "ca" / kitfiles.CA_CERT
        ).read_bytes()


def test_server_certificate(kits: Path) -> None:
    ca = cert(kits / "ca" / kitfiles.CA_CERT)
    srv = cert(kits / "coordinator" / kitfiles.SERVER_CERT)
    srv.verify_directly_issued_by(ca)
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fed.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]


def test_server_certificate_verifies_as_tls_server(kits: Path) -> None:
    from cryptography.x509.verification import PolicyBuilder, Store

    ca = cert(kits / "ca" / kitfiles.CA_CERT)
    srv = cert(kits / "coordinator" / kitfiles.SERVER_CERT)
    builder = PolicyBuilder().store(Store([ca])).time(NOW + dt.timedelta(days=1))
    for name in (x509.DNSName("fed.example.org"), x509.IPAddress(ipaddress.ip_address("10.0.0.5"))):
        chain = builder.build_server_verifier(name).verify(srv, [])
        assert chain[-1] == ca


def test_client_certificates(kits: Path) -> None:
    from cryptography.x509.verification import PolicyBuilder, Store

    ca = cert(kits / "ca" / kitfiles.CA_CERT)
    verifier = (
        PolicyBuilder().store(Store([ca])).time(NOW + dt.timedelta(days=1)).build_client_verifier()
    )
    for site in SITES:
        c = cert(kits / site / kitfiles.CLIENT_CERT)
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == site
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [site]
        eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        c.verify_directly_issued_by(ca)
        verifier.verify(c, [])


def test_tls_keys_match_certificates(kits: Path) -> None:
    der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pairs = [("coordinator", kitfiles.SERVER_KEY, kitfiles.SERVER_CERT)]
    pairs += [(s, kitfiles.CLIENT_KEY, kitfiles.CLIENT_CERT) for s in SITES]
    pairs += [("ca", kitfiles.CA_KEY, kitfiles.CA_CERT)]
    for kit, key_name, cert_name in pairs:
        key = serialization.load_pem_private_key((kits / kit / key_name).read_bytes(), None)
        assert key.public_key().public_bytes(*der) == cert(
            kits / kit / cert_name
        ).public_key().public_bytes(*der)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kits valid now (real TLS checks the real clock)."""
    tmp = tmp_path_factory.mktemp("fresh")
    provision(load_consortium(write(tmp, CONSORTIUM)), tmp / "kits")
    return tmp / "kits"


def handshake(kits: Path, site: str, server_name: str) -> dict[str, Any]:
    """Mutual TLS on loopback: coordinator kit serving, a site kit connecting; the server's view of the client."""
    coord, client = kits / "coordinator", kits / site
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(coord / kitfiles.SERVER_CERT, coord / kitfiles.SERVER_KEY)
    server_ctx.load_verify_locations(coord / kitfiles.CA_CERT)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=client / kitfiles.CA_CERT)
    client_ctx.load_cert_chain(client / kitfiles.CLIENT_CERT, client / kitfiles.CLIENT_KEY)
    peer: dict[str, Any] = {}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    peer.update(tls.getpeercert() or {})
                    tls.sendall(tls.recv(16))
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            port = listener.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                # the name checked is the one asked for; the socket is loopback
                with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                    tls.sendall(b"ping")
                    assert tls.recv(16) == b"ping"
        finally:
            thread.join(10)
    return peer


def test_mutual_tls_on_loopback(fresh: Path) -> None:
    """OpenSSL (behind uvicorn and gRPC) accepts the kits both ways."""
    for name in ("fed.example.org", "10.0.0.5"):
        peer = handshake(fresh, "bank-b", name)
        assert (("commonName", "bank-b"),) in peer["subject"]


def test_tls_refuses_other_names_and_other_cas(fresh: Path, kits: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|IP address mismatch"):
        handshake(fresh, "bank-a", "evil.example.org")
    mixed = fresh.parent / "mixed"
    shutil.copytree(fresh, mixed)
    shutil.copy2(kits / "ca" / kitfiles.CA_CERT, mixed / "bank-a" / kitfiles.CA_CERT)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(mixed, "bank-a", "fed.example.org")


# --------------------------------------------------------------------------- node keys


def test_node_keys_are_what_flower_accepts(kits: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    for site in SITES:
        private = serialization.load_ssh_private_key(
            (kits / site / kitfiles.NODE_KEY).read_bytes(), None
        )
        public = serialization.load_ssh_public_key((kits / site / kitfiles.NODE_PUB).read_bytes())
        # flower-supernode --auth-supernode-private-key: an EC private key in OpenSSH format
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        assert isinstance(public, ec.EllipticCurvePublicKey) and uses_nist_ec_curve(public)
        assert private.public_key() == public
        registered = kits / "coordinator" / kitfiles.NODES_DIR / f"{site}.pub"
        assert registered.read_bytes() == (kits / site / kitfiles.NODE_PUB).read_bytes()
        # flwr supernode register NODE.pub: accepted, yields the key the SuperLink stores
        assert try_load_public_key(registered) == public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    keys = {(kits / s / kitfiles.NODE_PUB).read_bytes() for s in SITES}
    assert len(keys) == len(SITES)  # one key per site


def test_flower_supernode_loads_node_key(kits: Path) -> None:
    import argparse

    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    args = argparse.Namespace(
        auth_supernode_private_key=str(kits / "bank-a" / kitfiles.NODE_KEY),
        auth_supernode_public_key=None,
    )
    pair = _try_setup_client_authentication(args)
    assert pair is not None and isinstance(pair[0], ec.EllipticCurvePrivateKey)


# --------------------------------------------------------------------------- CKKS


def test_ckks_contexts(kits: Path) -> None:
    from fedcore.config import PrivacySpec
    from secure.ckks import context_from_bytes
    from secure.codecs import make_codec

    secret = (kits / "bank-a" / kitfiles.CKKS_SECRET).read_bytes()
    for site in SITES:  # one consortium secret, shared by every site
        assert (kits / site / kitfiles.CKKS_SECRET).read_bytes() == secret
    site_ctx = context_from_bytes(secret, expect_secret=True)
    public = (kits / "coordinator" / kitfiles.CKKS_PUBLIC).read_bytes()
    coord_ctx = context_from_bytes(public, expect_secret=False)
    assert site_ctx.is_private() and not coord_ctx.is_private()
    assert not ts.context_from(public).is_private()
    # sites encrypt, the coordinator adds without any key, a site decrypts the sum
    spec = KitManifest.model_validate_json((kits / "bank-a" / kitfiles.MANIFEST).read_text()).ckks
    privacy = PrivacySpec(mode="ckks", ckks=spec)
    at_site = make_codec(privacy, site_ctx, 3)
    at_coordinator = make_codec(privacy, coord_ctx, 3)
    a, b = np.array([0.1, -0.2, 0.3]), np.array([0.05, 0.1, -0.4])
    total = at_coordinator.add([at_site.encrypt(a), at_site.encrypt(b)], 3)
    assert at_site.decrypt(total, 3, 2) == pytest.approx(a + b, abs=at_site.error_bound(2))


# --------------------------------------------------------------------------- secrets stay secret


def secret_fragments(kits: Path) -> list[bytes]:
    """Byte strings that would give a key away: PEM/OpenSSH bodies and raw private scalars."""
    out: list[bytes] = []
    for p in kits.rglob("*"):
        if not p.is_file() or p.name not in kitfiles.SECRET_FILES or p.suffix == ".ctx":
            continue
        data = p.read_bytes()
        body = [ln for ln in data.splitlines() if ln and not ln.startswith(b"-----")]
        out += [ln for ln in body if len(ln) >= 32]
        key = (
            serialization.load_ssh_private_key(data, None)
            if p.name == kitfiles.NODE_KEY
            else serialization.load_pem_private_key(data, None)
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        n = key.private_numbers().private_value
        out.append(n.to_bytes((key.curve.key_size + 7) // 8, "big"))
        out.append(str(n).encode())
        out.append(f"{n:x}".encode())
    assert len(out) > 5 * len(SITES)
    return out


def test_no_secret_in_non_secret_files(kits: Path) -> None:
    fragments = secret_fragments(kits)
    public_files = [
        p for p in kits.rglob("*") if p.is_file() and p.name not in kitfiles.SECRET_FILES
    ]
    assert len(public_files) >= 10
    for p in public_files:
        data = p.read_bytes()
        assert b"PRIVATE" not in data, p
        for frag in fragments:
            assert frag not in data, f"{p} holds secret key material"


def test_report_holds_no_secret(tmp_path: Path, kits: Path) -> None:
    spec = load_consortium(write(tmp_path, CONSORTIUM))
    report = provision(spec, tmp_path / "k", now=NOW)
    text = repr(report).encode()
    for frag in secret_fragments(tmp_path / "k"):
        assert frag not in text
    assert [k.role for k in report.kits] == ["ca", "coordinator", "site", "site", "site"]
    assert report.kits[2].site_id == "bank-a" and report.kits[2].path == tmp_path / "k" / "bank-a"
    assert report.not_after == NOW + dt.timedelta(days=90) and len(report.ca_sha256) == 64


# --------------------------------------------------------------------------- overwriting


def test_refuses_to_overwrite_then_force_replaces(tmp_path: Path) -> None:
    spec = ConsortiumSpec(name="c", sites=["a", "b"])
    out = tmp_path / "kits"
    provision(spec, out, now=NOW)
    before = (out / "a" / kitfiles.NODE_KEY).read_bytes()
    with pytest.raises(ProvisionError, match="already exist.*--force"):
        provision(spec, out, now=NOW)
    assert (out / "a" / kitfiles.NODE_KEY).read_bytes() == before  # untouched
    (out / "old-site").mkdir()
    (out / "old-site" / kitfiles.MANIFEST).write_text("{}")
    report = provision(spec, out, now=NOW, force=True)
    assert set(report.replaced) == {out / "ca", out / "coordinator", out / "a", out / "b"}
    assert report.others == (out / "old-site",)
    assert (out / "a" / kitfiles.NODE_KEY).read_bytes() != before
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "ca", "coordinator", "old-site"]


def test_partial_clash_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "kits"
    (out / "b").mkdir(parents=True)
    with pytest.raises(ProvisionError, match=r"kits/b"):
        provision(ConsortiumSpec(name="c", sites=["a", "b"]), out, now=NOW)
    assert sorted(p.name for p in out.iterdir()) == ["b"]  # nothing written


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ProvisionError, match="not a directory"):
        provision(ConsortiumSpec(name="c", sites=["a"]), tmp_path / "f", now=NOW)


def test_bank_fraud_scenario(tmp_path: Path) -> None:
    spec = load_consortium(ROOT / "scenarios" / "bank-fraud.yaml")
    provision(spec, tmp_path / "kits", now=NOW)
    names = sorted(p.name for p in (tmp_path / "kits").iterdir())
    assert names == ["bank-a", "bank-b", "bank-c", "bank-d", "bank-e", "ca", "coordinator"]
    nodes = sorted(p.name for p in (tmp_path / "kits" / "coordinator" / "nodes").iterdir())
    assert nodes == [f"bank-{x}.pub" for x in "abcde"]
