"""DP-FedAvg fixed clipping (McMahan et al., ICLR 2018) and its RDP accounting (Mironov 2017)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.supercore.differential_privacy import compute_stdv
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcore.config import DpSpec
from secure.dp import (
    ACCOUNTANT_NAME,
    DpAccountant,
    GeneratorEntropy,
    SystemEntropy,
    accounting_noise_multiplier,
    check_dp_settings,
    clip_update,
    describe,
    discrete_gaussian,
    gaussian_noise,
    global_l2_norm,
    noise_std,
    quantization_term,
    sensitivity,
    sum_noise_std,
)
from secure.packing import dequantize_sum, lane_layout, quantization_error_bound, quantize

# A short list of RDP orders keeps sampled (q < 1) compositions to milliseconds; with
# dp-accounting's default orders one sampled-without-replacement event costs about a second.
ORDERS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
DELTA = 1e-5


def spec(z: float = 1.0, c: float = 1.0, delta: float = DELTA) -> DpSpec:
    return DpSpec(noise_multiplier=z, clip_norm=c, delta=delta)


# --------------------------------------------------------------------------- clipping


def test_clip_above_bound_scales_to_exactly_the_bound() -> None:
    clipped, norm = clip_update(np.array([3.0, 4.0]), 1.0)  # ||(3, 4)|| = 5 -> factor 1/5
    assert norm == 5.0
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=1e-15)
    assert global_l2_norm(clipped) <= 1.0
    assert global_l2_norm(clipped) == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("values", [[0.3, 0.4], [0.6, 0.8]])  # norms 0.5 and exactly 1.0
def test_clip_at_or_below_bound_returns_an_equal_copy(values: list[float]) -> None:
    update = np.array(values)
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(global_l2_norm(update))
    np.testing.assert_array_equal(clipped, update)
    assert not np.shares_memory(clipped, update)


def test_clip_zero_update() -> None:
    clipped, norm = clip_update({"w": np.zeros((2, 3), np.float32)}, 0.5)
    assert norm == 0.0
    assert clipped["w"].dtype == np.float32
    np.testing.assert_array_equal(clipped["w"], 0.0)


def test_clip_uses_the_global_norm_of_all_arrays() -> None:
    # ||(3 | 4)|| = 5 over both arrays; C = 2.5 -> one factor 0.5, not one per array
    update = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    clipped, norm = clip_update(update, 2.5)
    assert norm == 5.0
    assert list(clipped) == ["a", "b"]
    np.testing.assert_allclose(clipped["a"], [1.5])
    np.testing.assert_allclose(clipped["b"], [[2.0]])
    assert clipped["b"].shape == (1, 1)


def test_clip_never_mutates_and_keeps_float32() -> None:
    rng = np.random.default_rng(0)
    update = {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": np.ones(5, np.float32)}
    before = {k: v.copy() for k, v in update.items()}
    clipped, _ = clip_update(update, 0.1)
    for name, array in update.items():
        np.testing.assert_array_equal(array, before[name])
        assert clipped[name].dtype == np.float32
        assert not np.shares_memory(clipped[name], array)


def test_clip_bound_holds_exactly_after_float32_rounding() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        update = {"w": (rng.normal(size=rng.integers(1, 300)) * 10.0).astype(np.float32)}
        c = float(rng.uniform(1e-3, 5.0))
        clipped, _ = clip_update(update, c)
        assert global_l2_norm(clipped) <= c


def test_global_norm_survives_values_too_large_to_square() -> None:
    assert global_l2_norm(np.array([3e200, 4e200])) == pytest.approx(5e200)
    clipped, norm = clip_update(np.array([3e200, 4e200]), 1.0)
    assert norm == pytest.approx(5e200)
    np.testing.assert_allclose(clipped, [0.6, 0.8])


@pytest.mark.parametrize(
    ("update", "clip", "match"),
    [
        (np.array([1, 2]), 1.0, "dtype int"),
        (np.array([1.0, np.nan]), 1.0, "nan or inf"),
        (np.array([1.0, np.inf]), 1.0, "nan or inf"),
        (np.array([1.0]), 0.0, "clip_norm is 0.0"),
        (np.array([1.0]), -1.0, "clip_norm is -1.0"),
        (np.array([1.0]), math.nan, "clip_norm is nan"),
    ],
)
def test_clip_refuses(update: np.ndarray, clip: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        clip_update(update, clip)


_shapes = hnp.array_shapes(max_dims=3, max_side=6)
_arrays = st.one_of(
    hnp.arrays(np.float32, _shapes, elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False)),
    hnp.arrays(np.float64, _shapes, elements=st.floats(-1e6, 1e6, allow_subnormal=False)),
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    arrays=st.lists(_arrays, min_size=1, max_size=3),
    clip=st.floats(1e-3, 1e3),
)
def test_clip_property_bound_and_direction(arrays: list[np.ndarray], clip: float) -> None:
    update = {f"p{i}": a for i, a in enumerate(arrays)}
    clipped, norm = clip_update(update, clip)
    after = global_l2_norm(clipped)
    assert after <= clip  # exactly, not up to rounding
    assert after == pytest.approx(min(norm, clip), rel=1e-5, abs=1e-30)
    factor = 1.0 if norm <= clip else clip / norm
    for name, array in update.items():
        assert clipped[name].dtype == array.dtype and clipped[name].shape == array.shape
        # same direction: every coordinate is the original times one common factor
        np.testing.assert_allclose(
            clipped[name].astype(np.float64),
            array.astype(np.float64) * factor,
            rtol=1e-5,
            atol=1e-30,
        )


# --------------------------------------------------------------------------- noise


def test_noise_std_conventions_match_flower() -> None:
    s = spec(z=1.5, c=0.4)
    assert sum_noise_std(s) == pytest.approx(0.6)  # z * C on the sum
    assert noise_std(s, 4) == pytest.approx(0.15)  # z * C / m on the mean
    assert noise_std(s, 4) == compute_stdv(1.5, 0.4, 4)  # Flower's fixed-clipping convention
    for m in (1, 3, 7):
        assert noise_std(s, m) * m == pytest.approx(sum_noise_std(s))


@pytest.mark.parametrize("m", [0, -2, True, 2.0])
def test_noise_std_refuses_bad_site_counts(m: object) -> None:
    with pytest.raises(ValueError, match="num_sites"):
        noise_std(spec(), m)  # type: ignore[arg-type]


def test_gaussian_noise_is_seeded_float64_with_the_right_std() -> None:
    a = gaussian_noise(200_000, 2.0, np.random.default_rng(7))
    b = gaussian_noise(200_000, 2.0, np.random.default_rng(7))
    assert a.dtype == np.float64 and a.shape == (200_000,)
    np.testing.assert_array_equal(a, b)
    assert float(np.std(a)) == pytest.approx(2.0, rel=0.01)
    assert abs(float(np.mean(a))) < 0.02
    assert gaussian_noise((2, 3), 1.0, np.random.default_rng(0)).shape == (2, 3)


@pytest.mark.parametrize(
    ("shape", "std", "rng", "error"),
    [
        (3, 0.0, np.random.default_rng(0), ValueError),
        (3, -1.0, np.random.default_rng(0), ValueError),
        (3, math.inf, np.random.default_rng(0), ValueError),
        ((2, -1), 1.0, np.random.default_rng(0), ValueError),
        (3, 1.0, np.random.RandomState(0), TypeError),
        (3, 1.0, 7, TypeError),
    ],
)
def test_gaussian_noise_refuses(shape: object, std: float, rng: object, error: type) -> None:
    with pytest.raises(error):
        gaussian_noise(shape, std, rng)  # type: ignore[arg-type]


SCENARIO_SEED = 3  # the four-bank test scenario's seed


def test_noise_is_not_reproducible_from_the_scenario_seed() -> None:
    # the default source reads the OS CSPRNG afresh: two draws differ, and neither is what
    # a generator seeded with the scenario's seed gives, through any of numpy's samplers
    first, second = gaussian_noise(1000, 1.0), gaussian_noise(1000, 1.0)
    assert not np.array_equal(first, second)
    seeded = [
        gaussian_noise(1000, 1.0, np.random.default_rng(SCENARIO_SEED)),
        np.random.default_rng(SCENARIO_SEED).normal(0.0, 1.0, 1000),
        np.random.default_rng(SCENARIO_SEED).standard_normal(1000),
        np.random.RandomState(SCENARIO_SEED).normal(0.0, 1.0, 1000),
    ]
    for reproduced in seeded:
        assert not np.any(np.isclose(first, reproduced, rtol=0.0, atol=1e-12))
    assert not np.array_equal(discrete_gaussian(1000, 50.0), discrete_gaussian(1000, 50.0))
    assert not np.array_equal(
        discrete_gaussian(1000, 50.0),
        discrete_gaussian(1000, 50.0, np.random.default_rng(SCENARIO_SEED)),
    )


def test_os_noise_has_mean_zero_and_the_asked_std() -> None:
    # 400,000 draws of N(0, 2^2) from the OS CSPRNG: the sample mean has std 2/632 = 0.0032
    # and the sample std a relative std of 1/sqrt(2n) = 0.0011; tolerances are 6 of those
    # (a false alarm about once in 10^8 runs)
    n, std = 400_000, 2.0
    noise = gaussian_noise(n, std)
    assert noise.dtype == np.float64 and noise.shape == (n,)
    assert abs(float(noise.mean())) < 6 * std / math.sqrt(n)
    assert float(noise.std()) == pytest.approx(std, rel=6 / math.sqrt(2 * n))


def test_injected_noise_follows_the_normal_law() -> None:
    from scipy import stats

    # deterministic (an injected seeded source): Kolmogorov-Smirnov against N(0, 0.5^2)
    noise = gaussian_noise(50_000, 0.5, GeneratorEntropy(np.random.default_rng(11)))
    result = stats.kstest(noise, "norm", args=(0.0, 0.5))
    assert result.pvalue > 0.01, result
    # the same seed through the plain generator gives the same draws: tests stay reproducible
    np.testing.assert_array_equal(noise, gaussian_noise(50_000, 0.5, np.random.default_rng(11)))
    # and a biased law is caught by the same test at this size
    assert stats.kstest(noise * 1.02, "norm", args=(0.0, 0.5)).pvalue < 0.01


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """``exp(-x^2 / (2 sigma^2))`` normalised over the integers (summed far into the tails)."""
    wide = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    norm = float(np.exp(-(wide.astype(float) ** 2) / (2 * sigma**2)).sum())
    return np.exp(-(support.astype(float) ** 2) / (2 * sigma**2)) / norm


@pytest.mark.parametrize("sigma", [0.75, 2.5])
def test_discrete_gaussian_matches_its_probability_mass_function(sigma: float) -> None:
    from scipy import stats

    n = 40_000
    draws = discrete_gaussian(n, sigma, np.random.default_rng(int(sigma * 100)))
    assert draws.dtype == np.int64
    # chi-square over the values with an expected count of at least 20, tails pooled
    support = np.arange(-int(6 * sigma) - 2, int(6 * sigma) + 3)
    expected = n * discrete_gaussian_pmf(sigma, support)
    keep = expected >= 20
    observed = np.array([np.count_nonzero(draws == v) for v in support[keep]])
    pooled_obs = np.append(observed, n - observed.sum())
    pooled_exp = np.append(expected[keep], n - expected[keep].sum())
    result = stats.chisquare(pooled_obs, pooled_exp)
    assert result.pvalue > 0.001, (result, observed, expected[keep])


def test_discrete_gaussian_has_mean_zero_and_std_sigma_from_the_os() -> None:
    # sigma >= 1: the discrete Gaussian's variance is sigma^2 to within 1e-15 (CKS 2020, Cor. 9)
    n, sigma = 20_000, 40.0
    draws = discrete_gaussian(n, sigma)
    assert abs(float(draws.mean())) < 6 * sigma / math.sqrt(n)
    assert float(draws.std()) == pytest.approx(sigma, rel=6 / math.sqrt(2 * n))
    assert discrete_gaussian((3, 4), 1.0).shape == (3, 4)


@pytest.mark.parametrize(("sigma", "error"), [(0.0, ValueError), (math.nan, ValueError)])
def test_discrete_gaussian_refuses(sigma: float, error: type) -> None:
    with pytest.raises(error, match="sigma"):
        discrete_gaussian(3, sigma)


@pytest.mark.parametrize(("num", "den"), [(3, 10), (1, 1), (5, 2)])
def test_exact_bernoulli_of_exp_has_probability_exp_minus_gamma(num: int, den: int) -> None:
    from secure.dp import _bernoulli_exp

    source = GeneratorEntropy(np.random.default_rng(num * 7 + den))
    n = 40_000
    hits = sum(_bernoulli_exp(num, den, source) for _ in range(n))
    p = math.exp(-num / den)
    assert hits / n == pytest.approx(p, abs=6 * math.sqrt(p * (1 - p) / n))


def test_system_entropy_integers_are_in_range_and_uniform() -> None:
    source = SystemEntropy()
    draws = np.array([source.below(6) for _ in range(60_000)])
    assert draws.min() == 0 and draws.max() == 5
    counts = np.bincount(draws, minlength=6)
    # each count is Binomial(60000, 1/6): std 91; 6 std of slack
    assert np.all(np.abs(counts - 10_000) < 6 * 91), counts
    big = 3 << 70
    assert all(0 <= source.below(big) < big for _ in range(100))
    assert source.words(5).dtype == np.uint64 and source.words(5).shape == (5,)
    with pytest.raises(ValueError, match="bound"):
        source.below(0)


# --------------------------------------------------------------------------- quantization


def test_quantization_term_is_root_length_times_the_value_error() -> None:
    # 10,000 values each moved by at most 1e-4: the update moves by at most 100 * 1e-4 = 0.01
    assert quantization_term(10_000, 1e-4) == pytest.approx(0.01)
    assert quantization_term(0, 1.0) == 0.0
    assert sensitivity(spec(c=0.05), 0.01) == pytest.approx(0.06)
    assert sensitivity(spec(c=0.05)) == 0.05
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="length"):
            quantization_term(bad, 1e-4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value_error"):
        quantization_term(10, -1e-4)
    with pytest.raises(ValueError, match="quantization term"):
        sensitivity(spec(), math.inf)


def test_epsilon_grows_by_the_quantization_term_as_expected() -> None:
    # C = 0.05 and a term of 0.01: sensitivity 0.06, so the noise z C is worth
    # z C / (2 * 0.06) = z * 0.05 / 0.12 sensitivities: the same epsilon as an unquantized
    # run with noise multiplier z' = z * 0.05 / 0.06
    z, c, q = 1.2, 0.05, 0.01
    quantized = DpAccountant(spec(z=z, c=c), 10, orders=ORDERS, quantization=q)
    plain = DpAccountant(spec(z=z, c=c), 10, orders=ORDERS)
    reference = DpAccountant(spec(z=z * c / (c + q), c=c), 10, orders=ORDERS)
    assert accounting_noise_multiplier(spec(z=z, c=c), q) == pytest.approx(z * c / (2 * (c + q)))
    for _ in range(4):
        eps_q, eps, eps_ref = quantized.step(3), plain.step(3), reference.step(3)
        assert eps_q == pytest.approx(eps_ref, rel=1e-12)
        assert eps_q > eps * 1.1
    summary = quantized.summary()
    assert summary["sensitivity"] == pytest.approx(0.06) and summary["quantization_term"] == q


def test_quantization_term_survives_a_checkpoint_and_a_change_is_refused() -> None:
    acc = DpAccountant(spec(c=0.05), 10, orders=ORDERS, quantization=0.01)
    acc.step(3)
    state = json.loads(json.dumps(acc.state_dict()))
    again = DpAccountant.from_state(state, spec=spec(c=0.05), quantization=0.01)
    assert again.epsilon == acc.epsilon and again.quantization == 0.01
    with pytest.raises(ValueError, match="quantization_term"):
        DpAccountant.from_state(state, spec=spec(c=0.05), quantization=0.02)
    # a checkpoint written before the term was recorded is recomputed with the true term
    old = {k: v for k, v in state.items() if k != "quantization_term"}
    upgraded = DpAccountant.from_state(old, spec=spec(c=0.05), quantization=0.01)
    assert upgraded.epsilon == acc.epsilon


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 3000),
    scale=st.floats(1e-6, 10.0),
    clip_norm=st.floats(1e-3, 1.0),
    quant_bits=st.sampled_from([6, 8, 10, 12]),
    seed=st.integers(0, 2**32 - 1),
)
def test_packed_quantized_clipped_update_never_exceeds_the_accounted_sensitivity(
    length: int, scale: float, clip_norm: float, quant_bits: int, seed: int
) -> None:
    # packed CKKS: clip the update to C, quantize each value to the nearest step of the
    # lane layout (secure.packing), dequantize it as the sum of one site
    rng = np.random.default_rng(seed)
    update = rng.normal(0.0, scale, length) * rng.integers(0, 2, length)  # some exact zeros
    clipped, _ = clip_update(update, clip_norm)
    value_clip = float(np.abs(clipped).max()) * 1.5 + 1e-9
    layout = lane_layout(3 * (quant_bits + 4), 10, 3, value_clip, min_quant_bits=quant_bits)
    sent = dequantize_sum(quantize(clipped, layout), 1, layout)
    bound = sensitivity(
        spec(c=clip_norm), quantization_term(length, quantization_error_bound(1, layout))
    )
    assert global_l2_norm(sent) <= bound
    # values past the packing clip are clipped to it, which only shrinks them
    narrow = lane_layout(3 * (quant_bits + 4), 10, 3, value_clip / 3, min_quant_bits=quant_bits)
    sent_narrow = dequantize_sum(quantize(clipped, narrow), 1, narrow)
    assert global_l2_norm(sent_narrow) <= sensitivity(
        spec(c=clip_norm), quantization_term(length, quantization_error_bound(1, narrow))
    )


def test_the_packed_quantization_term_is_reached_by_a_zero_update() -> None:
    # 0 lies midway between two steps of the offset-binary grid (2^b - 1 levels, odd), so a
    # zero update is sent as +-step/2 in every value: norm sqrt(d) * step / 2, the term
    layout = lane_layout(42, 10, 3, 0.1)
    d = 10_000
    sent = dequantize_sum(quantize(np.zeros(d), layout), 1, layout)
    assert global_l2_norm(sent) == pytest.approx(math.sqrt(d) * layout.step / 2, rel=1e-9)
    assert global_l2_norm(sent) <= quantization_term(d, quantization_error_bound(1, layout))


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 2000), clip_norm=st.floats(1e-3, 1.0), seed=st.integers(0, 2**32 - 1))
def test_secagg_quantized_clipped_update_never_exceeds_the_accounted_sensitivity(
    length: int, clip_norm: float, seed: int
) -> None:
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.quantization import quantize as sa_quantize

    from fedcore.config import SecAggSpec
    from secure.secagg import secagg_error_bound

    # SecAgg+ under DP: every site weighs 1 (max_weight 1); the site quantizes its whole
    # model base + u stochastically to Q levels over [-c, c]; what it adds to the sum,
    # minus the base, is the update as sent
    secagg = SecAggSpec(max_weight=1)
    c, q = secagg.clipping_range, secagg.quantization_range
    rng = np.random.default_rng(seed)
    base = rng.uniform(-1.0, 1.0, length)
    clipped, _ = clip_update(rng.normal(0.0, 1.0, length), clip_norm)
    saved = np.random.get_state()
    np.random.seed(seed)  # Flower's stochastic rounding draws from numpy's global state
    try:
        (levels,) = sa_quantize([base + clipped], c, q)
    finally:
        np.random.set_state(saved)
    (model,) = dequantize([levels], c, q)
    sent = model - base
    bound = sensitivity(
        spec(c=clip_norm), quantization_term(length, secagg_error_bound(secagg, [1]))
    )
    assert global_l2_norm(sent) <= bound


# --------------------------------------------------------------------------- settings


def test_check_dp_settings_lists_every_problem() -> None:
    bad = DpSpec.model_construct(noise_multiplier=0.0, clip_norm=math.inf, delta=1e-5)
    with pytest.raises(ValueError) as info:
        check_dp_settings(bad, population_size=10, sample_size=0)
    message = str(info.value)
    assert "noise_multiplier is 0.0" in message
    assert "clip_norm is inf" in message
    assert "sample_size is 0" in message


@pytest.mark.parametrize(
    ("population", "sample", "delta", "match"),
    [
        (0, None, DELTA, "population_size is 0"),
        (10, 0, DELTA, "sample_size is 0"),
        (10, 11, DELTA, "sample_size 11 exceeds population_size 10"),
        (4, None, 0.25, r"delta 0.25 is not below 1/population_size = 0.25"),
    ],
)
def test_check_dp_settings_refuses(
    population: int, sample: int | None, delta: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        check_dp_settings(spec(delta=delta), population_size=population, sample_size=sample)
    check_dp_settings(spec(), population_size=10, sample_size=10)  # and a sound one passes


def test_describe_is_one_line_with_the_parameters() -> None:
    line = describe(spec(z=1.2, c=0.5))
    assert "\n" not in line
    for part in ("clip_norm=0.5", "noise_multiplier=1.2", "std 0.6", "delta=1e-05", "replace-one"):
        assert part in line


# --------------------------------------------------------------------------- accounting


def flower_direct(z_eff: float, population: int, samples: list[int]) -> float:
    """Epsilon from a Flower RdpAccountant built by hand, one compose per round."""
    acc = RdpAccountant(
        PrivacyConfig(
            target_delta=DELTA,
            population_size=population,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
        ),
        orders=ORDERS,
    )
    for m in samples:
        acc.compose(GaussianPrivacyEvent(z_eff, m, population))
    return acc.get_epsilon(DELTA)


def dp_accounting_direct(z_eff: float, population: int, samples: list[int]) -> float:
    """Epsilon from dp-accounting itself, one sampled-without-replacement event per round."""
    acc = rdp.RdpAccountant(orders=ORDERS, neighboring_relation=rdp.NeighborRel.REPLACE_ONE)
    for m in samples:
        acc.compose(
            dp_event.SampledWithoutReplacementDpEvent(
                population, m, dp_event.GaussianDpEvent(z_eff)
            )
        )
    return float(acc.get_epsilon(DELTA))


def test_accountant_starts_at_zero_and_grows_strictly() -> None:
    acc = DpAccountant(spec(), 10, orders=ORDERS)
    assert (acc.epsilon, acc.rounds) == (0.0, 0)
    previous = 0.0
    for rnd in range(1, 6):
        eps = acc.step(3)
        assert eps > previous and acc.epsilon == eps and acc.rounds == rnd
        previous = eps


def test_accountant_matches_flower_and_dp_accounting_for_the_same_events() -> None:
    samples = [3, 3, 2, 3, 4]  # sites selected per round, 10 in the consortium
    acc = DpAccountant(spec(z=1.3), 10, orders=ORDERS)
    for m in samples:
        acc.step(m)
    z_eff = 1.3 / 2  # replace-one: the sum of C-clipped updates has sensitivity 2C
    assert accounting_noise_multiplier(spec(z=1.3)) == z_eff
    assert acc.epsilon == pytest.approx(flower_direct(z_eff, 10, samples), rel=1e-12)
    assert acc.epsilon == pytest.approx(dp_accounting_direct(z_eff, 10, samples), rel=1e-12)
    # handing the accountant z itself would claim a smaller epsilon than the mechanism gives
    assert acc.epsilon > flower_direct(1.3, 10, samples) * 1.5


def test_dp_accounting_does_not_scale_replace_one_sensitivity_itself() -> None:
    # If this fails, dp-accounting now doubles the sensitivity under REPLACE_ONE
    # (google/differential-privacy#378) and accounting_noise_multiplier must stop halving z.
    def eps(relation: rdp.NeighborRel) -> float:
        acc = rdp.RdpAccountant(orders=ORDERS, neighboring_relation=relation)
        acc.compose(
            dp_event.SampledWithoutReplacementDpEvent(5, 5, dp_event.GaussianDpEvent(1.0))
            if relation is rdp.NeighborRel.REPLACE_ONE
            else dp_event.GaussianDpEvent(1.0),
            10,
        )
        return float(acc.get_epsilon(DELTA))

    assert eps(rdp.NeighborRel.REPLACE_ONE) == eps(rdp.NeighborRel.ADD_OR_REMOVE_ONE)


def test_known_value_all_sites_every_round() -> None:
    # z = 1.0, sample rate 1 (10 of 10 sites), 10 rounds, delta 1e-5, default orders
    acc = DpAccountant(spec(z=1.0), 10)
    for _ in range(10):
        acc.step(10)
    direct = rdp.RdpAccountant(neighboring_relation=rdp.NeighborRel.REPLACE_ONE)
    direct.compose(dp_event.GaussianDpEvent(0.5), 10)  # q = 1: no amplification
    assert acc.epsilon == pytest.approx(float(direct.get_epsilon(DELTA)), rel=1e-12)
    # closed form: Gaussian RDP 10 * a / (2 * 0.5^2) (Mironov 2017, Prop. 7), converted with
    # eps = rdp + log(1 - 1/a) - log(delta * a) / (a - 1) (Canonne et al. 2020, Prop. 12)
    orders = np.array([a for a in rdp.DEFAULT_RDP_ORDERS if a > 1.01])
    closed = (
        10 * orders / (2 * 0.5**2) + np.log1p(-1 / orders) - np.log(DELTA * orders) / (orders - 1)
    )
    assert acc.epsilon == pytest.approx(float(closed.min()), rel=1e-9)
    assert acc.epsilon == pytest.approx(48.80169282486775, rel=1e-9)


def test_state_round_trip_resumes_to_the_same_epsilon() -> None:
    acc = DpAccountant(spec(z=0.9, c=0.3), 10, orders=ORDERS)
    for m in (3, 4, 3):
        acc.step(m)
    state = json.loads(json.dumps(acc.state_dict()))
    again = DpAccountant.from_state(state, spec=spec(z=0.9, c=0.3), population_size=10)
    assert again.epsilon == acc.epsilon and again.rounds == acc.rounds == 3
    assert again.summary() == acc.summary()
    for m in (3, 2):
        assert again.step(m) == acc.step(m)
    assert DpAccountant.from_state(state).epsilon == state["epsilon"]  # spec from the state


def test_state_round_trip_with_default_orders() -> None:
    acc = DpAccountant(spec(), 5)
    acc.step(5)
    again = DpAccountant.from_state(json.loads(json.dumps(acc.state_dict())), spec=spec())
    assert again.epsilon == acc.epsilon
    assert again.step(5) == acc.step(5)


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        ({}, {"spec": spec(z=2.0)}, "noise_multiplier: checkpoint 1.0, now 2.0"),
        ({}, {"population_size": 11}, "population_size: checkpoint 10, now 11"),
        ({"schema": 99}, {}, "schema 99"),
        ({"rounds_by_sample_size": [[3, 0]]}, {}, "positive counts"),
        ({"rounds_by_sample_size": [[3, 2]], "rounds": 5}, {}, "add up to rounds"),
        ({"rounds_by_sample_size": [[11, 1]], "rounds": 1}, {}, "exceeds population_size"),
        ({"rounds_by_sample_size": "x"}, {}, "malformed"),
        ({"clip_norm": -1.0}, {}, "malformed"),
    ],
)
def test_from_state_refuses(
    change: dict[str, object], kwargs: dict[str, object], match: str
) -> None:
    acc = DpAccountant(spec(), 10, orders=ORDERS)
    acc.step(3)
    state = {**acc.state_dict(), **change}
    with pytest.raises(ValueError, match=match):
        DpAccountant.from_state(state, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sample", "match"),
    [(0, "sample_size is 0"), (11, "exceeds population_size 10"), (2.0, "sample_size is 2.0")],
)
def test_step_refuses_and_leaves_the_accountant_unchanged(sample: object, match: str) -> None:
    acc = DpAccountant(spec(), 10, orders=ORDERS)
    acc.step(3)
    before = acc.state_dict()
    with pytest.raises(ValueError, match=match):
        acc.step(sample)  # type: ignore[arg-type]
    assert acc.state_dict() == before


def test_flower_refusals_become_clear_value_errors() -> None:
    with pytest.raises(ValueError, match="Flower's RdpAccountant refused the settings"):
        DpAccountant(spec(), 10, orders=(0.5,))  # RDP orders must exceed 1
    with pytest.raises(ValueError, match="population_size is 0"):
        DpAccountant(spec(), 0)


def test_summary_and_repr() -> None:
    acc = DpAccountant(spec(z=1.1, c=0.2), 10, orders=ORDERS)
    acc.step(3)
    summary = acc.summary()
    assert summary["epsilon"] == acc.epsilon
    assert {k: summary[k] for k in ("delta", "noise_multiplier", "clip_norm", "rounds")} == {
        "delta": DELTA,
        "noise_multiplier": 1.1,
        "clip_norm": 0.2,
        "rounds": 1,
    }
    assert summary["accountant"] == ACCOUNTANT_NAME == "rdp (flwr RdpAccountant)"
    assert summary["sampling"] == "without-replacement (fixed-size) of 10 sites"
    assert summary["neighbouring"] == "replace-one"
    json.dumps(summary)
    assert repr(acc).startswith("DpAccountant(epsilon=")
