"""Crash safety of the deployment engine, shown on loopback with TLS and node keys.

A machine that dies is a ``kill -9`` of its service: ``fed-coordinator`` or one ``fed-client``,
or Flower's ``flwr-serverapp`` under ``fedcore run --engine deployment``. Each test kills one
mid-round and shows what an operator would check: the run goes on or resumes without redoing
a completed round, the model is the one an uninterrupted run trains, and ``ps`` shows no
process of the killed service left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore.cli.runner import write_site_configs
from fedcore.config import load_scenario
from fedcore.engines.deployment import READY_MARK, free_port
from tests.fedcore.engines.services import (
    ServiceTree,
    audit_entries,
    client_argv,
    coordinator_argv,
    module,
    ps,
    ps_report,
    rounds_of,
    start,
    stop,
    text,
    wait_until,
)
from tests.fedcore.engines.test_deployment import ProcessWatch, provision_kits, write_scenario

SITES = ["bank-a", "bank-b", "bank-c"]

#: Seconds a killed service's processes get to be gone (SIGTERM from the kernel on the
#: parent's death, then each layer's grace period) on a loaded 2-core machine.
ORPHAN_BOUND = 45.0


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One consortium of three banks: CA, TLS certificates, node keys."""
    return provision_kits(tmp_path_factory.mktemp("crash") / "kits", SITES, name="crash-test")


def _completed_rounds(out: Path) -> list[int]:
    """Rounds with a ``round_completed`` entry in ``OUT/audit.jsonl`` (the last thing a round writes)."""
    return [e["round"] for e in audit_entries(out) if e.get("event") == "round_completed"]


def _logs(*paths: Path) -> str:
    return "\n".join(f"--- {p}\n{text(p)[-4000:]}" for p in paths)


#: A site's SuperNode: Flower's, or fedcore's wrapper of it (``python -m ...flower_runtime``).
SUPERNODE = "flower-supernode|flower_runtime"
SUPERLINK = "flower-superlink|flower_runtime superlink"


def _assert_gone(tree: ServiceTree, expected: set[str]) -> None:
    """``ps`` shows none of ``tree``'s processes within :data:`ORPHAN_BOUND` seconds.

    ``expected``: programs that must have run below it (``"a|b"``: either), or the check
    would prove nothing.
    """
    ran = tree.programs()
    assert all(ran & set(names.split("|")) for names in expected), (
        f"{tree.name} ran {sorted(tree.programs())}, expected at least {sorted(expected)} "
        "(the check would prove nothing)"
    )
    left = tree.left_running(ORPHAN_BOUND)
    assert left == [], (
        f"{ORPHAN_BOUND:.0f} s after {tree.name} (pid {tree.pid}) ended, ps still shows "
        f"processes it started:\n{ps_report(left)}"
    )


def _kill9(popen: subprocess.Popen[bytes], tree: ServiceTree) -> None:
    """``kill -9`` of the service's own process only, as a machine's death would end it."""
    tree.sample()  # its tree as it is at the moment of death
    os.kill(popen.pid, signal.SIGKILL)
    assert popen.wait(timeout=30) == -signal.SIGKILL


# --------------------------------------------------------------------------- fed-coordinator


