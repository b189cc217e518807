"""Only approved code runs at a site, and the SuperLink's Control API is never served where sites connect.

Fast checks of the bundle a site approves, the approval's message and the ASGI gate, then
one coordinator and one site over real TLS and node authentication: the coordinator serves
its Fleet API on 127.0.0.2 (standing for the address sites reach) and its Control API on
127.0.0.1 only; a tampered copy of fedcore's app and a foreign app are refused by the site.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib

from fedcore.config import SiteConfig
from fedcore.engines.deployment import ControlApi, config_args, free_port
from fedcore.engines.deployment import flower_runtime as fr
from fedcore.engines.deployment.flower_cli import APP_DIR, APP_FILES, flower_error_text
from tests.fedcore.engines.test_deployment import ProcessWatch, _text, wait_for, write_scenario
from tests.fedcore.engines.test_deployment_tls import _start, _stop

# --------------------------------------------------------------------------- the bundle


def _tampered(dest: Path, line: str = "import os  # one line more\n") -> Path:
    """A copy of fedcore's app whose ClientApp module has one more line."""
    dest.mkdir(parents=True)
    for name in APP_FILES:
        shutil.copyfile(APP_DIR / name, dest / name)
    with (dest / "fedcore_clientapp.py").open("a", encoding="utf-8") as fh:
        fh.write(line)
    return dest


