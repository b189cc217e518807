"""The scenario's aggregation section: defaults, and every combination a mode cannot honour refused by `fedcore validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcore.cli.main import app
from fedcore.config import AggregationSpec, load_scenario


def sites(n: int) -> str:
    return "sites:\n" + "".join(f"  - {{id: s{i}, data: {{kind: generated}}}}\n" for i in range(n))


def validate(tmp_path: Path, privacy: str, aggregation: str, n: int = 5) -> tuple[int, str]:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: a\nprivacy: {privacy}\naggregation: {aggregation}\n{sites(n)}")
    res = CliRunner().invoke(app, ["validate", str(path)])
    return res.exit_code, " ".join(res.output.split())


def test_defaults_leave_fedavg_with_capped_weights(tmp_path: Path) -> None:
    spec = AggregationSpec()
    assert (spec.rule, spec.weights, spec.weight_cap) == ("fedavg", "capped", 4.0)
    assert spec.norm_bound is None and spec.site_clip is None
    path = tmp_path / "s.yaml"
    path.write_text(f"name: a\n{sites(3)}")
    assert load_scenario(path).aggregation == spec


@pytest.mark.parametrize(
    ("privacy", "aggregation", "n", "message"),
    [
        (
            "{mode: ckks}",
            "{rule: median}",
            5,
            "aggregation.rule median needs each site's update in clear; privacy.mode ckks never "
            "shows one to the coordinator. Use rule fedavg with site_clip under ckks, or "
            "privacy.mode plaintext",
        ),
        ("{mode: secagg+}", "{rule: trimmed_mean}", 5, "privacy.mode secagg+ never shows one"),
        ("{mode: ckks}", "{rule: multi_krum}", 5, "aggregation.rule multi_krum needs each"),
        (
            "{mode: secagg+}",
            "{rule: multi_krum_memory}",
            5,
            "aggregation.rule multi_krum_memory needs each site's update in clear",
        ),
        (
            "{mode: plaintext}",
            "{rule: multi_krum_memory, byzantine: 1}",
            4,
            "multi_krum_memory with byzantine 1 needs more than 2 x 1 + 2 = 4 sites",
        ),
        (
            "{mode: secagg+}",
            "{norm_bound: {factor: 3.0}}",
            5,
            "aggregation.norm_bound learns from each site's update norm",
        ),
        (
            "{mode: plaintext}",
            "{rule: multi_krum, byzantine: 1}",
            4,
            "multi_krum with byzantine 1 needs more than 2 x 1 + 2 = 4 sites; the scenario lists 4",
        ),
        (
            "{mode: plaintext}",
            "{rule: multi_krum, byzantine: 2}",
            6,
            "Lower byzantine to at most 1",
        ),
        ("{mode: plaintext}", "{rule: multi_krum, byzantine: 0}", 5, "aggregation.byzantine is 0"),
        (
            "{mode: plaintext, dp: {noise_multiplier: 1.0, clip_norm: 1.0}}",
            "{rule: median}",
            5,
            "the reported epsilon would not hold",
        ),
        (
            "{mode: ckks, dp: {noise_multiplier: 1.0, clip_norm: 1.0}}",
            "{site_clip: 1.0}",
            5,
            "DP already clips every update to privacy.dp.clip_norm",
        ),
        ("{mode: plaintext}", "{trim_fraction: 0.5}", 5, "aggregation.trim_fraction"),
        ("{mode: plaintext}", "{weight_cap: 0.5}", 5, "aggregation.weight_cap"),
        ("{mode: plaintext}", "{norm_bound: {factor: 1.0}}", 5, "aggregation.norm_bound.factor"),
        ("{mode: plaintext}", "{site_clip: 0}", 5, "aggregation.site_clip"),
        ("{mode: plaintext}", "{rule: krum}", 5, "aggregation.rule"),
    ],
)
def test_validate_refuses_what_the_mode_cannot_honour(
    tmp_path: Path, privacy: str, aggregation: str, n: int, message: str
) -> None:
    code, out = validate(tmp_path, privacy, aggregation, n)
    assert code != 0
    assert message in out


@pytest.mark.parametrize(
    ("privacy", "aggregation"),
    [
        ("{mode: ckks}", "{site_clip: 1.0, weights: capped}"),
        ("{mode: secagg+}", "{site_clip: 0.5, weights: equal}"),
        ("{mode: plaintext}", "{rule: multi_krum, byzantine: 1, norm_bound: {factor: 3.0}}"),
        ("{mode: plaintext}", "{rule: trimmed_mean, trim_fraction: 0.2, site_clip: 2.0}"),
        (
            "{mode: plaintext, dp: {noise_multiplier: 1.0, clip_norm: 1.0}}",
            "{norm_bound: {factor: 3.0, window: 5}}",
        ),
    ],
)
def test_validate_accepts_what_the_mode_can_honour(
    tmp_path: Path, privacy: str, aggregation: str
) -> None:
    code, out = validate(tmp_path, privacy, aggregation)
    assert code == 0, out
