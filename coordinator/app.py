"""The coordinator's Flower ``ServerApp``: loads the scenario and runs the round driver."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.driver import RoundDriver, RoundObserver
from fedcore.config import Scenario, load_scenario
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


def make_server_app(observer: RoundObserver | None = None) -> ServerApp:
    """Build the coordinator ServerApp.

    It reads from the run config: ``scenario`` (path of the scenario YAML),
    ``out-dir`` (run directory), ``rounds`` (0 = the scenario's),
    ``wait-sites`` (seconds to wait for sites to connect) and ``kit`` (the coordinator
    kit directory: registered node keys and the public CKKS context; empty: none).

    Args:
        observer: Called with each finished round's record (progress display).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        scenario_path = run_config_value(context, "scenario")
        if not scenario_path:
            raise ValueError("run config lacks 'scenario' (path of the scenario YAML)")
        scenario = load_scenario(Path(str(scenario_path)), check_files=False)
        out = Path(str(run_config_value(context, "out-dir", "fedcore-run")))
        rounds = int(run_config_value(context, "rounds", 0)) or None
        wait = float(run_config_value(context, "wait-sites", 120.0))
        keys, ckks_context = load_coordinator_kit(run_config_value(context, "kit"))
        driver = RoundDriver(
            grid,
            scenario,
            build_selector(scenario),
            out,
            initial_arrays(scenario),
            rounds=rounds,
            observer=observer,
            wait_for_sites=wait,
            registered_keys=keys,
            ckks_context=ckks_context,
        )
        driver.run()

    return app
