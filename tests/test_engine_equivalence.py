"""The in-process and the deployment engine train the same model from the same scenario.

The deployment run is the production path: TLS and SuperNode authentication from
provisioned kits, CKKS-encrypted updates, a fresh ClientApp process per message (each
site keeps its decrypted model copy on disk between them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedcore.cli.runner import RunKits, provision_run_kits, write_site_configs
from fedcore.config import load_scenario

pytestmark = pytest.mark.slow


def _scenario(root: Path) -> tuple[Path, dict[str, Path], dict[str, Path], RunKits]:
    """2 sites x 300 generated transactions, 2 rounds of 1 local epoch, CKKS."""
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
                "privacy": {"mode": "ckks", "ckks": {"poly_modulus_degree": 4096, "clip": 0.05}},
                "engine": {"round_timeout": 300},
            },
            sort_keys=False,
        )
    )
    scenario = load_scenario(path)
    kits = provision_run_kits(scenario, root)  # one consortium, the same keys on both engines
    return (
        path,
        write_site_configs(scenario, root / "a"),
        write_site_configs(scenario, root / "b"),
        kits,
    )


def _site_model(out: Path, sites_root: Path, site: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    key = json.loads((out / "federation.json").read_text())["run_key"]
    return dict(load_file(str(sites_root / "sites" / site / "global" / key / "model.safetensors")))


def _losses(result: dict[str, Any]) -> np.ndarray:
    return np.array(
        [[r["loss"], r.get("eval_loss", np.nan)] for r in result["rounds"]], dtype=np.float64
    )


def test_inprocess_and_deployment_give_the_same_model(tmp_path: Path) -> None:
    coordinator_app = pytest.importorskip("coordinator.app")
    clients_app = pytest.importorskip("clients.app")
    inprocess = pytest.importorskip("fedcore.engines.inprocess")

    from fedcore.engines.deployment import DeploymentSecurity, run_deployment

    scenario, sites_a, sites_b, kits = _scenario(tmp_path)

    out_a = tmp_path / "inprocess"
    inprocess.run_inprocess(
        coordinator_app.make_server_app(),
        clients_app.make_client_app(),
        run_config={
            "scenario": str(scenario),
            "out-dir": str(out_a),
            "rounds": 0,
            "wait-sites": 10.0,
            "kit": str(kits.coordinator),
        },
        node_configs={
            site_id: {"site-config": str(p), "kit": str(kits.sites[site_id])}
            for site_id, p in sites_a.items()
        },
    )
    result_a = json.loads((out_a / "federation.json").read_text())

    out_b = tmp_path / "deployment"
    result_b = run_deployment(
        scenario,
        out_b,
        rounds=None,
        site_configs=sites_b,
        security=DeploymentSecurity(coordinator_kit=kits.coordinator, site_kits=kits.sites),
        timeout=900,
    )

    assert result_a["status"] == result_b["status"] == "completed"
    assert result_b["privacy"]["mode"] == "ckks" and result_b["privacy"]["authenticated"]
    assert [r["round"] for r in result_a["rounds"]] == [r["round"] for r in result_b["rounds"]]
    assert [sorted(r["sites"]) for r in result_a["rounds"]] == [
        sorted(r["sites"]) for r in result_b["rounds"]
    ]
    assert all(not r["rejected"] for r in result_b["rounds"]), result_b["rounds"]
    np.testing.assert_allclose(_losses(result_a), _losses(result_b), rtol=1e-5, atol=1e-6)

    # neither coordinator holds the model; every site holds the same decrypted copy
    assert not (out_a / "model.safetensors").exists() and not (out_b / "model.safetensors").exists()
    model_a = _site_model(out_a, tmp_path / "a", "bank-a")
    for site_root, out in ((tmp_path / "a", out_a), (tmp_path / "b", out_b)):
        for site in ("bank-a", "bank-b"):
            model = _site_model(out, site_root, site)
            assert model.keys() == model_a.keys()
            for name in model_a:
                assert np.allclose(model_a[name], model[name], atol=1e-5), (
                    f"{site} {name}: max difference {np.abs(model_a[name] - model[name]).max():.3g}"
                )
