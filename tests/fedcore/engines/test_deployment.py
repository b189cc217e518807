"""Deployment engine: real SuperLink/SuperNode processes on 127.0.0.1, and their cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from fedcore.cli.runner import write_site_configs
from fedcore.config import load_scenario
from fedcore.engines.deployment import (
    DeploymentError,
    DeploymentSecurity,
    ManagedProcess,
    RoundsTail,
    check_transport,
    config_args,
    format_address,
    is_loopback_host,
    parse_address,
    run_deployment,
    stop_processes,
)

FLOWER_NAMES = (
    "flower-superlink",
    # the coordinator's SuperLink: Flower's, through fedcore's launcher
    "flower_runtime superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    # a site's SuperNode (Flower's, shorter waits) and its long-lived ClientApp worker
    "flower_runtime supernode",
    "flower_runtime worker",
)


# --------------------------------------------------------------------------- helpers


def write_scenario(
    root: Path, *, sites: int = 2, rounds: int = 1, min_sites: int = 2, round_timeout: float = 120.0
) -> tuple[Path, dict[str, Path]]:
    """A tiny scenario (300 generated transactions per site, 1 local epoch) and its site files."""
    scenario = {
        "name": "tiny-deployment",
        "seed": 11,
        "rounds": rounds,
        "sites": [
            {"id": f"bank-{chr(ord('a') + i)}", "data": {"kind": "generated", "transactions": 300}}
            for i in range(sites)
        ],
        "task": {"hidden": 8, "layers": 1},
        "training": {"local_epochs": 1},
        "scheduler": {"min_sites": min_sites},
        "engine": {"name": "deployment", "round_timeout": round_timeout},
    }
    path = root / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path, write_site_configs(load_scenario(path), root)


def provision_kits(root: Path, sites: list[str], name: str = "tls-test") -> Path:
    """Real kits from `fedcore provision` (CA, TLS certificates, node keys) under ``root``."""
    from secure.provision import ConsortiumSpec, provision

    provision(ConsortiumSpec(name=name, sites=sites), root)
    return root


def kits_for(kits: Path, sites: dict[str, Path]) -> DeploymentSecurity:
    """What run_deployment needs: the coordinator kit and one kit per site."""
    return DeploymentSecurity(
        coordinator_kit=kits / "coordinator", site_kits={s: kits / s for s in sites}
    )


def _mentions(proc: psutil.Process, root: str) -> bool:
    try:
        if any(root in part for part in proc.cmdline()):
            return True
        return proc.environ().get("FLWR_HOME", "").startswith(root)
    except psutil.Error:
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ProcessWatch:
    """Records every process that belongs to one test (its command line or FLWR_HOME names
    the test's directory, or it descends from a process the test started)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.commands: dict[tuple[int, float], str] = {}
        self.roots: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _remember(self, proc: psutil.Process) -> None:
        try:
            key = (proc.pid, proc.create_time())
            # Read the command line every time: a process seen between fork and exec
            # still shows its parent's.
            command = " ".join(proc.cmdline())
            if command or key not in self.commands:  # a zombie's is empty: keep the last
                self.commands[key] = command
            self.seen.setdefault(key, proc)
        except psutil.Error:
            pass

    def sample(self) -> None:
        me = psutil.Process()
        for proc in me.children(recursive=True):
            self._remember(proc)
        for popen in self.roots:
            try:
                for proc in psutil.Process(popen.pid).children(recursive=True):
                    self._remember(proc)
            except psutil.Error:
                pass
        for proc in psutil.process_iter():
            if proc.pid != me.pid and _mentions(proc, self.root):
                self._remember(proc)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            self.sample()

    def survivors(self, wait: float = 15.0) -> list[str]:
        """Processes of this test still running after up to ``wait`` seconds."""
        self.sample()
        deadline = time.monotonic() + wait
        while True:
            alive = [
                p
                for p in self.seen.values()
                if _alive(p) and p.pid != os.getpid() and not _own_helper(p)
            ]
            alive += [
                p
                for p in psutil.process_iter()
                if _mentions(p, self.root) and _alive(p) and p.pid != os.getpid() and p not in alive
            ]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        out = []
        for proc in alive:
            try:
                out.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            except psutil.Error:
                continue
        return out

    def flower_seen(self) -> set[str]:
        """Which Flower programs this test's processes ran."""
        names: set[str] = set()
        for cmd in list(self.commands.values()):
            names.update(n for n in FLOWER_NAMES if n in cmd)
        return names

    def kill_all(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for popen in self.roots:
            if popen.poll() is None:
                popen.kill()
                popen.wait(timeout=10)
        for proc in list(self.seen.values()):
            if _alive(proc) and proc.pid != os.getpid():
                try:
                    proc.kill()
                except psutil.Error:
                    pass


def _own_helper(proc: psutil.Process) -> bool:
    """Python's multiprocessing resource tracker of this test process (it lives as long as the
    test process; a test that runs an engine in-process, e.g. a reference run, starts it)."""
    try:
        return proc.ppid() == os.getpid() and "multiprocessing.resource_tracker" in " ".join(
            proc.cmdline()
        )
    except psutil.Error:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


DRIVER = textwrap.dedent(
    """
    import json, signal, sys
    from pathlib import Path
    from fedcore.engines.deployment import DeploymentError, run_deployment

    # Ctrl-C as at a terminal: a command started in the background by a shell without job
    # control (as CI runners do) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt for it
    signal.signal(signal.SIGINT, signal.default_int_handler)

    scenario, out, sites = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        result = run_deployment(Path(scenario), Path(out), rounds=None, insecure=True,
                                site_configs={k: Path(v) for k, v in sites.items()}, timeout=600)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
    except DeploymentError as exc:
        print("DeploymentError:", exc, flush=True)
        sys.exit(1)
    print("completed", result["status"], flush=True)
    """
)


def start_driver(
    watch: ProcessWatch, tmp_path: Path, scenario: Path, sites: dict[str, Path]
) -> subprocess.Popen[bytes]:
    """``run_deployment`` in a child process, so the test can signal it."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    log = (tmp_path / "driver.log").open("wb")
    popen = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(scenario),
            str(tmp_path / "out"),
            json.dumps({k: str(v) for k, v in sites.items()}),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    watch.roots.append(popen)
    return popen


def _clientapp_running(watch: ProcessWatch, out: Path) -> bool:
    """Whether a site's ClientApp has served a message of the run (the run is under way)."""
    watch.sample()
    for proc in watch.seen.values():
        try:
            if _alive(proc) and "flwr-clientapp" in " ".join(proc.cmdline()):
                return True
        except psutil.Error:
            continue
    return any("answered" in _text(p) for p in (out / "logs").glob("clientapp-worker-*.log"))


# --------------------------------------------------------------------------- fast unit tests


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "host:99999", ":9092", "a b:1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(DeploymentError, match="expected HOST:PORT"):
        parse_address(text)


def test_loopback_only_without_tls() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("127.1.2.3")
    assert is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("203.0.113.5") and not is_loopback_host("198.51.100.7")
    assert not is_loopback_host("coordinator.example.org")
    check_transport("127.0.0.1", insecure=True, action="listen on")
    with pytest.raises(DeploymentError, match="refusing to listen on 203.0.113.5 without TLS"):
        check_transport("203.0.113.5", insecure=True, action="listen on")
    # with TLS any address is fine
    check_transport("127.0.0.1", insecure=False, action="listen on")
    check_transport("192.0.2.1", insecure=False, action="connect to")
    check_transport("coordinator.example.org", insecure=False, action="connect to")


def test_config_args_quote_paths_for_flower() -> None:
    from flwr.common.config import parse_config_args

    values: dict[str, str | int | float | bool] = {
        "scenario": "/tmp/my dir/s=1.yaml",
        "out-dir": "/tmp/it's",
        "rounds": 3,
        "wait-sites": 2.5,
        "flag": True,
    }
    assert parse_config_args([config_args(values)]) == values
    with pytest.raises(DeploymentError, match="quote"):
        config_args({"x": 'it\'s "both"'})


def test_rounds_tail_reads_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    tail = RoundsTail(path)
    assert tail.read_new() == []
    path.write_text('{"round": 1}\n{"round"')
    assert tail.read_new() == [{"round": 1}]
    with path.open("a") as fh:
        fh.write(': 2}\nnot json\n[1]\n{"round": 3}\n')
    assert tail.read_new() == [{"round": 2}, {"round": 3}]
    path.write_text('{"round": 1}\n')  # rewritten from scratch (resume)
    assert tail.read_new() == [{"round": 1}]


def test_stop_processes_kills_groups_and_orphans(tmp_path: Path, watch: ProcessWatch) -> None:
    # A parent that ignores SIGTERM, with a child in another session (like Flower's SuperExec).
    script = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=True)
        print("stub " + "ready", flush=True)
        time.sleep(300)
        """
    )
    proc = ManagedProcess.start(
        "stubborn", [sys.executable, "-c", script], log_path=tmp_path / "stubborn.log"
    )
    watch.roots.append(proc.popen)
    wait_for(lambda: "stub ready" in _text(tmp_path / "stubborn.log"), 30, "the stub")
    proc.refresh()
    assert len(proc.survivors()) == 1
    t0 = time.monotonic()
    stop_processes([proc], grace=1.0)
    assert time.monotonic() - t0 < 10
    assert proc.poll() is not None and not proc.survivors()
    stop_processes([proc], grace=1.0)  # idempotent


@pytest.mark.parametrize(("how", "code"), [("kill", -signal.SIGKILL), ("exit", 3)])
def test_a_managed_process_reports_how_its_command_ended(
    tmp_path: Path, watch: ProcessWatch, how: str, code: int
) -> None:
    # The command runs under a guard; the caller must still see the command's own end
    # (a site killed by -9 is reported as such, not as the guard's error).
    script = "import sys, time; print('stub' + '-ready', flush=True); time.sleep(0.5 if sys.argv[1] == 'exit' else 300); sys.exit(3)"
    proc = ManagedProcess.start(
        "stub", [sys.executable, "-c", script, how], log_path=tmp_path / "stub.log"
    )
    watch.roots.append(proc.popen)
    wait_for(lambda: "stub-ready" in _text(tmp_path / "stub.log"), 30, "the stub")
    if how == "kill":
        proc.refresh()
        command = next(
            p
            for p in psutil.Process(proc.popen.pid).children()
            if "time.sleep" in " ".join(p.cmdline())
        )
        command.kill()
    assert proc.popen.wait(timeout=30) == code
    assert "Traceback" not in _text(tmp_path / "stub.log")


# --------------------------------------------------------------------------- real Flower processes


@pytest.mark.slow
def test_two_sites_complete_over_tls_and_leave_no_process(
    tmp_path: Path, watch: ProcessWatch
) -> None:
    scenario, sites = write_scenario(tmp_path)
    kits = provision_kits(tmp_path / "kits dir", list(sites))  # a space: quoting of kit paths
    rounds: list[dict[str, Any]] = []
    result = run_deployment(
        scenario,
        tmp_path / "out",
        rounds=None,
        site_configs=sites,
        security=kits_for(kits, sites),
        on_round=rounds.append,
        timeout=600,
    )
    assert result["status"] == "completed", result
    assert [r["round"] for r in rounds] == [1]
    assert sorted(rounds[0]["sites"]) == ["bank-a", "bank-b"]
    out = tmp_path / "out"
    assert (out / str(result["model"])).is_file()
    for name in (
        "fed-coordinator.log",
        "superlink.log",
        "fed-client-bank-a.log",
        "supernode-bank-b.log",
    ):
        assert (out / "logs" / name).stat().st_size > 0, name
    # it really ran the production commands and Flower's processes, with TLS and node keys;
    # each site's messages were served by its one long-lived worker, not a process per message
    seen = watch.flower_seen()
    assert {
        "flower_runtime superlink",
        "flwr-serverapp",
        "flower_runtime supernode",
        "flower_runtime worker",
    } <= seen
    assert "flwr-clientapp" not in seen
    commands = list(watch.commands.values())
    assert sum("flower-superexec" in c for c in commands) == 1  # the SuperLink's, for the ServerApp
    assert sum("flower_runtime worker" in c for c in commands) == 2
    for site in ("bank-a", "bank-b"):
        assert "answered" in _text(out / "logs" / f"clientapp-worker-{site}.log"), site
    superlink = next(c for c in commands if "flower_runtime superlink" in c)
    assert "--enable-supernode-auth" in superlink and "--insecure" not in superlink
    assert "--fleet-listen" in superlink and "--host 127.0.0.1" in superlink
    assert "--database" not in superlink  # its state is in memory; fedcore's store is OUT
    supernodes = [c for c in commands if "flower_runtime supernode" in c]
    assert len(supernodes) == 2
    assert all("--auth-supernode-private-key" in c and "--insecure" not in c for c in supernodes)
    coordinator_log = _text(out / "logs" / "fed-coordinator.log")
    assert "node key bank-a: SHA256:" in coordinator_log
    assert watch.survivors() == []


@pytest.mark.slow
def test_sigint_stops_everything(tmp_path: Path, watch: ProcessWatch) -> None:
    # rounds to spare: the first ClientApp seen may already be the last round's, and the run
    # must still be going when the signal lands (it stops there, so they cost nothing)
    scenario, sites = write_scenario(tmp_path, rounds=4)
    driver = start_driver(watch, tmp_path, scenario, sites)
    wait_for(
        lambda: _clientapp_running(watch, tmp_path / "out") or driver.poll() is not None,
        240,
        "a ClientApp process (the run under way)",
    )
    assert driver.poll() is None, _text(tmp_path / "driver.log")
    os.kill(driver.pid, signal.SIGINT)
    # every layer stops its children with a grace period (SIGTERM, then SIGKILL); on a loaded
    # 2-core CI machine the whole tree has taken more than 90 s, so wait for the bound instead
    try:
        code = driver.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGINT did not stop the run within 240 s:\n" + _text(tmp_path / "driver.log"))
    assert code == 130, _text(tmp_path / "driver.log")
    assert "KeyboardInterrupt" in _text(tmp_path / "driver.log")
    assert watch.survivors() == []


@pytest.mark.slow
def test_site_crash_fails_clearly_and_leaves_no_process(
    tmp_path: Path, watch: ProcessWatch
) -> None:
    scenario, sites = write_scenario(tmp_path, min_sites=2, round_timeout=60)
    driver = start_driver(watch, tmp_path, scenario, sites)
    wait_for(
        lambda: _clientapp_running(watch, tmp_path / "out") or driver.poll() is not None,
        240,
        "a ClientApp process (the run under way)",
    )
    # The site's machine "dies": SIGKILL its fed-client, which cannot clean up after itself.
    victims = [
        proc
        for key, proc in watch.seen.items()
        if _alive(proc)
        and "fedcore.cli.client_cmd" in watch.commands[key]
        and "bank-b" in watch.commands[key]
    ]
    assert len(victims) == 1
    victims[0].kill()
    assert driver.wait(timeout=120) == 1, _text(tmp_path / "driver.log")
    log = _text(tmp_path / "driver.log")
    assert "site 'bank-b': fed-client exited with code -9" in log
    assert "scheduler.min_sites=2" in log
    assert watch.survivors() == []


@pytest.mark.slow
def test_site_crash_run_completes_with_remaining_sites(tmp_path: Path, watch: ProcessWatch) -> None:
    scenario, sites = write_scenario(tmp_path, min_sites=1, round_timeout=90)
    rounds: list[dict[str, Any]] = []
    killed: list[str] = []

    def crash_site_b(row: dict[str, Any]) -> None:
        rounds.append(row)

    # Kill site b's fed-client from a thread as soon as the first ClientApp runs.
    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if _clientapp_running(watch, tmp_path / "out"):
                for key, proc in list(watch.seen.items()):
                    cmd = watch.commands.get(key, "")
                    if "fedcore.cli.client_cmd" in cmd and "bank-b" in cmd and _alive(proc):
                        proc.kill()
                        killed.append(cmd)
                return
            time.sleep(0.3)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.monotonic()
    result = run_deployment(
        scenario,
        tmp_path / "out",
        rounds=None,
        site_configs=sites,
        insecure=True,
        on_round=crash_site_b,
        timeout=600,
    )
    thread.join(timeout=5)
    assert killed, "site b was never killed"
    assert result["status"] == "completed"
    assert [r["sites"] for r in rounds] == [["bank-a"]]
    assert time.monotonic() - t0 < 400
    assert watch.survivors() == []


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


@pytest.mark.slow
def test_non_loopback_without_tls_is_refused(tmp_path: Path, watch: ProcessWatch) -> None:
    scenario, sites = write_scenario(tmp_path)
    done = _cli(
        "fedcore.cli.coordinator_cmd",
        "start",
        "--scenario",
        str(scenario),
        "--listen",
        "203.0.113.5:9092",
        "--insecure",
        "--state",
        str(tmp_path / "st"),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to listen on 203.0.113.5 without TLS" in done.stdout
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-a"]),
        "--coordinator",
        "192.0.2.1:9092",
        "--insecure",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to connect to 192.0.2.1 without TLS" in done.stdout
    assert watch.flower_seen() == set()  # refused before starting anything


@pytest.mark.slow
def test_no_kit_and_no_insecure_is_refused(tmp_path: Path, watch: ProcessWatch) -> None:
    scenario, sites = write_scenario(tmp_path)
    done = _cli(
        "fedcore.cli.coordinator_cmd",
        "start",
        "--scenario",
        str(scenario),
        "--listen",
        "127.0.0.1:9092",
        "--state",
        str(tmp_path / "st"),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "fedcore provision" in done.stdout and "--kit KITS/coordinator" in done.stdout
    assert "--insecure" in done.stdout
    done = _cli(
        "fedcore.cli.client_cmd",
        "start",
        "--site",
        str(sites["bank-a"]),
        "--coordinator",
        "127.0.0.1:9092",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "fedcore provision" in done.stdout and "--kit KITS/bank-a" in done.stdout
    with pytest.raises(DeploymentError, match="needs the provisioned kits"):
        run_deployment(scenario, tmp_path / "out", rounds=None, site_configs=sites)
    assert watch.flower_seen() == set()


@pytest.mark.slow
def test_bad_scenario_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrounds: 0\nsites: []\n")
    done = _cli(
        "fedcore.cli.coordinator_cmd", "start", "--scenario", str(bad), "--insecure", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "bad.yaml" in done.stdout and "Traceback" not in done.stdout + done.stderr
