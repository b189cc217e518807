"""Under CKKS the final model is a site's copy: the copies are compared by their arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fedcore.cli.runner import RunFailed, RunPlan, final_model_path
from fedcore.config import load_scenario

SCENARIO = """name: c
rounds: 1
sites:
  - {id: bank-a, data: {kind: generated}}
  - {id: bank-b, data: {kind: generated}}
scheduler: {min_sites: 2}
privacy: {mode: ckks}
"""


def plan_with_copies(
    tmp_path: Path, models: dict[str, tuple[dict[str, np.ndarray], dict[str, str]]]
) -> RunPlan:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "out"
    for sid, (arrays, meta) in models.items():
        folder = out / "sites" / sid / "global" / "rk"
        folder.mkdir(parents=True)
        save_file(arrays, str(folder / "model.safetensors"), metadata=meta)
    return RunPlan(path, load_scenario(path), out, "inprocess", 1)


def test_identical_arrays_with_metadata_in_another_order_are_one_model(tmp_path: Path) -> None:
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    plan = plan_with_copies(
        tmp_path,
        {
            "bank-a": (w, {"fedcore.round": "3", "fedcore.digest": "ab"}),
            "bank-b": (
                dict(reversed(list(w.items()))),
                {"fedcore.digest": "ab", "fedcore.round": "3"},
            ),
        },
    )
    sites = {"bank-a": tmp_path, "bank-b": tmp_path}
    assert final_model_path(plan, sites, "rk").name == "model.safetensors"


def test_copies_that_differ_in_one_value_are_refused(tmp_path: Path) -> None:
    w = {"w": np.zeros(4, np.float32)}
    v = {"w": np.array([0, 0, 0, 1e-7], np.float32)}
    plan = plan_with_copies(tmp_path, {"bank-a": (w, {}), "bank-b": (v, {})})
    with pytest.raises(RunFailed, match="sites hold different final models"):
        final_model_path(plan, {"bank-a": tmp_path, "bank-b": tmp_path}, "rk")
