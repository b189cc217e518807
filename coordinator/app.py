"""The coordinator's Flower ``ServerApp``: loads the scenario and runs the round driver."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.audit import AUDIT_FILE, AuditLog
from coordinator.driver import RoundDriver, RoundObserver
from coordinator.state import StateError
from fedcore import records as R
from fedcore.config import Scenario, load_scenario
from fedcore.engines.polling import FastPollGrid
from scheduling.registry import build_selector

log = logging.getLogger(__name__)


def initial_arrays(scenario: Scenario) -> dict[str, np.ndarray]:
    """The global model before round 1, seeded by the scenario's seed (same on every engine)."""
    from fedcore import tasks
    from fedcore.baselines import derive_seed
    from fedcore.training import model_to_arrays, seed_everything

    seed_everything(derive_seed(scenario.seed, "init"))  # the baselines start from the same weights
    model = tasks.build(scenario.task)
    return model_to_arrays(model)


def load_coordinator_kit(path: str | Path | None) -> tuple[dict[str, bytes] | None, Any]:
    """(registered node keys, public CKKS context) from the coordinator kit; (None, None) without one."""
    if not path:
        return None, None
    from secure import kitfiles
    from secure.ckks import context_from_bytes
    from secure.kit import load_kit, registered_nodes

    kit = load_kit(Path(str(path)), role="coordinator")
    ctx_file = Path(kit.path) / kitfiles.CKKS_PUBLIC
    ctx = (
        context_from_bytes(ctx_file.read_bytes(), expect_secret=False)
        if ctx_file.exists()
        else None
    )
    return registered_nodes(kit), ctx


def run_config_value(context: Context, key: str, default: Any = None) -> Any:
    """A run-config value, or ``default`` when absent or empty."""
    value = context.run_config.get(key, default)
    return default if value in ("", None) else value


def _file_sha256(path: Path) -> str | None:
    """SHA-256 (hex) of a file's bytes, or ``None`` when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def run_started_fields(
    scenario: Scenario, scenario_path: Path, out: Path, driver: RoundDriver
) -> dict[str, Any]:
    """What the audit log's ``run_started`` entry records about a run."""
    from importlib.metadata import PackageNotFoundError, version

    import fedcore

    try:
        flwr_version = version("flwr")
    except PackageNotFoundError:  # pragma: no cover - flwr is a dependency
        flwr_version = "unknown"
    fp = scenario.fingerprint()
    try:
        cp = driver.store.checkpoint(fp)
    except StateError:  # another scenario's state: the run itself says so
        cp = None
    fields: dict[str, Any] = {
        "scenario": scenario.name,
        "fingerprint": fp,
        "scenario_path": str(scenario_path.resolve()),
        "scenario_sha256": _file_sha256(scenario_path),
        "run_key": str(cp.extra.get("run_key") or driver.run_key) if cp else driver.run_key,
        "privacy_mode": scenario.privacy.mode,
        "dp": scenario.privacy.dp is not None,
        "authenticated": driver.verifier.enabled,
        "members": sorted(s.id for s in scenario.sites),
        "rounds": driver.rounds,
        "fedcore_version": fedcore.__version__,
        "flwr_version": flwr_version,
    }
    if cp is not None:
        fields["resumed_after_round"] = cp.round
    recovered = driver.store.recovered
    if recovered is not None:  # damaged newer rounds were skipped: the audit says which and why
        fields["state_recovered"] = recovered.message
    return fields


def make_server_app(observer: RoundObserver | None = None) -> ServerApp:
    """Build the coordinator ServerApp.

    It reads from the run config: ``scenario`` (path of the scenario YAML),
    ``out-dir`` (run directory), ``rounds`` (0 = the scenario's),
    ``wait-sites`` (seconds to wait for sites to connect) and ``kit`` (the coordinator
    kit directory: registered node keys and the public CKKS context; empty: none).

    Every run appends to the run directory's hash-chained audit log ``OUT/audit.jsonl``
    (:mod:`coordinator.audit`): ``run_started`` (scenario, its fingerprint and SHA-256, run key,
    privacy mode, versions), ``sites_joined`` and ``round_completed`` per round (sites accepted,
    sites rejected and why, privacy spent), and ``run_finished`` (status, also when it fails).
    A broken audit log stops the run before it starts.

    Args:
        observer: Called with each finished round's record (progress display), after the
            audit log has recorded it.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if type(grid).__module__.startswith("flwr."):  # Flower's own grid: a deployment run
            from fedcore.engines.deployment.flower_runtime import shorten_object_pulls

            shorten_object_pulls("serverapp")  # replies' arrays pulled after 0.02 s, not 1 s
        scenario_path = run_config_value(context, "scenario")
        if not scenario_path:
            raise ValueError("run config lacks 'scenario' (path of the scenario YAML)")
        scenario = load_scenario(Path(str(scenario_path)), check_files=False)
        out = Path(str(run_config_value(context, "out-dir", "fedcore-run")))
        rounds = int(run_config_value(context, "rounds", 0)) or None
        wait = float(run_config_value(context, "wait-sites", 120.0))
        keys, ckks_context = load_coordinator_kit(run_config_value(context, "kit"))
        audit = AuditLog(out / AUDIT_FILE)

        def observe(record: R.RoundRecord) -> None:
            audit.record_round(record)
            if observer is not None:
                observer(record)

        with audit:
            driver = RoundDriver(
                FastPollGrid(grid),  # SecAgg+ stages: replies pulled every 0.1 s, not 3 s
                scenario,
                build_selector(scenario),
                out,
                initial_arrays(scenario),
                rounds=rounds,
                observer=observe,
                wait_for_sites=wait,
                registered_keys=keys,
                ckks_context=ckks_context,
            )
            audit.append(
                "run_started", **run_started_fields(scenario, Path(str(scenario_path)), out, driver)
            )

            def finished(status: str, error: str | None) -> None:
                audit.append(
                    "run_finished",
                    status=status,
                    error=error,
                    rounds_completed=len(driver.history),
                    run_key=driver.run_key,
                    privacy=driver.privacy_summary(),
                )

            try:
                result = driver.run()
            except BaseException as exc:
                failed = "failed" if isinstance(exc, Exception) else "interrupted"
                finished(failed, str(exc) or type(exc).__name__)
                raise
            finished(result.get("status", "completed"), result.get("error"))

    return app