def test_app_files_are_the_whole_app_directory() -> None:
    # A file added to the app but not to APP_FILES would never be submitted.
    shipped = {
        p.relative_to(APP_DIR).as_posix()
        for p in APP_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped == set(APP_FILES)


def test_the_coordinators_copy_builds_the_bundle_sites_approve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.engines.deployment import coordinator, flower_cli

    own = fr.bundle_hash(fr.app_bundle())
    assert fr.bundle_hash(fr.app_bundle()) == own  # Flower's builder is deterministic
    # an installed app directory with what a machine leaves beside it
    installed = tmp_path / "installed" / "flowerapp"
    shutil.copytree(APP_DIR, installed, ignore=shutil.ignore_patterns("__pycache__"))
    (installed / "__pycache__").mkdir()
    (installed / "__pycache__" / "fedcore_clientapp.cpython-311.pyc").write_bytes(b"\0junk")
    (installed / "NOTES.md").write_text("an operator's note\n")
    (installed / "scratch.py").write_text("print('not part of the app')\n")
    monkeypatch.setattr(coordinator, "APP_DIR", installed)
    monkeypatch.setattr(flower_cli, "APP_DIR", installed)
    app_dir, submitted = coordinator._copy_app(tmp_path / "state")
    assert sorted(p.name for p in app_dir.iterdir()) == sorted(APP_FILES)
    assert submitted == fr.bundle_hash(fr.directory_bundle(app_dir)) == own
    # ...whereas the whole directory, as it lies, would not be the approved bundle
    assert fr.bundle_hash(fr.directory_bundle(installed)) != own
    # and a changed module is caught before anything is submitted
    with (installed / "fedcore_clientapp.py").open("a") as fh:
        fh.write("# changed\n")
    monkeypatch.setattr(flower_cli, "APP_DIR", APP_DIR)  # the sites' copy stays as shipped
    with pytest.raises(Exception, match="is not the one sites build"):
        coordinator._copy_app(tmp_path / "state")


def test_approval_refuses_any_other_bundle_and_says_how_to_approve_it(tmp_path: Path) -> None:
    approval = fr.AppApproval.for_site()
    own = fr.app_bundle()
    assert approval.approved == {fr.bundle_hash(own)} and not approval.configured
    assert approval.refusal(own, fr.FEDCORE_FAB_ID, 3) is None

    tampered = fr.app_bundle(_tampered(tmp_path / "tampered"))
    got = fr.bundle_hash(tampered)
    message = approval.refusal(tampered, fr.FEDCORE_FAB_ID, 7, "/srv/site/bank-a.yaml")
    assert message is not None
    assert f"refused run 7: its app bundle (app 'fedcore/fedcore-app', sha256 {got})" in message
    assert f"which runs only the bundle of its own fedcore ({fr.bundle_hash(own)})" in message
    assert f"add {got} to approved_apps in the site config /srv/site/bank-a.yaml" in message
    # the digest is the bundle's own, whatever the run claims
    assert approval.refusal(b"", fr.FEDCORE_FAB_ID, 8) is not None

    # a consortium that pins its bundle: exactly the listed ones
    pinned = fr.AppApproval.for_site([got.upper()])
    assert pinned.configured and pinned.approved == {got}
    assert pinned.refusal(tampered, fr.FEDCORE_FAB_ID, 9) is None
    refused = pinned.refusal(own, fr.FEDCORE_FAB_ID, 9)
    assert refused is not None
    assert f"which runs only the bundles approved_apps lists in the site config: {got}." in refused
    both = fr.AppApproval.for_site([got, fr.bundle_hash(own)]).refusal(b"", "", 10)
    assert both is not None and f"{fr.bundle_hash(own)} (its own fedcore's)" in both


def test_site_config_approved_apps_holds_sha256_digests() -> None:
    base: dict[str, Any] = {"id": "bank-a", "data": {"kind": "generated", "transactions": 300}}
    assert SiteConfig(**base).approved_apps is None
    digest = "AB" * 32
    assert SiteConfig(**base, approved_apps=[digest]).approved_apps == [digest.lower()]
    with pytest.raises(ValueError, match="approves no app bundle"):
        SiteConfig(**base, approved_apps=[])
    with pytest.raises(ValueError, match="expected sha256 digests .* found '5c7d1e07'"):
        SiteConfig(**base, approved_apps=["5c7d1e07"])


# --------------------------------------------------------------------------- the gate


def _through_gate(path: str, server: tuple[str, int], kind: str = "http") -> tuple[bool, Any]:
    """Send one request through :class:`FleetOnlyGate`: (reached Flower's app, what was sent)."""
    reached: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    gate = fr.FleetOnlyGate(app, ("127.0.0.1", 9500))
    asyncio.run(gate({"type": kind, "path": path, "server": server}, receive, send))
    return bool(reached), sent


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ("/v1/fleet/pull-messages", True),
        ("/v1/fleet/register-node", True),
        ("/health", True),
        ("/v1/control/list-runs", False),
        ("/v1/control/start-run", False),
        ("/v1/control/register-node", False),
        ("/v1/runtime/get-nodes", False),
        ("/docs", False),
        ("/openapi.json", False),
        ("/v1/fleet/../control/list-runs", False),
        ("/v1/fleet/pull-messages/", False),
        ("/health/../v1/control/list-runs", False),
    ],
)
def test_the_gate_serves_the_fleet_api_only_away_from_loopback(path: str, public: bool) -> None:
    for server in (("127.0.0.2", 9092), ("127.0.0.1", 9092), ("10.0.0.5", 9500)):
        reached, sent = _through_gate(path, server)
        assert reached == public, (path, server)
        if not public:
            assert sent[0]["status"] == 404 and b"Fleet API only" in sent[1]["body"]
    reached, _ = _through_gate(path, ("127.0.0.1", 9500))  # the loopback socket: everything
    assert reached


def test_the_gate_closes_websockets_and_passes_lifespan() -> None:
    reached, sent = _through_gate("/v1/fleet/pull-messages", ("127.0.0.2", 9092), "websocket")
    assert not reached and sent == [{"type": "websocket.close", "code": 1008}]
    reached, _ = _through_gate("", ("127.0.0.2", 9092), "lifespan")
    assert reached


def test_flowers_routes_split_as_the_gate_expects() -> None:
    # Fails loudly when Flower moves its SuperLink internals or its routes: re-read
    # flwr/superlink/main.py and flwr/superlink/cli/flower_superlink.py of that release.
    assert fr.superlink_internals_problems() == []
    from fastapi.routing import APIRoute, iter_route_contexts
    from flwr.superlink.main import create_app

    paths = {
        ctx.route.path
        for ctx in iter_route_contexts(create_app().routes)
        if isinstance(ctx.route, APIRoute)
    }
    public = {p for p in paths if fr.PUBLIC_PATH.fullmatch(p)}
    assert public == {p for p in paths if p.startswith("/v1/fleet/")} | {"/health"}
    assert {"/v1/fleet/pull-messages", "/v1/fleet/push-messages"} <= public
    assert {"/v1/control/start-run", "/v1/control/register-node"} <= paths - public


