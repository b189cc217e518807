"""Watching the federation: waiting for the sites to connect, then following the run's rounds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcore.config import Scenario
from fedcore.engines.deployment.errors import DeploymentError, Event, OnEvent
from fedcore.engines.deployment.flower_cli import ControlApi
from fedcore.engines.deployment.processes import ManagedProcess
from fedcore.engines.deployment.progress import RoundsTail, with_tail

logger = logging.getLogger(__name__)

OnRound = Callable[[dict[str, Any]], None]
"""Receives each round record (a row of ``OUT/rounds.jsonl``) as it is appended."""


def _wait_for_sites(
    control: ControlApi,
    superlink: ManagedProcess,
    scenario: Scenario,
    address: str,
    timeout: float,
    emit: OnEvent,
    insecure: bool,
    on_online: Callable[[int], None] = lambda _: None,
) -> int:
    expected = len(scenario.sites)
    site_ids = {site.id for site in scenario.sites}
    minimum = scenario.scheduler.min_sites
    start = time.monotonic()
    shown: list[str] | None = None
    online: list[str] = []
    while True:
        if superlink.poll() is not None:
            raise DeploymentError(
                with_tail(f"the SuperLink exited with code {superlink.poll()}", superlink.log_path)
            )
        try:
            online = control.online_nodes()
        except Exception as exc:
            logger.debug("ListNodes failed: %s", exc)
            online = shown or []
        if not insecure:  # registered nodes carry their site id: count the scenario's only
            online = [name for name in online if name in site_ids]
        if online != shown:
            names = f" ({', '.join(online)})" if online else ""
            emit(Event(f"  sites connected: {len(online)}/{expected}{names}"))
            on_online(len(online))
            shown = online
        if len(online) >= expected:
            return len(online)
        waited = time.monotonic() - start
        if waited > timeout:
            if len(online) >= minimum:
                emit(
                    Event(
                        f"only {len(online)} of {expected} sites connected after "
                        f"{waited:.0f} s; starting anyway (scheduler.min_sites is {minimum})",
                        "notice",
                    )
                )
                return len(online)
            how = (
                f"--coordinator {address} --insecure"
                if insecure
                else f"--coordinator HOST:{address.rsplit(':', 1)[1]} --kit SITE-KIT"
            )
            raise DeploymentError(
                f"only {len(online)} of {expected} sites connected within {timeout:.0f} s, and "
                f"the scenario needs at least scheduler.min_sites={minimum}. Start `fed-client "
                f"start --site SITE.yaml {how}` on each site (a site refused by this coordinator "
                "says why in its own output), or raise --site-timeout"
            )
        time.sleep(0.5)


def _watch_run(
    control: ControlApi,
    run_id: int,
    superlink: ManagedProcess,
    out_dir: Path,
    on_round: OnRound,
) -> tuple[str, str, str]:
    """Report each finished round until the run finishes; return its final status."""
    tail = RoundsTail(out_dir / "rounds.jsonl")
    failures = 0
    last: tuple[str, str, str] = ("pending", "", "")
    while True:
        for row in tail.read_new():
            on_round(row)
        if superlink.poll() is not None:
            raise DeploymentError(
                with_tail(
                    f"the SuperLink exited with code {superlink.poll()} during run {run_id}",
                    superlink.log_path,
                )
            )
        superlink.refresh()
        try:
            status = control.run_status(run_id)
            failures = 0
        except Exception as exc:
            failures += 1
            logger.debug("ListRuns failed (%d in a row): %s", failures, exc)
            if failures >= 30:
                raise DeploymentError(
                    with_tail(f"the SuperLink stopped answering: {exc}", superlink.log_path)
                ) from exc
            status = last
        if status[0] != last[0]:
            logger.info("run %d: %s", run_id, status[0])
        last = status
        if status[0] == "finished":
            for row in tail.read_new():
                on_round(row)
            return status
        time.sleep(1.0)