@pytest.mark.slow
def test_killed_coordinator_resumes_where_it_stopped_and_sites_reconnect(
    tmp_path: Path, kits: Path, watch: ProcessWatch
) -> None:
    rounds = 3
    scenario, sites = write_scenario(tmp_path, sites=2, rounds=rounds, round_timeout=120)
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    out, state = tmp_path / "out", tmp_path / "state"
    argv = coordinator_argv(
        scenario,
        kits / "coordinator",
        address,
        state,
        out,
        "--exit-when-done",
        "--metrics-listen",
        "off",
    )
    first_log = tmp_path / "coordinator-1.log"
    first = start(watch, first_log, argv, cwd=tmp_path)
    first_tree = ServiceTree(first.pid, "the first fed-coordinator")
    wait_until(
        lambda: READY_MARK in text(first_log) or first.poll() is not None,
        180,
        "the coordinator's SuperLink",
        first_log,
    )
    assert first.poll() is None, text(first_log)
    site_logs = {s: tmp_path / f"fed-client-{s}.log" for s in sites}
    clients = {
        s: start(watch, site_logs[s], client_argv(sites[s], kits / s, address), cwd=tmp_path)
        for s in sites
    }
    site_pids = {s: c.pid for s, c in clients.items()}

    # mid-round: round 1 is complete (audited, the last thing a round writes), the run goes on
    wait_until(
        lambda: bool(_completed_rounds(out)) or first.poll() is not None,
        600,
        "round 1 to complete",
        first_log,
        *site_logs.values(),
    )
    assert first.poll() is None, _logs(first_log, *site_logs.values())
    _kill9(first, first_tree)
    done_before = _completed_rounds(out)
    assert done_before and done_before[-1] < rounds, f"killed too late: {done_before}"
    _assert_gone(first_tree, {SUPERLINK})

    # the sites' services are untouched by the coordinator's death and wait for it
    for site, client in clients.items():
        assert client.poll() is None, f"fed-client {site} exited:\n{text(site_logs[site])}"

    # the same command again, as an operator (or systemd) restarts it
    second_log = tmp_path / "coordinator-2.log"
    second = start(watch, second_log, argv, cwd=tmp_path)
    second_tree = ServiceTree(second.pid, "the second fed-coordinator")
    # the sites' services reconnect by themselves (they are not restarted)
    wait_until(
        lambda: (
            "sites connected: 2/2" in text(second_log)
            or second.poll() is not None
            or any(c.poll() is not None for c in clients.values())
        ),
        300,
        "the sites to reconnect to the restarted coordinator",
        second_log,
        *site_logs.values(),
    )
    for site, client in clients.items():
        assert client.poll() is None, (
            f"fed-client {site} exited (code {client.poll()}) instead of reconnecting to the "
            f"restarted coordinator:\n{text(site_logs[site])[-3000:]}"
        )
    try:
        code = second.wait(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("the restarted coordinator did not finish in 600 s\n" + _logs(second_log))
    assert code == 0, _logs(second_log, *site_logs.values())
    _assert_gone(second_tree, {SUPERLINK})

    # it resumed after the last completed round: no round was run twice
    entries = audit_entries(out)
    started = [e for e in entries if e["event"] == "run_started"]
    assert len(started) == 2, started
    assert "resumed_after_round" not in started[0]
    # a round is audited once the next round's train batch brought its evaluation: the
    # checkpoint may hold one more round (trained, not yet evaluated) than the audit shows
    resumed_after = started[1]["resumed_after_round"]
    assert done_before[-1] <= resumed_after <= done_before[-1] + 1, (started[1], done_before)
    assert started[1]["run_key"] == started[0]["run_key"]
    assert _completed_rounds(out) == list(range(1, rounds + 1))
    finished = [e for e in entries if e["event"] == "run_finished"]
    # The killed service's ServerApp may still log its end: the guard stops what is left
    # of the tree with SIGTERM first, and the ServerApp records "interrupted" if it gets
    # the chance, before the second run started. Only the second run completed.
    assert [e["status"] for e in finished] in (["completed"], ["interrupted", "completed"]), (
        finished
    )
    if len(finished) == 2:
        assert finished[0]["seq"] < started[1]["seq"], entries
    federation = json.loads((out / "federation.json").read_text())
    assert federation["status"] == "completed"
    assert [r["round"] for r in federation["rounds"]] == list(range(1, rounds + 1))
    assert [r["round"] for r in rounds_of(out)] == list(range(1, rounds + 1))

    # the same two fed-client processes served the rounds after the restart
    for rnd in federation["rounds"]:
        assert sorted(rnd["sites"]) == sorted(sites), rnd
    for site, client in clients.items():
        assert client.poll() is None and client.pid == site_pids[site], text(site_logs[site])

    # the model is bit for bit the one an uninterrupted run trains (in-process engine, same seed)
    reference = _inprocess_reference(tmp_path / "reference", scenario, kits)
    _assert_same_model(out / "model.safetensors", reference / "model.safetensors")
    ref_rounds = json.loads((reference / "federation.json").read_text())["rounds"]
    assert [r["loss"] for r in federation["rounds"]] == [r["loss"] for r in ref_rounds]

    # the sites' services stop cleanly and leave nothing behind
    client_trees = {s: ServiceTree(c.pid, f"fed-client {s}") for s, c in clients.items()}
    for site, client in clients.items():
        assert stop(client) == 130, text(site_logs[site])
    for tree in client_trees.values():
        assert tree.left_running(ORPHAN_BOUND) == []
    assert watch.survivors() == []


def _inprocess_reference(root: Path, scenario_path: Path, kits: Path) -> Path:
    """The uninterrupted run: the in-process engine on the same scenario and kits."""
    from clients.app import make_client_app
    from coordinator.app import make_server_app
    from fedcore.engines.inprocess import run_inprocess

    scenario = load_scenario(scenario_path)
    site_configs = write_site_configs(scenario, root)
    out = root / "out"
    run_inprocess(
        make_server_app(),
        make_client_app(),
        run_config={
            "scenario": str(scenario_path),
            "out-dir": str(out),
            "rounds": 0,
            "wait-sites": 10.0,
            "kit": str(kits / "coordinator"),
        },
        node_configs={
            s: {"site-config": str(p), "kit": str(kits / s)} for s, p in site_configs.items()
        },
    )
    return out


def _assert_same_model(path: Path, reference: Path) -> None:
    from safetensors.numpy import load_file

    model, expected = load_file(str(path)), load_file(str(reference))
    assert model.keys() == expected.keys()
    for name in expected:
        assert model[name].dtype == expected[name].dtype, name
        assert np.array_equal(model[name], expected[name]), (
            f"{name}: differs by up to {np.abs(model[name] - expected[name]).max():.3g}"
        )


# --------------------------------------------------------------------------- fed-client


@pytest.mark.slow
def test_killed_site_is_recorded_absent_and_rejoins_when_restarted(
    tmp_path: Path, kits: Path, watch: ProcessWatch
) -> None:
    # rounds to spare (a few seconds each): the test stops the coordinator once the site is back
    scenario, sites = write_scenario(tmp_path, sites=3, rounds=40, min_sites=2, round_timeout=30)
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    out = tmp_path / "out"
    coordinator_log = tmp_path / "coordinator.log"
    coordinator = start(
        watch,
        coordinator_log,
        coordinator_argv(
            scenario,
            kits / "coordinator",
            address,
            tmp_path / "state",
            out,
            "--exit-when-done",
            "--metrics-listen",
            "off",
        ),
        cwd=tmp_path,
    )
    wait_until(
        lambda: READY_MARK in text(coordinator_log) or coordinator.poll() is not None,
        180,
        "the coordinator's SuperLink",
        coordinator_log,
    )
    site_logs = {s: tmp_path / f"fed-client-{s}.log" for s in sites}
    clients = {
        s: start(watch, site_logs[s], client_argv(sites[s], kits / s, address), cwd=tmp_path)
        for s in sites
    }
    victim = "bank-c"
    victim_tree = ServiceTree(clients[victim].pid, f"fed-client {victim}")
    logs = (coordinator_log, *site_logs.values())

    def round_recorded(predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [r for r in rounds_of(out) if predicate(r)]
            return bool(found) or coordinator.poll() is not None

        wait_until(check, 600, what, *logs)
        assert found, f"the coordinator exited ({coordinator.poll()}) before {what}\n" + _logs(
            *logs
        )
        return found[0]

    first = round_recorded(lambda r: True, "round 1")
    assert sorted(first["sites"]) == SITES, first
    # the newest round recorded when the kill lands (rounds take a few seconds: the test may
    # see round 1 late, and more rounds may be recorded by then)
    seen = max(r["round"] for r in rounds_of(out))
    _kill9(clients[victim], victim_tree)
    _assert_gone(victim_tree, {SUPERNODE})

    # the round in flight completes with the others, and says why bank-c is not in it. A
    # round is recorded once the next round's train batch brought its evaluation, so when
    # round `seen` is recorded round seen + 1 has trained and seen + 2 is in flight (or
    # about to be; the kill itself takes a moment, so seen + 3 at the latest)
    absent = round_recorded(
        lambda r: r["round"] > seen and victim not in r["sites"],
        f"a round without {victim}",
    )
    killed_in = absent["round"]
    assert killed_in <= seen + 3, (seen, absent)
    assert sorted(absent["sites"]) == ["bank-a", "bank-b"], absent
    assert absent["rejected"].get(victim), absent["rejected"]
    after = round_recorded(lambda r: r["round"] == killed_in + 1, f"round {killed_in + 1}")
    assert victim not in after["sites"] and after["rejected"].get(victim), after
    for reason in [*absent["rejected"][victim], *after["rejected"][victim]]:
        assert isinstance(reason, str) and reason.strip(), absent["rejected"]

    # the same command brings the site back into a later round
    restarted_log = tmp_path / f"fed-client-{victim}-restarted.log"
    restarted = start(
        watch, restarted_log, client_argv(sites[victim], kits / victim, address), cwd=tmp_path
    )
    back = round_recorded(
        lambda r: r["round"] > killed_in + 1 and victim in r["sites"],
        f"{victim} in a round's sites again",
    )
    assert sorted(back["sites"]) == SITES, back
    assert restarted.poll() is None, text(restarted_log)

    # a normal stop of everything leaves nothing behind
    trees = [ServiceTree(coordinator.pid, "fed-coordinator")] + [
        ServiceTree(p.pid, f"fed-client {s}")
        for s, p in [*clients.items(), (victim, restarted)]
        if p.poll() is None
    ]
    for popen in [coordinator, restarted, clients["bank-a"], clients["bank-b"]]:
        assert stop(popen) in (0, 130), _logs(*logs, restarted_log)
    for tree in trees:
        left = tree.left_running(ORPHAN_BOUND)
        assert left == [], f"{tree.name}:\n{ps_report(left)}"
    assert watch.survivors() == []


# --------------------------------------------------------------------------- fedcore run


def _fedcore(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "fedcore"
    return [str(script), *args] if script.is_file() else module("fedcore.cli.main", *args)


@pytest.mark.slow
def test_rerun_right_after_the_serverapp_was_killed_completes(
    tmp_path: Path, watch: ProcessWatch
) -> None:
    # once seen: the rerun found 0 sites ("Node Unavailable"; the SuperLink refused to
    # register the SuperNodes ten times with ApiError 2004) and only worked two minutes later
    # rounds to spare: a round is audited once the next one trained, and the ServerApp must
    # still be running when the test kills it
    scenario, _ = write_scenario(tmp_path, sites=2, rounds=5, round_timeout=120)
    out = tmp_path / "out"
    argv = _fedcore("run", str(scenario), "--engine", "deployment", "--out", str(out))
    first_log = tmp_path / "run-1.log"
    first = start(watch, first_log, argv, cwd=tmp_path)
    run_tree = ServiceTree(first.pid, "the first fedcore run")
    wait_until(
        lambda: bool(_completed_rounds(out)) or first.poll() is not None,
        600,
        "round 1 to complete",
        first_log,
    )
    assert first.poll() is None, text(first_log)
    run_tree.sample()
    serverapps = [
        row
        for row in ps()
        if row.pid in run_tree.rows and "flwr-serverapp" in row.args and not row.zombie
    ]
    assert len(serverapps) == 1, ps_report(serverapps)
    done_before = _completed_rounds(out)
    os.kill(serverapps[0].pid, signal.SIGKILL)
    try:
        code = first.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the run went on after its ServerApp was killed\n" + text(first_log))
    assert code == 1, text(first_log)
    assert "federation failed" in text(first_log)
    # the launcher stopped every process of the failed run
    _assert_gone(run_tree, {SUPERLINK, SUPERNODE, "flwr-serverapp"})

    logs = out / "logs"
    offsets = {p.name: p.stat().st_size for p in logs.glob("*.log")}
    second_log = tmp_path / "run-2.log"
    second = start(watch, second_log, argv, cwd=tmp_path)
    second_tree = ServiceTree(second.pid, "the second fedcore run")
    try:
        code = second.wait(timeout=480)
    except subprocess.TimeoutExpired:
        pytest.fail("the rerun did not finish in 480 s\n" + _rerun_logs(logs, offsets))
    assert code == 0, text(second_log) + _rerun_logs(logs, offsets)
    summary = json.loads((out / "summary.json").read_text())
    assert summary, summary
    federation = json.loads((out / "federation.json").read_text())
    assert federation["status"] == "completed"
    assert [sorted(r["sites"]) for r in federation["rounds"]] == [["bank-a", "bank-b"]] * 5
    # it resumed after the round it had saved, and nothing refused the sites
    started = [e for e in audit_entries(out) if e["event"] == "run_started"]
    # (the checkpoint may hold one round more than the audit: trained, not yet evaluated)
    resumed_after = started[-1].get("resumed_after_round")
    assert done_before[-1] <= resumed_after <= done_before[-1] + 1, (started, done_before)
    rerun = _rerun_logs(logs, offsets)
    # Flower's error code 2004 as a word: message ids are hex and may hold those digits
    refusals = _refusals(rerun)
    assert not re.search(r"\b2004\b", rerun) and not refusals, refusals or rerun
    _assert_gone(second_tree, {SUPERLINK, SUPERNODE})
    assert watch.survivors() == []


def _refusals(rerun: str) -> list[str]:
    """Lines where something refused the sites, up to each log's last answered message.

    A ClientApp worker whose SuperNode stops at the end of the run retries the socket
    once or twice ("Connection refused"): that is the shutdown, not a refusal.
    """
    found = []
    for part in rerun.split("\n--- "):
        lines = part.splitlines()
        answered = [i for i, line in enumerate(lines) if " answered [" in line]
        last = answered[-1] if answered and "clientapp-worker" in lines[0] else len(lines)
        found += [line for line in lines[:last] if "refused" in line.lower()]
    return found


def _rerun_logs(logs: Path, offsets: dict[str, int]) -> str:
    """What the rerun appended to each log in ``OUT/logs``."""
    parts = []
    for path in sorted(logs.glob("*.log")):
        with path.open("rb") as fh:
            fh.seek(offsets.get(path.name, 0))
            parts.append(f"--- {path.name}\n{fh.read().decode(errors='replace')[-3000:]}")
    return "\n".join(parts)


def test_ps_parsing_sees_this_process() -> None:
    me = next(row for row in ps() if row.pid == os.getpid())
    assert me.ppid == os.getppid() and me.pgid == os.getpgid(0)
    assert "pytest" in me.args or "python" in me.args
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = ServiceTree(os.getpid(), "pytest")
        time.sleep(0.1)
        tree.sample()
        assert child.pid in tree.rows
        child.kill()
        child.wait(timeout=10)
        assert all(row.pid != child.pid for row in tree.left_running(5))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


SERVICE = """
import sys, time
from pathlib import Path
from fedcore.engines.deployment.processes import ManagedProcess

# like Flower's SuperExec: the command starts a process in a session of its own, and that one
# ignores SIGTERM and SIGINT (as a flwr-serverapp stuck in its exit handler does)
STUB = '''
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "print('grandchild ' + 'ready', flush=True); time.sleep(300)"],
                 start_new_session=True)
time.sleep(300)
'''
ManagedProcess.start("stub", [sys.executable, "-c", STUB], log_path=Path(sys.argv[1]))
time.sleep(300)
"""


def test_service_killed_by_sigkill_leaves_no_descendant(
    tmp_path: Path, watch: ProcessWatch
) -> None:
    """A service that dies by kill -9 takes the whole tree it started with it, within seconds."""
    log = tmp_path / "stub.log"
    service = start(
        watch, tmp_path / "service.log", [sys.executable, "-c", SERVICE, str(log)], cwd=tmp_path
    )
    tree = ServiceTree(service.pid, "the service")
    wait_until(
        lambda: "grandchild ready" in text(log) or service.poll() is not None,
        60,
        "the stub's grandchild",
        tmp_path / "service.log",
        log,
    )
    tree.sample()
    assert any("grandchild" in a for args in tree.rows.values() for a in args), tree.rows
    _kill9(service, tree)
    t0 = time.monotonic()
    left = tree.left_running(30)
    assert left == [], ps_report(left)
    assert time.monotonic() - t0 < 20
