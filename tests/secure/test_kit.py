"""`secure.kit`: loading and checking kits, and reply signatures with node keys."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure import kitfiles
from secure.kit import (
    KitCheck,
    KitError,
    check_kit,
    load_kit,
    registered_nodes,
    sign,
    verify_signature,
    verify_site_signature,
)
from secure.provision import ConsortiumSpec, provision

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
SOON = NOW + dt.timedelta(days=1)
SITES = ["bank-a", "bank-b", "bank-c"]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kit") / "kits"
    provision(ConsortiumSpec(name="nordic", sites=SITES, validity_days=30), out, now=NOW)
    return out


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second provisioning of the same consortium: another CA, other keys."""
    out = tmp_path_factory.mktemp("kit") / "kits"
    provision(ConsortiumSpec(name="nordic", sites=SITES, validity_days=30), out, now=NOW)
    return out


@pytest.fixture
def kits(original: Path, tmp_path: Path) -> Path:
    """A private copy to damage (modes are kept)."""
    return Path(shutil.copytree(original, tmp_path / "kits"))


def failed(result: KitCheck) -> dict[str, str]:
    return {c.name: c.detail for c in result.failures}


# --------------------------------------------------------------------------- loading


def test_load_site_kit(original: Path) -> None:
    kit = load_kit(original / "bank-a", role="site")
    assert kit.role == "site" and kit.site_id == "bank-a" and kit.consortium == "nordic"
    assert kit.node_key == original / "bank-a" / kitfiles.NODE_KEY
    assert kit.cert.name == kitfiles.CLIENT_CERT and kit.key.name == kitfiles.CLIENT_KEY
    assert kit.ckks_context.name == kitfiles.CKKS_SECRET
    assert kit.ca_cert.name == kitfiles.CA_CERT
    assert set(kit.files) == {
        kitfiles.CA_CERT,
        kitfiles.CLIENT_CERT,
        kitfiles.CLIENT_KEY,
        kitfiles.NODE_KEY,
        kitfiles.NODE_PUB,
        kitfiles.CKKS_SECRET,
    }
    with pytest.raises(KitError, match="has no server.key"):
        kit.file(kitfiles.SERVER_KEY)


def test_load_coordinator_kit(original: Path) -> None:
    kit = load_kit(original / "coordinator", role="coordinator")
    assert kit.site_id is None and kit.cert.name == kitfiles.SERVER_CERT
    assert kit.ckks_context.name == kitfiles.CKKS_PUBLIC
    assert f"{kitfiles.NODES_DIR}/bank-c.pub" in kit.files
    with pytest.raises(KitError, match="no node.key"):
        _ = kit.node_key


def test_wrong_role(original: Path) -> None:
    with pytest.raises(
        KitError, match=r"site kit of bank-a, expected a coordinator kit: pass KITS/coordinator"
    ):
        load_kit(original / "bank-a", role="coordinator")
    with pytest.raises(KitError, match=r"coordinator kit, expected a site kit"):
        load_kit(original / "coordinator", role="site")


def test_not_a_kit(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="does not exist"):
        load_kit(tmp_path / "nope")
    with pytest.raises(KitError, match="no kit.json"):
        load_kit(tmp_path)
    (tmp_path / kitfiles.MANIFEST).write_text("{not json")
    with pytest.raises(KitError, match="cannot be read as JSON"):
        check_kit(tmp_path)
    (tmp_path / kitfiles.MANIFEST).write_text('{"kind": "fedcore-kit", "version": 9}')
    with pytest.raises(KitError, match="version 9.*upgrade fedcore"):
        load_kit(tmp_path)


def test_missing_file(kits: Path) -> None:
    (kits / "bank-a" / kitfiles.NODE_KEY).unlink()
    with pytest.raises(KitError, match="lacks node.key: copy the whole kit"):
        load_kit(kits / "bank-a")
    f = failed(check_kit(kits / "bank-a", now=SOON))
    assert "missing node.key" in f["files present"]
    assert f["node key"] == "not checked: node.key missing"


