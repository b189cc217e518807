"""The Flower internals behind fedcore's long-lived ClientApp worker and the SuperNode's shorter waits.

These tests fail loudly when Flower moves what :mod:`fedcore.engines.deployment.flower_runtime`
leans on: read the failure, then re-read that Flower release's ``supernode/`` and
``supercore/superexec/`` sources before widening ``SUPPORTED_FLOWER`` or the Flower pin.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from fedcore.engines.deployment import flower_runtime as fr
from tests.fedcore.engines.test_deployment import (
    ProcessWatch,
    _text,
    kits_for,
    provision_kits,
    write_scenario,
)


def test_flower_internals_are_where_the_worker_expects_them() -> None:
    problems = fr.internals_problems()
    assert problems == [], (
        "Flower's internals moved; fedcore's sites would fall back to one ClientApp process "
        "per message:\n  " + "\n  ".join(problems)
    )


def test_the_worker_serves_fedcores_app_only() -> None:
    # The id fed-coordinator's bundle gets from fedcore/cli/flowerapp/pyproject.toml.
    import tomllib

    from fedcore.engines.deployment.flower_cli import APP_DIR

    project = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    publisher = project["tool"]["flwr"]["app"]["publisher"]
    assert fr.FEDCORE_FAB_ID == f"{publisher}/{project['project']['name']}"


def test_another_flower_release_leaves_the_supernode_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal as sci

    monkeypatch.setattr(fr, "flower_version", lambda: "9.0.0")
    problems = fr.internals_problems()
    assert any("Flower 9.0.0 is installed" in p for p in problems)
    assert fr.patch_supernode_waits() is False
    assert sci.time is time


def test_short_waits_replace_only_the_supernode_loops_sleeps() -> None:
    # In a child process: the patch changes a module of the interpreter it runs in.
    code = textwrap.dedent(
        """
        import time
        from fedcore.engines.deployment import flower_runtime as fr
        assert fr.patch_supernode_waits(idle=0.05, reply=0.01)
        from flwr.supernode import start_client_internal as sci
        t = time.monotonic(); sci.time.sleep(3); idle = time.monotonic() - t
        t = time.monotonic(); sci.time.sleep(0.5); reply = time.monotonic() - t
        t = time.monotonic(); sci.time.sleep(0.2); other = time.monotonic() - t
        assert sci.time.monotonic() > 0 and sci.time.time() > 0
        print(f"{idle:.3f} {reply:.3f} {other:.3f}")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    idle, reply, other = map(float, done.stdout.split())
    assert idle < 1.0 and reply < 0.3  # 3 s and 0.5 s in stock Flower
    assert other >= 0.19  # any other sleep keeps its length


def test_a_resting_supernode_polls_slowly_until_a_message_comes() -> None:
    waits = fr._ShortWaits(idle=0.01, reply=0.01, resting=0.3)
    waits.busy_at -= fr.BUSY_FOR_S + 1  # no message for longer than the busy window

    def took(seconds: float) -> float:
        t = time.monotonic()
        waits.sleep(seconds)
        return time.monotonic() - t

    assert took(3) >= 0.29  # resting: cheap polling between runs
    assert took(0.5) < 0.2  # waiting for a reply: a message is being served ...
    assert took(3) < 0.2  # ... so the next idle wait is short again


class _Pulled:
    def __init__(self, run_id: int, state: str) -> None:
        self.run_id = run_id
        self.node_config = {"site-config": f"/sites/{run_id}.yaml"}
        self.run_config = {"rounds": run_id}
        self.state = state


def test_a_run_keeps_one_context_and_the_supernodes_state() -> None:
    worker = fr.ClientAppWorker.__new__(fr.ClientAppWorker)
    worker._contexts = {}
    first = worker._context(_Pulled(7, "state after stage 0"))
    again = worker._context(_Pulled(7, "state after stage 1"))
    # the same object (the app keeps the site's runtime per context) ...
    assert again is first
    # ... with the SuperNode's copy of the state, which SecAgg+'s stages rely on
    assert again.state == "state after stage 1"
    other: Any = worker._context(_Pulled(8, "new run"))
    assert other is not first and list(worker._contexts) == [8]  # the old run is let go


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_serves_again(tmp_path: Path, watch: ProcessWatch) -> None:
    from fedcore.engines.deployment import run_deployment

    # round 1's record is published once its evaluation, riding on round 2's batch, is in:
    # the kill may land as late as round 3, so a fourth round leaves the restarted worker
    # (a fresh process that loads torch and the site's data) a whole round to rejoin
    scenario, sites = write_scenario(tmp_path, rounds=4, min_sites=1, round_timeout=90)
    kits = provision_kits(tmp_path / "kits", list(sites))
    out = tmp_path / "out"
    worker_log = out / "logs" / "clientapp-worker-bank-b.log"
    killed: list[int] = []

    def kill_worker_after_first_round(record: dict[str, Any]) -> None:
        if record["round"] != 1:
            return
        watch.sample()
        for key, proc in list(watch.seen.items()):
            cmd = watch.commands.get(key, "")
            if "flower_runtime worker" in cmd and _serves_bank_b(cmd, out):
                proc.kill()
                killed.append(proc.pid)

    result = run_deployment(
        scenario,
        out,
        rounds=None,
        site_configs=sites,
        security=kits_for(kits, sites),
        on_round=kill_worker_after_first_round,
        timeout=600,
    )
    assert killed, "bank-b's worker was never found"
    assert result["status"] == "completed", result
    client_log = _text(out / "logs" / "fed-client-bank-b.log")
    assert "ClientApp worker exited with code -9; restarting it" in client_log
    text = _text(worker_log)
    assert text.count("ClientApp worker serving") == 2
    assert "answered" in text.split("ClientApp worker serving")[-1]  # the new one served
    # the site is back: it trained in the last round
    assert "bank-b" in result["rounds"][-1]["sites"]
    assert watch.survivors() == []


def _serves_bank_b(cmd: str, out: Path) -> bool:
    """Whether a worker's command line names the Runtime API of bank-b's SuperNode."""
    log = _text(out / "logs" / "fed-client-bank-b.log")
    port = cmd.rsplit(":", 1)[-1]
    return f"Runtime API 127.0.0.1:{port}" in log
