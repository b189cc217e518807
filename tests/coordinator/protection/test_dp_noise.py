"""The DP wrapper's noise source and sensitivity per mode: OS entropy, the CKKS lane grid, the quantization term."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from coordinator.protection.ckks import Ckks
from coordinator.protection.dp import DifferentialPrivacy, GaussianNoise, quantization_of
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.secagg import SecAggPlus
from fedcore.config import DpSpec, Scenario, load_scenario
from secure.dp import DpAccountant, discrete_gaussian
from secure.packing import quantize_noise

MODEL = {"w": np.zeros((40, 25), np.float32), "b": np.zeros(100, np.float32)}  # 1,100 values
SITES = ("bank-a", "bank-b", "bank-c")
DP = "{noise_multiplier: 1.0, clip_norm: 0.05}"


def scenario(tmp_path: Path, privacy: str) -> Scenario:
    sites = "\n".join(f"  - {{id: {s}, data: {{kind: generated}}}}" for s in SITES)
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("name: p\nseed: 3\nrounds: 2\nscheduler: {min_sites: 2}\nsites:\n")
        + sites
        + f"\nprivacy: {privacy}\n"
    )
    return load_scenario(path)


def packed_ckks(tmp_path: Path) -> tuple[Ckks, DpSpec]:
    from secure.ckks import CkksParams, public_context

    sc = scenario(tmp_path, f"{{mode: ckks, ckks: {{poly_modulus_degree: 4096}}, dp: {DP}}}")
    ctx = public_context(CkksParams.from_spec(sc.privacy.ckks))
    assert sc.privacy.dp is not None
    return Ckks(sc.privacy, ctx, len(SITES), MODEL, tmp_path / "ckks"), sc.privacy.dp


def test_packed_ckks_noise_is_a_discrete_gaussian_on_the_lane_grid(tmp_path: Path) -> None:
    from secure.ckks import PackedCodec

    ckks, spec = packed_ckks(tmp_path)
    assert isinstance(ckks.codec, PackedCodec)
    dp = DifferentialPrivacy(ckks, spec, population_size=3, rng=np.random.default_rng(1))
    assert isinstance(dp.noise, GaussianNoise) and dp.noise.grid == ckks.codec.step
    noise = dp.noise.on_sum(ckks.length)
    # whole steps: the codec's own rounding (add_plain) gets back exactly the integers drawn
    lanes = noise / ckks.codec.step
    assert float(np.abs(lanes - np.rint(lanes)).max()) < 1e-9
    replay = DifferentialPrivacy(ckks, spec, population_size=3, rng=np.random.default_rng(1))
    drawn = discrete_gaussian(ckks.length, 0.05 / ckks.codec.step, np.random.default_rng(1))
    np.testing.assert_array_equal(quantize_noise(noise, ckks.codec.layout), drawn)
    np.testing.assert_array_equal(replay.noise.on_sum(ckks.length), noise)
    # std z * C = 0.05 over 1,100 values: within 6 * 0.05 / sqrt(2 * 1100) = 13%
    assert float(noise.std()) == pytest.approx(0.05, rel=0.13)


def test_packed_ckks_sensitivity_carries_the_quantization_term(tmp_path: Path) -> None:
    ckks, spec = packed_ckks(tmp_path)
    length, value_error, grid = quantization_of(ckks)
    assert (length, grid) == (1100, ckks.codec.step)
    assert value_error == ckks.codec.error_bound(1) >= ckks.codec.step / 2
    dp = DifferentialPrivacy(ckks, spec, population_size=3)
    assert dp.quantization == pytest.approx(math.sqrt(1100) * value_error)
    assert dp.accountant.quantization == dp.quantization > 0
    plain = DpAccountant(spec, population_size=3)
    assert dp.accountant.step(3) > plain.step(3)
    assert dp.summary()["sensitivity"] == pytest.approx(0.05 + dp.quantization)


def test_secagg_sensitivity_carries_its_rounding(tmp_path: Path) -> None:
    from secure.secagg import secagg_error_bound

    sc = scenario(tmp_path, f"{{mode: secagg+, dp: {DP}}}")
    assert sc.privacy.dp is not None
    dp = DifferentialPrivacy(SecAggPlus(sc.privacy, MODEL), sc.privacy.dp, population_size=3)
    one = sc.privacy.secagg.model_copy(update={"max_weight": 1})
    assert dp.quantization == pytest.approx(math.sqrt(1100) * secagg_error_bound(one, [1]))
    assert isinstance(dp.noise, GaussianNoise) and dp.noise.grid is None


def test_plaintext_has_no_quantization_term_and_unseeded_noise() -> None:
    spec = DpSpec(noise_multiplier=1.0, clip_norm=0.05)
    a = DifferentialPrivacy(Plaintext(MODEL), spec, population_size=3)
    b = DifferentialPrivacy(Plaintext(MODEL), spec, population_size=3)
    assert a.quantization == 0.0 and a.accountant.quantization == 0.0
    # the default source is the OS CSPRNG: two wrappers (and two rounds) never agree
    first = a.noise.on_mean(MODEL, 3)
    again = a.noise.on_mean(MODEL, 3)
    other = b.noise.on_mean(MODEL, 3)
    for k in MODEL:
        assert not np.array_equal(first[k], again[k])
        assert not np.array_equal(first[k], other[k])


def test_noise_grid_must_be_a_positive_step() -> None:
    with pytest.raises(ValueError, match="grid step"):
        GaussianNoise(DpSpec(noise_multiplier=1.0, clip_norm=0.05), grid=0.0)


def test_the_round_record_keeps_the_inner_protections_figures_beside_epsilon() -> None:
    """DP over a norm bound: the sites the bound clipped still reach the round record."""

    class Inner(Plaintext):
        def round_figures(self) -> dict[str, object]:
            return {"robust": {"rule": "fedavg", "clipped": ["bank-b"]}}

    dp = DifferentialPrivacy(Inner(MODEL), DpSpec(noise_multiplier=1.0, clip_norm=0.05), 3)
    assert dp.round_figures() == {"robust": {"rule": "fedavg", "clipped": ["bank-b"]}}
    dp._epsilon = 1.23456
    assert dp.round_figures() == {
        "robust": {"rule": "fedavg", "clipped": ["bank-b"]},
        "epsilon": 1.2346,
    }