def test_loose_permissions_refused(kits: Path) -> None:
    key = kits / "bank-b" / kitfiles.CLIENT_KEY
    os.chmod(key, 0o644)
    with pytest.raises(KitError, match=rf"client.key has permissions 0644.*chmod 600 {key}"):
        load_kit(kits / "bank-b")
    assert f"chmod 600 {key}" in failed(check_kit(kits / "bank-b", now=SOON))["permissions"]
    os.chmod(key, 0o600)
    os.chmod(kits / "coordinator" / kitfiles.CKKS_PUBLIC, 0o644)  # not secret: fine
    load_kit(kits / "coordinator")
    os.chmod(kits / "coordinator", 0o777)
    with pytest.raises(KitError, match="chmod 700"):
        load_kit(kits / "coordinator")


# --------------------------------------------------------------------------- checking


@pytest.mark.parametrize("kit", ["ca", "coordinator", *SITES])
def test_fresh_kits_pass(original: Path, kit: str) -> None:
    result = check_kit(original / kit, now=SOON)
    assert result.ok, failed(result)
    assert result.days_left == 29
    names = {c.name for c in result.checks}
    assert {"files present", "permissions", "file hashes", "validity"} <= names
    if kit in SITES:
        assert {"certificate chain", "key matches certificate", "node key", "CKKS context"} <= names
        assert any("CKKS secret key" in k for k in result.keys)
        assert any(k.startswith("node.key: node private key (ECDSA P-384)") for k in result.keys)
    if kit == "coordinator":
        assert {"registered nodes", "CKKS context"} <= names
        assert any("no secret key" in k for k in result.keys)
        assert sum("node public key of" in k for k in result.keys) == 3


def test_renewal_due_is_reported(original: Path) -> None:
    result = check_kit(original / "bank-a", now=NOW + dt.timedelta(days=25))
    assert result.ok and result.days_left == 5  # valid 30 days from NOW
    assert "renew soon" in {c.name: c.detail for c in result.checks}["validity"]


def test_expired(original: Path) -> None:
    result = check_kit(original / "bank-a", now=NOW + dt.timedelta(days=40))
    assert not result.ok and result.days_left == -10
    assert set(failed(result)) == {"validity"}
    assert "client.crt expired on 2025-07-01" in failed(result)["validity"]
    assert "re-provision" in failed(result)["validity"]


def test_not_yet_valid(original: Path) -> None:
    result = check_kit(original / "coordinator", now=NOW - dt.timedelta(days=2))
    assert "not valid before" in failed(result)["validity"]
    assert "clock" in failed(result)["validity"]


def test_certificate_from_another_ca(kits: Path, other: Path) -> None:
    shutil.copy2(other / "ca" / kitfiles.CA_CERT, kits / "bank-a" / kitfiles.CA_CERT)
    f = failed(check_kit(kits / "bank-a", now=SOON))
    assert "ca.crt changed since provisioning" in f["file hashes"]
    assert "not the consortium CA named in kit.json" in f["certificate chain"]


def test_certificate_signed_by_another_ca(kits: Path, other: Path) -> None:
    # the kit's own CA stays, but the client certificate (and its key) come from elsewhere
    for name in (kitfiles.CLIENT_CERT, kitfiles.CLIENT_KEY):
        shutil.copy2(other / "bank-a" / name, kits / "bank-a" / name)
    f = failed(check_kit(kits / "bank-a", now=SOON))
    assert (
        "client.crt is not signed by this kit's ca.crt (signature does not verify)"
        in f["certificate chain"]
    )
    assert "key matches certificate" not in f


def test_key_of_another_certificate(kits: Path) -> None:
    shutil.copy2(kits / "bank-b" / kitfiles.CLIENT_KEY, kits / "bank-a" / kitfiles.CLIENT_KEY)
    f = failed(check_kit(kits / "bank-a", now=SOON))
    assert "client.key is not the private key of client.crt" in f["key matches certificate"]


def test_node_key_mismatch(kits: Path) -> None:
    shutil.copy2(kits / "bank-b" / kitfiles.NODE_PUB, kits / "bank-a" / kitfiles.NODE_PUB)
    f = failed(check_kit(kits / "bank-a", now=SOON))
    assert "node.key does not match node.pub" in f["node key"]


