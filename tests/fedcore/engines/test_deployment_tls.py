"""Deployment engine with TLS and node authentication from provisioned kits, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcore.engines.deployment import (
    READY_MARK,
    CoordinatorSecurity,
    DeploymentError,
    SiteSecurity,
    config_args,
    free_port,
)
from fedcore.engines.deployment.site import _supernode_failure, speaks_tls
from fedcore.pki import node_key_fingerprint
from secure.provision import node_key_pair
from tests.fedcore.engines.test_deployment import (
    ProcessWatch,
    _cli,
    _text,
    provision_kits,
    wait_for,
    write_scenario,
)

SITES = ["bank-a", "bank-b"]


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One consortium's kits, in a directory whose path holds a space."""
    return provision_kits(tmp_path_factory.mktemp("tls") / "kits dir", SITES)


@pytest.fixture(scope="module")
def other_kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kits of another provisioning: another CA, other node keys."""
    return provision_kits(tmp_path_factory.mktemp("other") / "kits", SITES, name="other")


def coordinator_security(kits: Path) -> CoordinatorSecurity:
    from fedcore.cli.coordinator_cmd import coordinator_security as from_kit
    from secure.kit import load_kit

    return from_kit(load_kit(kits / "coordinator", role="coordinator"))


def rogue_kit(kits: Path, site: str, dest: Path) -> Path:
    """A copy of ``site``'s kit whose node key pair was never registered at the coordinator."""
    shutil.copytree(kits / site, dest)
    private, public = node_key_pair(site)
    for name, data in (("node.key", private), ("node.pub", public)):
        (dest / name).write_bytes(data)
        os.chmod(dest / name, 0o600)
    return dest


# --------------------------------------------------------------------------- fast checks


def test_kit_files_are_checked_before_anything_starts(kits: Path, other_kits: Path) -> None:
    security = coordinator_security(kits)
    assert sorted(security.node_public_keys) == SITES
    assert security.check("127.0.0.1") == []  # provisioned 0600: no warning
    security.check("localhost")
    with pytest.raises(DeploymentError, match="does not name 192.0.2.1: it names localhost"):
        security.check("192.0.2.1")
    foreign = CoordinatorSecurity(
        ca_cert=kits / "coordinator" / "ca.crt",
        server_cert=other_kits / "coordinator" / "server.crt",
        server_key=other_kits / "coordinator" / "server.key",
        node_public_keys=security.node_public_keys,
    )
    with pytest.raises(DeploymentError, match="is not signed by the CA"):
        foreign.check("127.0.0.1")
    mixed = CoordinatorSecurity(
        ca_cert=kits / "coordinator" / "ca.crt",
        server_cert=kits / "coordinator" / "server.crt",
        server_key=other_kits / "coordinator" / "server.key",
        node_public_keys=security.node_public_keys,
    )
    with pytest.raises(DeploymentError, match="does not belong to the server certificate"):
        mixed.check("127.0.0.1")
    site = SiteSecurity(
        ca_cert=kits / "bank-a" / "ca.crt",
        node_private_key=kits / "bank-a" / "node.key",
        node_public_key=kits / "bank-b" / "node.pub",
    )
    with pytest.raises(DeploymentError, match="is not the public half"):
        site.check()
    missing = SiteSecurity(
        ca_cert=kits / "bank-a" / "nope.crt",
        node_private_key=kits / "bank-a" / "node.key",
        node_public_key=kits / "bank-a" / "node.pub",
    )
    with pytest.raises(DeploymentError, match="nope.crt does not exist"):
        missing.check()
    # the fingerprint operators compare is ssh-keygen's
    assert node_key_fingerprint(kits / "bank-a" / "node.pub").startswith("SHA256:")
    assert node_key_fingerprint(kits / "bank-a" / "node.pub") != node_key_fingerprint(
        kits / "bank-b" / "node.pub"
    )