def test_a_changed_uvicorn_call_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    source = "def serve():\n    uvicorn.run(app=a, host=h, port=p, ssl_ca_certs=c)\n"
    assert fr._uvicorn_kwargs(source) == {"app", "host", "port", "ssl_ca_certs"}
    assert fr._uvicorn_kwargs("def serve():\n    server.run()\n") is None
    monkeypatch.setattr(fr, "flower_version", lambda: "9.0.0")
    assert any("Flower 9.0.0 is installed" in p for p in fr.superlink_internals_problems())


# --------------------------------------------------------------------------- live, over TLS

FLEET_HOST = "127.0.0.2"  # stands for the coordinator's public interface


@dataclass
class Federation:
    """One coordinator (Fleet API on 127.0.0.2) and one site, after the coordinator's own run."""

    root: Path
    kits: Path
    scenario: Path
    fleet: str
    state: Path
    coordinator_log: Path
    site_log: Path
    worker_log: Path
    watch: ProcessWatch

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr-home"

    def control_address(self) -> str:
        config = tomllib.loads((self.flwr_home / "config.toml").read_text())
        return str(config["superlink"]["fedcore"]["address"])

    def ca(self) -> Path:
        return self.kits / "coordinator" / "ca.crt"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    from secure.provision import ConsortiumSpec, CoordinatorSpec, provision

    root = tmp_path_factory.mktemp("approved")
    kits = root / "kits"
    hosts = ["localhost", "127.0.0.1", FLEET_HOST]
    provision(
        ConsortiumSpec(name="approved", sites=["bank-a"], coordinator=CoordinatorSpec(hosts=hosts)),
        kits,
    )
    scenario, sites = write_scenario(root, sites=1, rounds=1, min_sites=1)
    fleet = f"{FLEET_HOST}:{free_port(FLEET_HOST)}"
    fed = Federation(
        root=root,
        kits=kits,
        scenario=scenario,
        fleet=fleet,
        state=root / "state",
        coordinator_log=root / "coordinator.log",
        site_log=root / "bank-a.log",
        worker_log=root / "site-state" / "logs" / "clientapp-worker-bank-a.log",
        watch=ProcessWatch(root),
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        coordinator = _start(
            fed.watch,
            fed.coordinator_log,
            "fedcore.cli.coordinator_cmd",
            "start",
            "--scenario",
            str(scenario),
            "--kit",
            str(kits / "coordinator"),
            "--listen",
            fleet,
            "--state",
            str(fed.state),
            "--metrics-listen",
            "off",
            cwd=root,
        )
        procs.append(coordinator)
        site = _start(
            fed.watch,
            fed.site_log,
            "fedcore.cli.client_cmd",
            "start",
            "--site",
            str(sites["bank-a"]),
            "--kit",
            str(kits / "bank-a"),
            "--coordinator",
            fleet,
            "--state",
            str(root / "site-state"),
            cwd=root,
        )
        procs.append(site)
        wait_for(
            lambda: (
                "run completed" in _text(fed.coordinator_log)
                or "run failed" in _text(fed.coordinator_log)
                or coordinator.poll() is not None
                or site.poll() is not None
            ),
            240,
            "the coordinator's own run",
        )
        yield fed
    finally:
        for proc in reversed(procs):
            try:
                _stop(proc)
            except subprocess.TimeoutExpired:
                proc.kill()
        fed.watch.kill_all()


def _https(fed: Federation, address: str, path: str, method: str = "POST") -> int:
    """The HTTP status of one request over TLS (the consortium CA trusted), with no body."""
    context = ssl.create_default_context(cafile=str(fed.ca()))
    request = urllib.request.Request(f"https://{address}{path}", data=b"", method=method)
    request.add_header("Content-Type", "application/protobuf")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.slow
def test_the_control_api_is_served_on_loopback_only(federation: Federation) -> None:
    fed = federation
    log = _text(fed.coordinator_log)
    own = fr.bundle_hash(fr.app_bundle())
    assert "run completed" in log, log[-3000:]  # the untampered run works
    found = re.search(r"run (\d+) submitted \(app bundle sha256 (\w+)\)", log)
    assert found is not None and found.group(2) == own, log[-3000:]
    run_id = int(found.group(1))
    assert f"connected to {fed.fleet}" in _text(fed.site_log)  # the Fleet API serves sites
    assert f"approved     app bundle sha256 {own} (this site's fedcore)" in _text(fed.site_log)
    control = fed.control_address()
    assert control.startswith("127.0.0.1:") and control != fed.fleet
    assert f"control  {control}" in log

    # the sites' address: health and the Fleet API, nothing else
    assert _https(fed, fed.fleet, "/health", "GET") == 200
    assert _https(fed, fed.fleet, "/v1/fleet/pull-messages") not in (404, 200)  # unsigned
    for path in (
        "/v1/control/list-runs",
        "/v1/control/start-run",
        "/v1/control/register-node",
        "/v1/runtime/get-nodes",
        "/docs",
    ):
        assert _https(fed, fed.fleet, path) == 404, path
        assert _https(fed, control, path) != 404, path

    # Flower's own Control API client, pointed at the sites' address, gets nowhere
    from flwr.proto.control_pb2 import RegisterNodeRequest, StartRunRequest

    outside = ControlApi(fed.fleet, fed.root / "outside-home", fed.ca())
    try:
        with pytest.raises(Exception) as listing:
            outside.run_status(run_id)
        with pytest.raises(Exception) as submitting:
            outside._client.StartRun(StartRunRequest())
        key = (fed.kits / "bank-a" / "node.pub").read_bytes()
        with pytest.raises(Exception) as registering:
            outside._client.RegisterNode(RegisterNodeRequest(public_key=key, name="intruder"))
    finally:
        outside.close()
    for caught in (listing, submitting, registering):
        assert "404 Not Found" in str(caught.value), caught.value
        assert "serves Flower's Fleet API only" in flower_error_text(caught.value)

    # the coordinator's own client on loopback still works
    inside = ControlApi(control, fed.flwr_home, fed.ca())
    try:
        assert inside.run_status(run_id)[:2] == ("finished", "completed")
        assert inside.online_nodes() == ["bank-a"]
    finally:
        inside.close()


FOREIGN_SERVERAPP = textwrap.dedent(
    """
    import json, time
    from pathlib import Path
    from flwr.app import Message, RecordDict
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context):
        nodes = []
        for _ in range(100):
            nodes = list(grid.get_node_ids())
            if nodes:
                break
            time.sleep(0.2)
        replies = grid.send_and_receive(
            [Message(RecordDict(), n, "query.probe") for n in nodes], timeout=60
        )
        found = [r.error.reason if r.has_error() else "answered" for r in replies]
        out = Path(str(context.run_config["out"]))
        out.with_suffix(".part").write_text(json.dumps(found))
        out.with_suffix(".part").replace(out)  # whole or not there: the test reads it at once
    """
)

FOREIGN_CLIENTAPP = textwrap.dedent(
    """
    from pathlib import Path
    from flwr.clientapp import ClientApp

    Path({marker!r}).write_text("foreign code ran at the site")
    app = ClientApp()
    """
)


def _foreign_app(dest: Path, marker: Path) -> Path:
    """Another publisher's app: its ClientApp would leave ``marker`` if it ever ran."""
    dest.mkdir(parents=True)
    (dest / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "probe-app"
            version = "1.0.0"
            dependencies = []

            [tool.flwr.app]
            publisher = "stranger"

            [tool.flwr.app.components]
            serverapp = "probe_server:app"
            clientapp = "probe_client:app"

            [tool.flwr.app.config]
            out = ""
            """
        )
    )
    (dest / "probe_server.py").write_text(FOREIGN_SERVERAPP)
    (dest / "probe_client.py").write_text(FOREIGN_CLIENTAPP.format(marker=str(marker)))
    return dest


def _flwr_run(fed: Federation, app_dir: Path, run_config: dict[str, Any]) -> int:
    """Submit ``app_dir`` as the coordinator's operator would (``flwr run``); the run id."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "flwr"),
            "run",
            str(app_dir),
            "fedcore",
            "--run-config",
            config_args(run_config),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLWR_HOME": str(fed.flwr_home)},
        check=False,
    )
    payload = json.loads(done.stdout[done.stdout.find("{") :])
    assert done.returncode == 0 and payload.get("success"), done.stdout + done.stderr
    return int(payload["run-id"])


@pytest.mark.slow
def test_tampered_and_foreign_bundles_are_refused_by_the_site(federation: Federation) -> None:
    fed = federation
    assert "run completed" in _text(fed.coordinator_log)
    own = fr.bundle_hash(fr.app_bundle())
    tampered_dir = _tampered(fed.root / "tampered" / "app")
    tampered = fr.bundle_hash(fr.app_bundle(tampered_dir))
    marker = fed.root / "foreign-code-ran"
    foreign_dir = _foreign_app(fed.root / "foreign" / "app", marker)
    foreign = fr.bundle_hash(fr.directory_bundle(foreign_dir))
    tampered_out = fed.root / "tampered-out"
    probe_out = fed.root / "foreign-replies.json"

    tampered_run = _flwr_run(
        fed,
        tampered_dir,
        {
            "scenario": str(fed.scenario),
            "out-dir": str(tampered_out),
            "rounds": 1,
            "wait-sites": 5.0,
            "kit": str(fed.kits / "coordinator"),
        },
    )
    foreign_run = _flwr_run(fed, foreign_dir, {"out": str(probe_out)})

    # the coordinator's side sees why: the site's error reply carries the message
    wait_for(probe_out.exists, 120, "the foreign app's ServerApp to get the site's reply")
    (reason,) = json.loads(probe_out.read_text())
    assert f"refused run {foreign_run}: its app bundle (app 'stranger/probe-app', " in reason
    assert f"sha256 {foreign})" in reason and f"the bundle of its own fedcore ({own})" in reason
    assert "approved_apps" in reason and "bank-a.yaml" in reason
    federation_json = tampered_out / "federation.json"
    wait_for(federation_json.exists, 120, "the tampered run's ServerApp to give up")
    record = federation_json.read_text()
    assert f"refused run {tampered_run}" in record and tampered in record, record[-2000:]

    # and so does the site's own log, once per refused message
    worker = _text(fed.worker_log)
    assert f"refused run {tampered_run}: its app bundle (app 'fedcore/fedcore-app', " in worker
    assert f"sha256 {tampered})" in worker and f"sha256 {foreign})" in worker
    assert "answered" in worker  # the coordinator's own run was served
    assert not marker.exists()  # no code of the foreign bundle ran at the site


def test_a_sites_approved_apps_reach_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcore.engines.deployment import site

    started: list[list[str]] = []
    monkeypatch.setattr(
        site.ManagedProcess, "start", staticmethod(lambda name, argv, **kw: started.append(argv))
    )
    pinned = ["ab" * 32, "cd" * 32]
    for approved in (pinned, None):
        site.WorkerSupervisor(
            "bank-a",
            "127.0.0.1:1",
            tmp_path / "w.log",
            {},
            [],
            lambda e: None,
            approved_apps=approved,
        ).start()
    with_list, without = started
    assert [a for a in with_list if a.startswith("--approved-app")] == [
        f"--approved-app={h}" for h in pinned
    ]
    assert not any(a.startswith("--approved-app") for a in without)


def test_the_control_api_needs_its_own_port_and_a_certificate_naming_loopback(
    tmp_path: Path,
) -> None:
    from fedcore.cli.coordinator_cmd import coordinator_security
    from fedcore.engines.deployment import CoordinatorOptions, DeploymentError
    from fedcore.engines.deployment.coordinator import _check_options
    from secure.kit import load_kit
    from secure.provision import ConsortiumSpec, CoordinatorSpec, provision

    hosts = CoordinatorSpec(hosts=["coordinator.example.org"])
    provision(ConsortiumSpec(name="named", sites=["bank-a"], coordinator=hosts), tmp_path / "k")
    security = coordinator_security(load_kit(tmp_path / "k" / "coordinator", role="coordinator"))
    with pytest.raises(DeploymentError, match="does not name 127.0.0.1: it names coordinator"):
        security.check("coordinator.example.org", control_host="127.0.0.1")
    assert security.check("coordinator.example.org") == []

    scenario, _ = write_scenario(tmp_path, sites=1, rounds=1, min_sites=1)
    options = CoordinatorOptions(
        scenario_path=scenario,
        state_dir=tmp_path / "s",
        out_dir=tmp_path / "o",
        log_dir=tmp_path / "l",
        insecure=True,
        port=9092,
        control_port=9092,
    )
    with pytest.raises(DeploymentError, match=r"Control API port \(9092\) must differ"):
        _check_options(options)
