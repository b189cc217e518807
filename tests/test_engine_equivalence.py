"""The in-process and the deployment engine train the same model from the same scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedcore.cli.runner import write_site_configs
from fedcore.config import load_scenario

pytestmark = pytest.mark.slow


def _scenario(root: Path) -> tuple[Path, dict[str, Path]]:
    """2 sites x 300 generated transactions, 2 rounds of 1 local epoch."""
    path = root / "scenario.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-equivalence",
                "seed": 5,
                "rounds": 2,
                "sites": [
                    {"id": "bank-a", "data": {"kind": "generated", "transactions": 300}},
                    {"id": "bank-b", "data": {"kind": "generated", "transactions": 300}},
                ],
                "task": {"hidden": 8, "layers": 1},
                "training": {"local_epochs": 1},
                "scheduler": {"min_sites": 2},
                "engine": {"round_timeout": 300},
            },
            sort_keys=False,
        )
    )
    return path, write_site_configs(load_scenario(path), root)


def _losses(result: dict[str, Any]) -> np.ndarray:
    return np.array(
        [[r["loss"], r.get("eval_loss", np.nan)] for r in result["rounds"]], dtype=np.float64
    )


def test_inprocess_and_deployment_give_the_same_model(tmp_path: Path) -> None:
    coordinator_app = pytest.importorskip("coordinator.app")
    clients_app = pytest.importorskip("clients.app")
    inprocess = pytest.importorskip("fedcore.engines.inprocess")
    from safetensors.numpy import load_file

    from fedcore.engines.deployment import run_deployment

    scenario, sites = _scenario(tmp_path)

    out_a = tmp_path / "inprocess"
    inprocess.run_inprocess(
        coordinator_app.make_server_app(),
        clients_app.make_client_app(),
        run_config={
            "scenario": str(scenario),
            "out-dir": str(out_a),
            "rounds": 0,
            "wait-sites": 10.0,
        },
        node_configs={site_id: {"site-config": str(p)} for site_id, p in sites.items()},
    )
    result_a = json.loads((out_a / "federation.json").read_text())

    out_b = tmp_path / "deployment"
    result_b = run_deployment(scenario, out_b, rounds=None, site_configs=sites, timeout=900)

    assert result_a["status"] == result_b["status"] == "completed"
    assert [r["round"] for r in result_a["rounds"]] == [r["round"] for r in result_b["rounds"]]
    assert [sorted(r["sites"]) for r in result_a["rounds"]] == [
        sorted(r["sites"]) for r in result_b["rounds"]
    ]
    np.testing.assert_allclose(_losses(result_a), _losses(result_b), rtol=1e-5, atol=1e-6)

    model_a = load_file(str(out_a / "model.safetensors"))
    model_b = load_file(str(out_b / "model.safetensors"))
    assert model_a.keys() == model_b.keys()
    for name in model_a:
        assert model_a[name].shape == model_b[name].shape, name
        assert np.allclose(model_a[name], model_b[name], atol=1e-5), (
            f"{name}: max difference {np.abs(model_a[name] - model_b[name]).max():.3g}"
        )