def test_tampered_file(kits: Path) -> None:
    p = kits / "coordinator" / kitfiles.NODES_DIR / "bank-b.pub"
    p.write_bytes((kits / "bank-c" / kitfiles.NODE_PUB).read_bytes())
    f = failed(check_kit(kits / "coordinator", now=SOON))
    assert set(f) == {"file hashes"}
    assert "nodes/bank-b.pub changed since provisioning (SHA-256 differs)" in f["file hashes"]


def test_site_kit_without_ckks_secret(kits: Path) -> None:
    shutil.copy2(
        kits / "coordinator" / kitfiles.CKKS_PUBLIC, kits / "bank-a" / kitfiles.CKKS_SECRET
    )
    f = failed(check_kit(kits / "bank-a", now=SOON))
    assert "ckks-secret.ctx holds no secret key" in f["CKKS context"]
    assert "file hashes" in f


def test_coordinator_kit_with_ckks_secret(kits: Path) -> None:
    shutil.copy2(
        kits / "bank-a" / kitfiles.CKKS_SECRET, kits / "coordinator" / kitfiles.CKKS_PUBLIC
    )
    result = check_kit(kits / "coordinator", now=SOON)
    f = failed(result)
    assert "holds the CKKS secret key: the coordinator could decrypt" in f["CKKS context"]
    assert any("WITH the consortium's secret key" in k for k in result.keys)


def test_ca_kit(original: Path) -> None:
    result = check_kit(original / "ca", now=SOON)
    assert result.ok, failed(result)
    assert any("keep offline" in k for k in result.keys)


# --------------------------------------------------------------------------- signatures


def test_signature_binds_the_site(original: Path) -> None:
    site_a = load_kit(original / "bank-a", role="site")
    coordinator = load_kit(original / "coordinator", role="coordinator")
    nodes = registered_nodes(coordinator)
    assert sorted(nodes) == SITES
    assert nodes["bank-a"] == (original / "bank-a" / kitfiles.NODE_PUB).read_bytes().strip()
    payload = b"train reply|bank-a|round 3|sha256:abc"
    sig = sign(site_a, payload)
    assert verify_signature(nodes["bank-a"], payload, sig)
    assert not verify_signature(nodes["bank-b"], payload, sig)  # a kit made for A cannot act as B
    assert not verify_signature(nodes["bank-a"], payload + b"!", sig)
    assert not verify_signature(nodes["bank-a"], payload, b"\x30\x00garbage")
    assert verify_site_signature(coordinator, "bank-a", payload, sig)
    assert not verify_site_signature(coordinator, "bank-b", payload, sig)
    assert not verify_site_signature(coordinator, "bank-z", payload, sig)


def test_keys_are_loaded_once(kits: Path) -> None:
    site = load_kit(kits / "bank-a")
    coordinator = load_kit(kits / "coordinator")
    sig = sign(site, b"x")
    nodes = registered_nodes(coordinator)
    (kits / "bank-a" / kitfiles.NODE_KEY).unlink()
    shutil.rmtree(kits / "coordinator" / kitfiles.NODES_DIR)
    assert registered_nodes(coordinator) == nodes
    assert verify_signature(nodes["bank-a"], b"y", sign(site, b"y"))
    assert verify_signature(nodes["bank-a"], b"x", sig)


def test_signing_needs_a_site_kit(original: Path) -> None:
    with pytest.raises(KitError, match="only a site kit signs"):
        sign(load_kit(original / "coordinator"), b"x")
    with pytest.raises(KitError, match="registered node keys are in the coordinator kit"):
        registered_nodes(load_kit(original / "bank-a"))


def test_bad_public_key() -> None:
    with pytest.raises(KitError, match="not an OpenSSH public key"):
        verify_signature(b"-----BEGIN PUBLIC KEY-----", b"x", b"y")
    ed = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(KitError, match="expected ECDSA on a NIST curve"):
        verify_signature(ed, b"x", b"y")
