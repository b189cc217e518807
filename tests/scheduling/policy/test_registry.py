"""Scale policies by name (``build_policy``), as a scenario or the coordinator names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scheduling.policy import POLICIES, build_policy
from scheduling.policy.dqn import DqnPolicy, QNetwork
from scheduling.policy.observation import OBSERVATION_SIZE
from scheduling.policy.rules import HoldPolicy, RulePolicy


def test_names() -> None:
    assert sorted(POLICIES) == ["dqn", "hold", "rules"]
    assert isinstance(build_policy("hold"), HoldPolicy)
    assert build_policy("rules") == RulePolicy()
    assert build_policy("rules", queue_low=0.2, active_low=0.4) == RulePolicy(
        queue_low=0.2, active_low=0.4
    )


def test_dqn_is_loaded_from_its_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = DqnPolicy(QNetwork(OBSERVATION_SIZE, 4, (8,))).save(tmp_path / "p.safetensors")
    policy = build_policy("dqn", path=saved)
    assert isinstance(policy, DqnPolicy)
    obs = np.full(OBSERVATION_SIZE, 0.5, dtype=np.float32)
    assert policy.act(obs) == DqnPolicy.load(saved).act(obs)
    with pytest.raises(FileNotFoundError, match="no policy file at"):
        build_policy("dqn", path=tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("lstm", {}, "unknown scale policy 'lstm'; valid: dqn, hold, rules"),
        (
            "dqn",
            {},
            "scale policy 'dqn': unknown parameter\\(s\\) none, missing \\['path'\\]; it takes: path, observation_size, actions",
        ),
        (
            "hold",
            {"period": 3},
            "scale policy 'hold': unknown parameter\\(s\\) \\['period'\\], missing none; it takes: no parameters",
        ),
        (
            "rules",
            {"queue_high": 0.3},
            "unknown parameter\\(s\\) \\['queue_high'\\].*it takes: straggler_high, spare_min",
        ),
        ("rules", {"queue_low": 3.0}, "RulePolicy.queue_low must be a number in \\[0, 1\\]"),
    ],
)
def test_bad_names_and_parameters(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_policy(name, **params)
