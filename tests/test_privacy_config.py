"""Privacy settings that cannot deliver what they claim are refused before any round runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcore.cli.main import app

SITES = """
sites:
  - {id: a, data: {kind: generated}}
  - {id: b, data: {kind: generated}}
"""


def validate(tmp_path: Path, privacy: str) -> tuple[int, str]:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: p\nprivacy: {privacy}\n{SITES}")
    res = CliRunner().invoke(app, ["validate", str(path)])
    return res.exit_code, " ".join(res.output.split())


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        (
            "{mode: plaintext, dp: {noise_multiplier: 0, clip_norm: 1.0}}",
            "without noise there is no differential privacy",
        ),
        (
            "{mode: ckks, dp: {noise_multiplier: -1, clip_norm: 1.0}}",
            "without noise there is no differential privacy",
        ),
        ("{mode: ckks, dp: {noise_multiplier: 1.0, clip_norm: 0}}", "privacy.dp.clip_norm"),
        ("{mode: ckks, dp: {noise_multiplier: 1.0}}", "privacy.dp.clip_norm"),
        (
            "{mode: ckks, ckks: {clip: 0.001, values_per_slot: 8}, dp: {noise_multiplier: 5.0, clip_norm: 10.0}}",
            "cannot pack 8 values per slot",
        ),
        ("{mode: ckks, ckks: {coeff_mod_bit_sizes: [60, 70]}}", "must be in 20..60"),
        (
            "{mode: secagg+, secagg: {num_shares: 2, reconstruction_threshold: 3}}",
            "cannot exceed num_shares",
        ),
        (
            "{mode: secagg+, secagg: {num_shares: 3, reconstruction_threshold: 2}}",
            "needs more sites (2) than reconstruction_threshold (2)",
        ),
        ("{mode: homomorphic}", "privacy.mode"),
    ],
)
def test_unusable_privacy_settings_are_refused(tmp_path: Path, privacy: str, message: str) -> None:
    code, out = validate(tmp_path, privacy)
    assert code == 2, out
    assert message in out


@pytest.mark.parametrize(
    "privacy",
    [
        "{mode: ckks}",
        "{mode: ckks, ckks: {packing: false}, dp: {noise_multiplier: 1.0, clip_norm: 1.0}}",
        "{mode: plaintext}",
    ],
)
def test_usable_privacy_settings_pass(tmp_path: Path, privacy: str) -> None:
    code, out = validate(tmp_path, privacy)
    assert code == 0, out
    assert "privacy promise:" in out
    if "ckks" in privacy:
        assert "without a secret key" in out
    if "dp:" in privacy:
        assert "(epsilon, delta)-DP" in out
