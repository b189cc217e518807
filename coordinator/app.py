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
    from fedcore.baselines import derive_seed
    from fedcore.data.graph import feature_dim
    from fedcore.models.fraud_gnn import build_model
    from fedcore.training import model_to_arrays, seed_everything

    seed_everything(derive_seed(scenario.seed, "init"))  # the baselines start from the same weights
    model = build_model(scenario.task, feature_dim(scenario.task))
    return model_to_arrays(model)


def run_config_value(context: Context, key: str, default: Any = None) -> Any:
    """A run-config value, or ``default`` when absent or empty."""
    value = context.run_config.get(key, default)
    return default if value in ("", None) else value


def make_server_app(observer: RoundObserver | None = None) -> ServerApp:
    """Build the coordinator ServerApp.

    It reads from the run config: ``scenario`` (path of the scenario YAML),
    ``out-dir`` (run directory), ``rounds`` (0 = the scenario's) and
    ``wait-sites`` (seconds to wait for sites to connect).

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
        driver = RoundDriver(
            grid,
            scenario,
            build_selector(scenario),
            out,
            initial_arrays(scenario),
            rounds=rounds,
            observer=observer,
            wait_for_sites=wait,
        )
        driver.run()

    return app