def test_kit_paths_with_spaces_reach_flower_intact(kits: Path) -> None:
    from flwr.common.config import parse_config_args

    values: dict[str, str | int | float | bool] = {
        "site-config": str(kits.parent / "sites dir" / "bank-a.yaml"),
        "kit": str(kits / "bank-a"),
    }
    assert " " in str(values["kit"])
    assert parse_config_args([config_args(values)]) == values
    assert parse_config_args([config_args({"kit": ""})]) == {"kit": ""}


class FakeControl:
    """The three Control API calls that registration makes, on a list of NodeInfo."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        self.calls: list[str] = []

    def ListNodes(self, request: Any) -> Any:
        from flwr.proto.control_pb2 import ListNodesResponse

        return ListNodesResponse(nodes_info=self.nodes)

    def RegisterNode(self, request: Any) -> Any:
        from flwr.proto.control_pb2 import RegisterNodeResponse

        self.calls.append(f"register {request.name}")
        return RegisterNodeResponse(node_id=100 + len(self.calls))

    def UnregisterNode(self, request: Any) -> Any:
        from flwr.proto.control_pb2 import UnregisterNodeResponse

        self.calls.append(f"unregister {request.node_id}")
        return UnregisterNodeResponse()


def test_registration_keeps_members_and_drops_replaced_keys(kits: Path, other_kits: Path) -> None:
    from flwr.proto.node_pb2 import NodeInfo

    from fedcore.engines.deployment import ControlApi
    from fedcore.pki import load_node_public_key, public_key_pem

    keys = coordinator_security(kits).registration_keys()
    old_b = public_key_pem(load_node_public_key(other_kits / "bank-b" / "node.pub"))
    fake = FakeControl(
        [
            NodeInfo(node_id=1, name="bank-a", status="online", public_key=keys["bank-a"]),
            NodeInfo(node_id=2, name="bank-b", status="registered", public_key=old_b),
            NodeInfo(node_id=3, name="gone", status="unregistered", public_key=b"x"),
        ]
    )
    control = ControlApi.__new__(ControlApi)
    control._client = fake
    assert control.sync_nodes(keys) == (["bank-b"], ["bank-a"], ["bank-b"])
    assert fake.calls == ["unregister 2", "register bank-b"]
    assert control.online_nodes() == ["bank-a"]
    with pytest.raises(DeploymentError, match="bank-a, bank-b have the same node public key"):
        control.sync_nodes({"bank-a": keys["bank-a"], "bank-b": keys["bank-a"]})


# --------------------------------------------------------------------------- CLI refusals


@pytest.mark.slow
def test_wrong_sites_kit_is_refused_with_exit_2(
    tmp_path: Path, kits: Path, watch: ProcessWatch
) -> None:
    _, sites = write_scenario(tmp_path)
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-a"]),
        "--kit",
        str(kits / "bank-b"),
        "--coordinator",
        "127.0.0.1:9092",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is the kit of site 'bank-b'" in done.stdout
    assert "is site 'bank-a'" in done.stdout and "Traceback" not in done.stderr
    # a coordinator kit is not a site kit, and vice versa
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-a"]),
        "--kit",
        str(kits / "coordinator"),
        "--coordinator",
        "127.0.0.1:9092",
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "expected a site kit" in done.stdout, done.stdout
    assert watch.flower_seen() == set()


def _serve_once(server: socket.socket, tls: ssl.SSLContext | None) -> threading.Thread:
    """Accept one connection: complete a TLS handshake, or answer plain bytes (HTTP/2-like)."""

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            try:
                if tls is not None:
                    with tls.wrap_socket(conn, server_side=True) as wrapped:
                        wrapped.recv(1)
                else:
                    conn.recv(1024)
                    conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00")
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_tls_probe_tells_a_tls_coordinator_from_a_plain_one(kits: Path) -> None:
    sec = coordinator_security(kits)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sec.server_cert, sec.server_key)
    tls.set_alpn_protocols(["h2"])
    with (
        socket.create_server(("127.0.0.1", 0)) as tls_server,
        socket.create_server(("127.0.0.1", 0)) as plain_server,
    ):
        threads = [_serve_once(tls_server, tls), _serve_once(plain_server, None)]
        assert speaks_tls("127.0.0.1", tls_server.getsockname()[1])
        assert not speaks_tls("127.0.0.1", plain_server.getsockname()[1])
        for thread in threads:
            thread.join(timeout=10)
    assert not speaks_tls("127.0.0.1", free_port())  # nothing listens there


def test_insecure_site_told_the_coordinator_speaks_tls() -> None:
    found = _supernode_failure(
        "WARNING :   Connection attempt failed, retrying in 0.13 seconds\n",
        "bank-a",
        "127.0.0.1:9092",
        None,
        tls_server=True,
    )
    assert found is not None
    message, retry = found
    assert not retry
    assert message.startswith("the coordinator at 127.0.0.1:9092 speaks TLS, but this site")
    assert (
        "started with --insecure" in message and "Fix: start it with --kit KITS/bank-a" in message
    )
    # without the probe's finding, a failed attempt alone says nothing (nothing may listen yet)
    assert _supernode_failure("Connection attempt failed", "bank-a", "h:1", None) is None


# --------------------------------------------------------------------------- real TLS


def _start(watch: ProcessWatch, log: Path, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    watch.roots.append(popen)
    return popen


def _stop(popen: subprocess.Popen[bytes]) -> int:
    if popen.poll() is None:
        os.kill(popen.pid, signal.SIGTERM)
    return popen.wait(timeout=60)


def _online(flwr_home: Path) -> list[dict[str, str]]:
    """Nodes online, asked with the `flwr` CLI through the config fed-coordinator wrote."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "supernode", "ls", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLWR_HOME": str(flwr_home)},
        check=False,
    )
    start = done.stdout.find("{")
    assert done.returncode == 0 and start >= 0, done.stdout + done.stderr
    payload = json.loads(done.stdout[start:])
    assert payload["success"], payload
    return [n for n in payload["nodes"] if n["status"] == "online"]


@pytest.fixture
def coordinator(
    tmp_path: Path, kits: Path, watch: ProcessWatch
) -> Iterator[tuple[str, Path, dict[str, Path], subprocess.Popen[bytes]]]:
    """``fed-coordinator start --kit`` on 127.0.0.1 with TLS and node authentication, ready."""
    _, sites = write_scenario(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    log = tmp_path / "coordinator.log"
    popen = _start(
        watch,
        log,
        "fedcore.cli.coordinator_cmd",
        "start",
        "--scenario",
        str(tmp_path / "scenario.yaml"),
        "--kit",
        str(kits / "coordinator"),
        "--listen",
        address,
        "--state",
        str(state),
        "--site-timeout",
        "600",
        cwd=tmp_path,
    )
    try:
        wait_for(
            lambda: READY_MARK in _text(log) or popen.poll() is not None, 120, "the coordinator"
        )
        assert popen.poll() is None, _text(log)
        yield address, state, sites, popen
    finally:
        _stop(popen)


@pytest.mark.slow
def test_registered_site_joins_and_strangers_are_refused(
    tmp_path: Path,
    kits: Path,
    other_kits: Path,
    watch: ProcessWatch,
    coordinator: tuple[str, Path, dict[str, Path], subprocess.Popen[bytes]],
) -> None:
    address, state, sites, coordinator_proc = coordinator
    coordinator_log = _text(tmp_path / "coordinator.log")
    assert "TLS, node authentication; 2 member node key(s)" in coordinator_log
    fingerprint = node_key_fingerprint(kits / "bank-a" / "node.pub")
    assert f"node key bank-a: {fingerprint} (registered)" in coordinator_log
    superlink_log = state / "run" / "logs" / "superlink.log"

    # (a) a registered site with its kit connects over TLS and is online
    site_log = tmp_path / "bank-a.log"
    site = _start(
        watch,
        site_log,
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-a"]),
        "--kit",
        str(kits / "bank-a"),
        "--coordinator",
        address,
        cwd=tmp_path,
    )
    wait_for(
        lambda: "connected to" in _text(site_log) or site.poll() is not None, 120, "bank-a joins"
    )
    assert site.poll() is None, _text(site_log)
    assert f"TLS, node key {fingerprint}" in _text(site_log)
    online = _online(state / "flwr-home")
    assert len(online) == 1, online
    wait_for(
        lambda: "sites connected: 1/2 (bank-a)" in _text(tmp_path / "coordinator.log"),
        30,
        "the coordinator to see bank-a by name",
    )

    # (b) a node key the coordinator never registered is refused, and says so
    rogue = rogue_kit(kits, "bank-b", tmp_path / "rogue kit")
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-b"]),
        "--kit",
        str(rogue),
        "--coordinator",
        address,
        "--refused-retry-for",
        "1",  # one more try after REFUSED_RETRY_DELAY, then give up
        "--state",
        str(tmp_path / "rogue-state"),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused this site's node key" in done.stdout
    assert node_key_fingerprint(rogue / "node.pub") in done.stdout
    assert done.stdout.count("trying again in 5 s") == 1, done.stdout
    assert "No SuperNode found with the given public key" in _text(superlink_log)
    rogue_log = _text(tmp_path / "rogue-state" / "logs" / "supernode.log")
    assert rogue_log.count("[code: 2004]") == 2, rogue_log

    # (c) a site whose kit comes from another provisioning does not trust this coordinator
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-b"]),
        "--kit",
        str(other_kits / "bank-b"),
        "--coordinator",
        address,
        "--state",
        str(tmp_path / "foreign-state"),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "did not sign" in done.stdout and "different provisionings" in done.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in _text(
        tmp_path / "foreign-state" / "logs" / "supernode.log"
    )

    # neither stranger ever became a node of this federation
    online = _online(state / "flwr-home")
    assert len(online) == 1, online
    assert "sites connected: 2/2" not in _text(tmp_path / "coordinator.log")
    assert coordinator_proc.poll() is None

    assert _stop(site) == 130, _text(site_log)
    assert _stop(coordinator_proc) == 130, _text(tmp_path / "coordinator.log")
    assert watch.survivors() == []


@pytest.mark.slow
def test_insecure_site_against_a_tls_coordinator_fails_at_once(
    tmp_path: Path,
    watch: ProcessWatch,
    coordinator: tuple[str, Path, dict[str, Path], subprocess.Popen[bytes]],
) -> None:
    address, state, sites, coordinator_proc = coordinator
    started = time.monotonic()
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-a"]),
        "--insecure",
        "--coordinator",
        address,
        "--state",
        str(tmp_path / "plain-state"),
        cwd=tmp_path,
    )
    took = time.monotonic() - started
    supernode_log = _text(tmp_path / "plain-state" / "logs" / "supernode.log")
    assert done.returncode == 1, done.stdout + done.stderr + supernode_log
    # expected / found / fix, on one line the user reads
    assert f"the coordinator at {address} speaks TLS" in done.stdout, done.stdout
    assert "started with --insecure" in done.stdout and "--kit KITS/bank-a" in done.stdout
    assert "Traceback" not in done.stderr and "trying again" not in done.stdout
    assert took < 90, f"took {took:.0f} s to give up"
    # it never became a node of the federation, and the coordinator is unharmed
    assert _online(state / "flwr-home") == []
    assert coordinator_proc.poll() is None
    assert _stop(coordinator_proc) == 130, _text(tmp_path / "coordinator.log")
    assert watch.survivors() == []
