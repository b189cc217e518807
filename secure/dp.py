"""Differential privacy for site updates: DP-FedAvg with fixed clipping (McMahan et al., ICLR 2018), RDP accounting (Mironov 2017).

The mechanism, per round, matches Flower's ``DifferentialPrivacyServerSideFixedClipping`` /
``DifferentialPrivacyClientSideFixedClipping`` (``flwr.serverapp.strategy.dp_fixed_clipping``):

1. each selected site's model update is scaled so that its global L2 norm is at most
   ``clip_norm`` C (:func:`clip_update`, Flower's ``clip_inputs_inplace``: FlatClip of
   Andrew et al., arXiv:1710.06963);
2. the clipped updates are summed with equal weights and Gaussian noise of standard deviation
   ``noise_multiplier * clip_norm`` (z * C) is added to the *sum* (:func:`sum_noise_std`);
   equivalently, noise z * C / m on the mean of the m updates (:func:`noise_std`, Flower's
   ``compute_stdv``). The noise comes from the operating system's CSPRNG
   (:class:`SystemEntropy`), never from a seeded generator: a continuous Gaussian
   (:func:`gaussian_noise`) on clear aggregates, the discrete Gaussian of Canonne, Kamath &
   Steinke (NeurIPS 2020; :func:`discrete_gaussian`) on the integer lanes of packed CKKS.

Privacy is accounted per site (user-level DP: one "record" is a whole site's contribution) by
:class:`DpAccountant`, which wraps Flower's ``RdpAccountant`` (itself over Google's
``dp-accounting``) with fixed-size sampling without replacement and the replace-one
neighbouring relation. Under replace-one, the sum's L2 sensitivity is 2S, with S = C plus what
the mode's quantization can add to a clipped update (:func:`quantization_term`,
:func:`sensitivity`), so the accountant is given the multiplier z C / (2 S)
(:func:`accounting_noise_multiplier`; z / 2 without quantization); see that function.
"""

from __future__ import annotations

import logging
import math
import secrets
from array import array as word_array
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, overload

import numpy as np
import numpy.typing as npt
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from fedcore.config import DpSpec

logger = logging.getLogger(__name__)

ACCOUNTANT_NAME = "rdp (flwr RdpAccountant)"
SAMPLING = SamplingMethod.WITHOUT_REPLACEMENT
NEIGHBOURING = NeighboringRelation.REPLACE_ONE
REPLACE_ONE_SENSITIVITY = 2.0
"""L2 sensitivity of a sum of C-clipped updates under replace-one, in units of C (u -> u')."""

_STATE_SCHEMA = 1
_MAX_SHRINK_STEPS = 16


# --------------------------------------------------------------------------- clipping


def global_l2_norm(arrays: Mapping[str, np.ndarray] | np.ndarray) -> float:
    """L2 norm of all values of all arrays together, as if flattened and concatenated.

    Computed in float64; values too large to square in float64 are rescaled first, so the
    result is ``inf`` only when a value is.

    Args:
        arrays: one array, or named arrays (e.g. a model update).

    Returns:
        The global L2 norm (``nan`` if any value is ``nan``).
    """
    values = list(arrays.values()) if isinstance(arrays, Mapping) else [arrays]
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in values]
    with np.errstate(over="ignore"):
        total = math.fsum(float(np.dot(f, f)) for f in flat)
    if math.isfinite(total):
        return math.sqrt(total)
    largest = max((float(np.max(np.abs(f))) for f in flat if f.size), default=0.0)
    if not math.isfinite(largest):
        return largest  # inf or nan: nothing to rescale
    scaled = math.fsum(float(np.dot(f / largest, f / largest)) for f in flat)
    return largest * math.sqrt(scaled)


@overload
def clip_update(delta: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]: ...


@overload
def clip_update(
    delta: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]: ...


def clip_update(
    delta: Mapping[str, np.ndarray] | np.ndarray, clip_norm: float
) -> tuple[dict[str, np.ndarray] | np.ndarray, float]:
    """Scale a whole update so that its global L2 norm is at most ``clip_norm``.

    All arrays are scaled by one common factor ``min(1, clip_norm / ||delta||)`` (FlatClip,
    arXiv:1710.06963; Flower's ``clip_inputs_inplace``), so the update's direction is kept. The
    factor is computed in float64 and, should rounding to the arrays' dtype leave the norm a
    hair above ``clip_norm``, shrunk until ``global_l2_norm(clipped) <= clip_norm`` holds
    exactly: the sensitivity bound is never exceeded.

    Args:
        delta: the site's model update, one array or named arrays of a floating dtype.
        clip_norm: the bound C (> 0, finite).

    Returns:
        ``(clipped, original_norm)``: new arrays of the same names, shapes and dtypes (float32
        stays float32), and the update's global L2 norm before clipping. The input is never
        modified, and the result never shares memory with it.

    Raises:
        ValueError: if ``clip_norm`` is not positive and finite, an array is not of a floating
            dtype, or the update holds ``nan``/``inf`` (it cannot be bounded; drop it).
    """
    _check_clip_norm(clip_norm)
    if isinstance(delta, Mapping):
        single = False
        arrays = {name: np.asarray(value) for name, value in delta.items()}
    else:
        single = True
        arrays = {"": np.asarray(delta)}
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            where = "the update" if single else f"array {name!r}"
            raise ValueError(
                f"{where} has dtype {array.dtype}; clip_update needs floating-point arrays "
                "(cast the update to float32 or float64 first)"
            )
    norm = global_l2_norm(arrays)
    if not math.isfinite(norm):
        raise ValueError(
            f"the update's L2 norm is {norm}: it holds nan or inf values and cannot be clipped "
            "to a bounded norm; discard this site's update for the round"
        )
    if norm <= clip_norm:
        clipped = {name: array.copy() for name, array in arrays.items()}
    else:
        clipped = _scale_within(arrays, clip_norm, norm)
    return (clipped[""] if single else clipped), norm


def _scale_within(
    arrays: Mapping[str, np.ndarray], clip_norm: float, norm: float
) -> dict[str, np.ndarray]:
    """Scale ``arrays`` by about ``clip_norm / norm``, shrinking until the result's norm fits."""
    eps = max((float(np.finfo(a.dtype).eps) for a in arrays.values()), default=0.0)
    factor = clip_norm / norm
    after = norm
    for _ in range(_MAX_SHRINK_STEPS):
        scaled = {
            name: (a.astype(np.float64) * factor).astype(a.dtype) for name, a in arrays.items()
        }
        after = global_l2_norm(scaled)
        if after <= clip_norm:
            return scaled
        factor *= (clip_norm / after) * (1.0 - 4.0 * eps)
    raise ArithmeticError(  # pragma: no cover - rounding cannot keep the norm above C this long
        f"could not scale the update to L2 norm <= {clip_norm} (still {after})"
    )


# --------------------------------------------------------------------------- noise sources


class EntropySource(Protocol):
    """Where noise gets its randomness: uniform 64-bit words and uniform integers below a bound."""

    def words(self, count: int) -> npt.NDArray[np.uint64]:
        """``count`` independent uniform 64-bit words."""
        ...

    def below(self, bound: int) -> int:
        """One uniform integer in ``[0, bound)`` (``bound >= 1``, any size)."""
        ...


class SystemEntropy:
    """The operating system's CSPRNG (``secrets``: ``getrandom(2)`` on Linux), read afresh per draw.

    Nothing is seeded and there is no key to keep or re-key: every draw is new output of
    the kernel's generator (ChaCha20-based on Linux 5.17+; small integers come from a buffer
    of 4096 words read at once, used once each), so no noise can be derived from the
    scenario's seed, from earlier noise or from any state the process keeps.
    """

    _BUFFER_WORDS = 4096

    def __init__(self) -> None:
        self._buffer: list[int] = []

    def words(self, count: int) -> npt.NDArray[np.uint64]:
        return np.frombuffer(secrets.token_bytes(8 * count), dtype="<u8").astype(np.uint64)

    def below(self, bound: int) -> int:
        """Uniform in ``[0, bound)``: one buffered 64-bit word with rejection for small bounds."""
        if bound < 1:
            raise ValueError(f"bound is {bound}; expected at least 1")
        if bound > 1 << 32:
            return secrets.randbelow(bound)
        limit = (1 << 64) - (1 << 64) % bound  # reject the top words: no modulo bias
        while True:
            if not self._buffer:
                raw = secrets.token_bytes(8 * self._BUFFER_WORDS)
                self._buffer = list(word_array("Q", raw))
            word = self._buffer.pop()
            if word < limit:
                return word % bound

    def __repr__(self) -> str:
        return "SystemEntropy()"


class GeneratorEntropy:
    """A seeded ``numpy.random.Generator`` as an entropy source: for tests and reproductions only.

    Args:
        rng: the generator (``np.random.default_rng(seed)``).
    """

    def __init__(self, rng: np.random.Generator) -> None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng is {type(rng).__name__}; expected numpy.random.Generator "
                "(np.random.default_rng(seed))"
            )
        self.rng = rng

    def words(self, count: int) -> npt.NDArray[np.uint64]:
        return self.rng.integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True)

    def below(self, bound: int) -> int:
        if bound <= 2**62:
            return int(self.rng.integers(0, bound))
        bits = bound.bit_length() + 64  # bias below 2**-64
        value = 0
        for word in self.words(-(-bits // 64)):
            value = (value << 64) | int(word)
        return value % bound

    def __repr__(self) -> str:
        return f"GeneratorEntropy({self.rng!r})"


NoiseRng = np.random.Generator | EntropySource | None
"""What noise functions accept: ``None`` (the OS CSPRNG), a source, or a seeded generator (tests)."""


def entropy_source(rng: NoiseRng) -> EntropySource:
    """The source behind ``rng``: :class:`SystemEntropy` for ``None``, a wrapped generator, or itself.

    Raises:
        TypeError: ``rng`` is none of these.
    """
    if rng is None:
        return SystemEntropy()
    if isinstance(rng, np.random.Generator):
        return GeneratorEntropy(rng)
    if callable(getattr(rng, "words", None)) and callable(getattr(rng, "below", None)):
        return rng
    raise TypeError(
        f"rng is {type(rng).__name__}; expected None (the OS CSPRNG), an EntropySource or a "
        "numpy.random.Generator (np.random.default_rng(seed), for tests)"
    )


def _unit_interval(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """Uniform doubles in ``(0, 1]`` on the grid ``k * 2**-53`` (53 bits of each word)."""
    return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


# --------------------------------------------------------------------------- noise


def gaussian_noise(
    shape_or_length: int | Sequence[int], std: float, rng: NoiseRng = None
) -> np.ndarray:
    """Draw i.i.d. ``N(0, std^2)`` noise, float64, from the OS CSPRNG (or an injected source).

    Box-Muller (1958) on pairs of 53-bit uniforms: ``sqrt(-2 ln u1) * (cos, sin)(2 pi u2)``.
    The uniforms come from :class:`SystemEntropy` unless the caller injects a source, so
    neither the scenario's seed nor a generator's state can reproduce the noise. Draws are
    bounded by ``sqrt(2 * 53 ln 2) = 8.57`` std (the smallest ``u1`` is ``2**-53``), which
    changes the law with probability below ``1e-17`` per value.

    Floating point (Mironov, CCS 2012): a float sampler reaches only some doubles, and
    ``x + noise`` can reveal ``x`` through the low bits of the result. Where fedcore's
    aggregate lives on an integer grid (packed CKKS lanes) the noise is drawn from the
    discrete Gaussian instead (:func:`discrete_gaussian`), which has no such gap; this
    function serves the clear aggregates (plaintext, SecAgg+), released as float32.

    Args:
        shape_or_length: an array shape, or a length for a flat vector.
        std: the standard deviation (> 0, finite), from :func:`noise_std` or
            :func:`sum_noise_std`.
        rng: ``None`` (default: the OS CSPRNG), an :class:`EntropySource`, or a seeded
            ``numpy.random.Generator`` (tests only: the noise is then reproducible).

    Returns:
        A new float64 array of that shape.

    Raises:
        ValueError: on a non-positive or non-finite ``std`` or a negative dimension.
        TypeError: if ``rng`` is not a source or generator.
    """
    source = entropy_source(rng)
    if not (math.isfinite(std) and std > 0.0):
        raise ValueError(
            f"noise std is {std}; expected a positive finite number "
            "(without noise there is no differential privacy)"
        )
    shape = _shape(shape_or_length)
    size = math.prod(shape)
    pairs = -(-size // 2)
    words = source.words(2 * pairs)
    radius = np.sqrt(-2.0 * np.log(_unit_interval(words[:pairs])))
    angle = (2.0 * math.pi) * _unit_interval(words[pairs:])
    both = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return (std * both[:size]).reshape(shape)


DISCRETE_SIGMA_DENOMINATOR = 256
""":func:`discrete_gaussian` rounds sigma up to a multiple of ``1/256``: exact small rationals."""


def discrete_gaussian(
    shape_or_length: int | Sequence[int], sigma: float, rng: NoiseRng = None
) -> npt.NDArray[np.int64]:
    """Draw i.i.d. discrete Gaussian integers ``N_Z(0, sigma^2)``, exactly, from the OS CSPRNG.

    Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS
    2020), Algorithms 1-3: Bernoulli(exp(-gamma)) from Bernoulli trials of exact rationals,
    discrete Laplace by a uniform and a geometric, then rejection to the discrete Gaussian.
    Integer arithmetic only, every coin an exact ``below(n) < k`` of the source: the law is
    exactly ``P(x) ~ exp(-x^2 / (2 sigma^2))`` on all of Z, so the floating-point attacks
    on naive samplers (Mironov, CCS 2012), which exploit the doubles a float sampler cannot
    produce, have nothing to work on. Added to an integer-valued sum whose L2 sensitivity
    is Delta, it gives the continuous Gaussian's ``Delta^2 / (2 sigma^2)`` zCDP plus a
    correction exponentially small in ``sigma^2`` (CKS Thm. 14; negligible at the scales
    of tens to hundreds of steps packed CKKS uses), so its RDP and accounting are those of the
    Gaussian of std sigma.

    ``sigma`` is rounded *up* to a multiple of 1/256 to keep the rationals small (more
    noise, never less). Cost: pure Python, a few source calls and a few dozen integer
    operations per value; on a shared 2-core machine 10^4 values take about 0.1 s and
    10^6 about 15 s (docs/privacy.md, DP section).

    Args:
        shape_or_length: an array shape, or a length for a flat vector.
        sigma: the scale in grid units (>= 1/256, finite).
        rng: ``None`` (default: the OS CSPRNG), an :class:`EntropySource`, or a seeded
            ``numpy.random.Generator`` (tests only).

    Returns:
        A new int64 array of that shape.

    Raises:
        ValueError: on a non-positive or non-finite ``sigma`` or a negative dimension.
    """
    source = entropy_source(rng)
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise ValueError(f"discrete Gaussian sigma is {sigma}; expected a positive finite number")
    shape = _shape(shape_or_length)
    den = DISCRETE_SIGMA_DENOMINATOR
    num = math.ceil(sigma * den)
    out = [_discrete_gaussian_one(num, den, source) for _ in range(math.prod(shape))]
    return np.asarray(out, dtype=np.int64).reshape(shape)


def _bernoulli_exp(num: int, den: int, source: EntropySource) -> bool:
    """Bernoulli(exp(-num/den)) exactly (CKS Algorithm 1), for ``num, den`` non-negative ints."""
    while num > den:  # exp(-g) = exp(-1)^floor(g) * exp(-(g - floor(g)))
        if not _bernoulli_exp_unit(1, 1, source):
            return False
        num -= den
    return _bernoulli_exp_unit(num, den, source)


def _bernoulli_exp_unit(num: int, den: int, source: EntropySource) -> bool:
    """Bernoulli(exp(-gamma)), ``gamma = num/den`` in [0, 1]: the parity of the first failing K."""
    k = 1
    while source.below(den * k) < num:  # Bernoulli(gamma / k)
        k += 1
    return k % 2 == 1


def _discrete_laplace(t: int, source: EntropySource) -> int:
    """Integer with ``P(y) ~ exp(-|y| / t)`` (CKS Algorithm 2, scale t)."""
    while True:
        u = source.below(t)
        if not _bernoulli_exp(u, t, source):
            continue
        v = 0
        while _bernoulli_exp_unit(1, 1, source):
            v += 1
        x = u + t * v
        negative = source.below(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def _discrete_gaussian_one(num: int, den: int, source: EntropySource) -> int:
    """One draw of ``N_Z(0, sigma^2)`` with ``sigma = num / den`` (CKS Algorithm 3)."""
    t = num // den + 1  # floor(sigma) + 1
    sigma2_num, sigma2_den = num * num, den * den
    while True:
        y = _discrete_laplace(t, source)
        # accept with exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)), as one exact rational
        diff_num = abs(y) * t * sigma2_den - sigma2_num  # (|y| - s2/t) * t * s2_den
        gamma_num = diff_num * diff_num * sigma2_den
        gamma_den = 2 * sigma2_num * (t * sigma2_den) ** 2
        if _bernoulli_exp(gamma_num, gamma_den, source):
            return y


def _shape(shape_or_length: int | Sequence[int]) -> tuple[int, ...]:
    shape = (shape_or_length,) if isinstance(shape_or_length, int) else tuple(shape_or_length)
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"noise shape is {shape_or_length!r}; expected non-negative integers")
    return shape


# --------------------------------------------------------------------------- noise scale


def sum_noise_std(spec: DpSpec) -> float:
    """Standard deviation of the Gaussian noise added to the SUM of the sites' clipped updates.

    ``z * C`` (``noise_multiplier * clip_norm``), per coordinate. Each site moves the sum by at
    most C (2C under replace-one, see :func:`accounting_noise_multiplier`), whatever the number
    of sites, so this does not depend on it; where the mode quantizes the clipped updates the
    sensitivity is a little more (:func:`sensitivity`) and the accountant, not the noise,
    takes that into account. Use it where only the sum exists (CKKS, SecAgg+).

    Args:
        spec: the scenario's DP settings.

    Returns:
        The noise standard deviation for the sum.

    Raises:
        ValueError: if the spec cannot give a guarantee.
    """
    _raise_if(_spec_problems(spec))
    return float(spec.noise_multiplier * spec.clip_norm)


def noise_std(spec: DpSpec, num_sites: int) -> float:
    """Standard deviation of the noise on the uniform MEAN of ``num_sites`` clipped updates.

    ``z * C / m``, Flower's ``compute_stdv(noise_multiplier, clipping_norm,
    num_sampled_clients)`` (``flwr.supercore.differential_privacy``), which the fixed-clipping
    strategies add to the mean. Noise ``z * C / m`` on the mean of m updates is noise
    :func:`sum_noise_std` ``= z * C`` on their sum: the mechanism and its accounting are the
    same either way; ``noise_std(spec, m) * m == sum_noise_std(spec)``.

    Args:
        spec: the scenario's DP settings.
        num_sites: m, the number of clipped updates averaged with equal weights (>= 1).

    Returns:
        The noise standard deviation for the mean.

    Raises:
        ValueError: if ``num_sites`` < 1 or the spec cannot give a guarantee.
    """
    _check_num_sites(num_sites)
    return sum_noise_std(spec) / num_sites


# --------------------------------------------------------------------------- sensitivity


def quantization_term(length: int, value_error: float) -> float:
    """How far quantizing one clipped update can move it in L2: ``sqrt(length) * value_error``.

    A mode that quantizes each value of a site's clipped update ``u`` (packed CKKS: to the
    nearest step, ``|error| <= step / 2``; SecAgg+: stochastic rounding, under one step)
    sends ``u + e`` with ``|e_j| <= value_error`` for each of the ``length`` values, so
    ``||u + e|| <= ||u|| + ||e|| <= C + sqrt(length) * value_error``. The bound is reached:
    a zero update quantizes to ``+-step/2`` in every value under packed CKKS (0 lies midway
    between two steps of the offset-binary grid).

    Args:
        length: the number of values of one update (the model's size, >= 0).
        value_error: the largest change quantization makes to one value (>= 0, finite), e.g.
            ``PackedCodec.error_bound(1)``.

    Returns:
        The term, in the update's units.

    Raises:
        ValueError: a negative length or a negative or non-finite error.
    """
    if not (_is_count(length) and length >= 0):
        raise ValueError(f"length is {length!r}; expected the number of values of an update")
    if not (_finite(value_error) and value_error >= 0.0):
        raise ValueError(f"value_error is {value_error!r}; expected a non-negative finite number")
    return math.sqrt(length) * float(value_error)


def sensitivity(spec: DpSpec, quantization: float = 0.0) -> float:
    """L2 bound on one site's (clipped, then quantized) update: ``clip_norm + quantization``.

    Args:
        spec: the scenario's DP settings.
        quantization: the mode's :func:`quantization_term` (0 where updates travel unrounded).

    Returns:
        The bound S; the sum's replace-one sensitivity is 2S.

    Raises:
        ValueError: if the spec cannot give a guarantee or ``quantization`` is negative.
    """
    _raise_if(_spec_problems(spec))
    if not (_finite(quantization) and quantization >= 0.0):
        raise ValueError(
            f"quantization term is {quantization!r}; expected a non-negative finite number"
        )
    return float(spec.clip_norm) + float(quantization)


# --------------------------------------------------------------------------- checks


def accounting_noise_multiplier(spec: DpSpec, quantization: float = 0.0) -> float:
    """The noise multiplier handed to the RDP accountant: ``z C / (2 S)``, ``S = C + quantization``.

    ``dp-accounting``'s Gaussian RDP, ``alpha / (2 sigma^2)`` (also inside its
    sampled-without-replacement bound, Wang, Balle & Kasiviswanathan, AISTATS 2019, Thm. 27),
    takes sigma as noise std over L2 *sensitivity*. Under replace-one a site's update u may
    become any u' with ``||u - u'|| <= 2S``, so the sum's sensitivity is 2S and the noise
    z * C is ``z C / (2 S)`` sensitivities: ``z / 2`` where updates travel unrounded
    (``S = C``), less where the mode quantizes them (:func:`sensitivity`). Handing it ``z``
    instead would under-state epsilon (RDP by a factor of 4); dp-accounting 0.6 does not
    scale for replace-one itself (google/differential-privacy issue #378), and a test pins
    that.
    """
    bound = sensitivity(spec, quantization)
    z = float(spec.noise_multiplier)
    if quantization == 0.0:
        return z / REPLACE_ONE_SENSITIVITY  # exactly z / 2, as before the term existed
    return z * float(spec.clip_norm) / (REPLACE_ONE_SENSITIVITY * bound)


def check_dp_settings(
    spec: DpSpec, *, population_size: int, sample_size: int | None = None
) -> None:
    """Refuse DP settings that cannot give an (epsilon, delta) guarantee.

    Config already refuses ``noise_multiplier <= 0``; this also refuses non-finite values, an
    empty population or round, a round sampling more sites than exist, and ``delta >= 1 /
    population_size`` (with such a delta a mechanism may reveal one site's whole data with
    probability delta, which is no guarantee at user level).

    Args:
        spec: the scenario's DP settings.
        population_size: sites that may be selected (the consortium's size).
        sample_size: sites selected for a round, if known.

    Raises:
        ValueError: listing every problem found.
    """
    problems = _spec_problems(spec)
    population_ok = _is_count(population_size) and population_size >= 1
    if not population_ok:
        problems.append(
            f"population_size is {population_size!r}; expected the number of sites (>= 1)"
        )
    if sample_size is not None:
        if not (_is_count(sample_size) and sample_size >= 1):
            problems.append(f"sample_size is {sample_size!r}; a round must select at least 1 site")
        elif population_ok and sample_size > population_size:
            problems.append(
                f"sample_size {sample_size} exceeds population_size {population_size}: "
                "sites are sampled without replacement, so at most all of them"
            )
    if population_ok and _finite(spec.delta) and spec.delta >= 1.0 / population_size:
        problems.append(
            f"delta {spec.delta:g} is not below 1/population_size = {1.0 / population_size:g}: "
            "such a delta allows revealing one site's data outright; use e.g. 1e-5"
        )
    _raise_if(problems)


def describe(spec: DpSpec) -> str:
    """One line for logs: the mechanism and its parameters (DP settings hold no secrets)."""
    return (
        f"DP-FedAvg fixed clipping: clip_norm={spec.clip_norm:g}, "
        f"noise_multiplier={spec.noise_multiplier:g} "
        f"(Gaussian std {spec.noise_multiplier * spec.clip_norm:g} on the sum of clipped "
        f"site updates), delta={spec.delta:g}; accountant {ACCOUNTANT_NAME}, fixed-size "
        f"sampling {SAMPLING.value}, {NEIGHBOURING.value} site (user-level)"
    )


def _spec_problems(spec: DpSpec) -> list[str]:
    problems = []
    if not (_finite(spec.noise_multiplier) and spec.noise_multiplier > 0.0):
        problems.append(
            f"noise_multiplier is {spec.noise_multiplier}; expected a positive finite number"
        )
    if not (_finite(spec.clip_norm) and spec.clip_norm > 0.0):
        problems.append(f"clip_norm is {spec.clip_norm}; expected a positive finite number")
    if not (_finite(spec.delta) and 0.0 < spec.delta < 1.0):
        problems.append(f"delta is {spec.delta}; expected 0 < delta < 1")
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("DP settings cannot give a privacy guarantee: " + "; ".join(problems))


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_clip_norm(clip_norm: float) -> None:
    if not (_finite(clip_norm) and clip_norm > 0.0):
        raise ValueError(f"clip_norm is {clip_norm!r}; expected a positive finite number")


def _check_num_sites(num_sites: int) -> None:
    if not (_is_count(num_sites) and num_sites >= 1):
        raise ValueError(f"num_sites is {num_sites!r}; expected at least 1 site")


# --------------------------------------------------------------------------- accounting


class DpAccountant:
    """Running (epsilon, delta) of a DP-FedAvg run, one :meth:`step` per released round.

    Wraps Flower's ``RdpAccountant`` (``flwr.serverapp``) configured with:

    * ``SamplingMethod.WITHOUT_REPLACEMENT``: fedcore selects a fixed number of sites per round
      uniformly without replacement, so the subsampled-Gaussian bound for that scheme applies
      (amplification assumes which sites were selected stays hidden from whoever sees the
      released models);
    * ``NeighboringRelation.REPLACE_ONE``: neighbouring consortia differ in one site's whole
      data. Membership of a cross-silo consortium is public (its size is known, certificates
      are issued per site); what must be hidden is a site's contribution, which replace-one
      protects. It is also the only relation under which fixed-size sampling without
      replacement is analysed (Flower and dp-accounting refuse other pairings).

    The accountant is given ``z C / (2 S)`` (:func:`accounting_noise_multiplier`), the sum's
    noise in units of its replace-one sensitivity 2S, with ``S = C + quantization`` the bound
    on one site's update as the mode sends it (:func:`sensitivity`): ``z / 2`` where updates
    travel unrounded.

    Epsilon is recomputed from a ledger ``{sample_size: rounds}`` composed in a fixed order
    with Flower's ``compose(event, count)``, so a restored accountant reports bit-for-bit the
    same epsilon, and resuming costs one RDP evaluation per distinct sample size rather than
    one per round (each costs up to a second or two with sampling, none without).

    Args:
        spec: the scenario's DP settings (noise multiplier, clip norm, delta).
        population_size: number of sites that may be selected each round.
        orders: RDP orders to optimise over; default dp-accounting's (Flower's default).
        quantization: the mode's :func:`quantization_term` (default 0: no rounding).

    Raises:
        ValueError: if the settings cannot give a guarantee (:func:`check_dp_settings`).
    """

    def __init__(
        self,
        spec: DpSpec,
        population_size: int,
        *,
        orders: Sequence[float] | None = None,
        quantization: float = 0.0,
    ) -> None:
        check_dp_settings(spec, population_size=population_size)
        self._quantization = float(quantization)
        sensitivity(spec, self._quantization)  # refuses a negative or non-finite term
        self._spec = spec
        self._population = int(population_size)
        self._orders = None if orders is None else tuple(float(o) for o in orders)
        try:
            self._config = PrivacyConfig(
                target_delta=float(spec.delta),
                population_size=self._population,
                neighboring_relation=NEIGHBOURING,
                sampling_method=SAMPLING,
            )
            self._new_backend()  # validates orders early
        except ValueError as exc:
            raise ValueError(f"Flower's RdpAccountant refused the settings: {exc}") from exc
        self._ledger: dict[int, int] = {}
        self._epsilon = 0.0

    # ------------------------------------------------------------------ queries

    @property
    def spec(self) -> DpSpec:
        """The DP settings this accountant composes."""
        return self._spec

    @property
    def quantization(self) -> float:
        """The quantization term added to ``clip_norm`` in the sensitivity."""
        return self._quantization

    @property
    def population_size(self) -> int:
        """Number of sites that may be selected each round."""
        return self._population

    @property
    def rounds(self) -> int:
        """Rounds composed so far."""
        return sum(self._ledger.values())

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at ``spec.delta`` (0.0 before the first round)."""
        return self._epsilon

    @property
    def delta(self) -> float:
        """The delta epsilon is reported at (``spec.delta``)."""
        return float(self._spec.delta)

    def summary(self) -> dict[str, float | int | str]:
        """The run's privacy figures for logs and reports (no secrets)."""
        return {
            "epsilon": self._epsilon,
            "delta": self.delta,
            "noise_multiplier": float(self._spec.noise_multiplier),
            "clip_norm": float(self._spec.clip_norm),
            "rounds": self.rounds,
            "accountant": ACCOUNTANT_NAME,
            "sampling": f"{SAMPLING.value} (fixed-size) of {self._population} sites",
            "neighbouring": NEIGHBOURING.value,
            "population_size": self._population,
            "sensitivity": sensitivity(self._spec, self._quantization),
            "quantization_term": self._quantization,
            "accounting_noise_multiplier": accounting_noise_multiplier(
                self._spec, self._quantization
            ),
        }

    def __repr__(self) -> str:
        return (
            f"DpAccountant(epsilon={self._epsilon:.4g}, delta={self.delta:g}, "
            f"rounds={self.rounds}, population_size={self._population}, "
            f"noise_multiplier={self._spec.noise_multiplier:g})"
        )

    # ------------------------------------------------------------------ composition

    def step(self, sample_size: int) -> float:
        """Compose one released round and return the running epsilon at ``spec.delta``.

        Call it once per round whose noised aggregate is released, with the number of sites
        *selected* (the without-replacement sample), even if some did not reply: the noise was
        calibrated and the sample drawn for that many.

        Args:
            sample_size: sites selected this round (1 <= sample_size <= population_size).

        Returns:
            Epsilon after this round.

        Raises:
            ValueError: on an invalid sample size, or if Flower's accountant refuses the event;
                the accountant is then unchanged.
        """
        check_dp_settings(self._spec, population_size=self._population, sample_size=sample_size)
        ledger = dict(self._ledger)
        ledger[int(sample_size)] = ledger.get(int(sample_size), 0) + 1
        self._epsilon = self._compute(ledger)
        self._ledger = ledger
        return self._epsilon

    def _new_backend(self) -> RdpAccountant:
        return RdpAccountant(self._config, orders=self._orders)

    def _compute(self, ledger: Mapping[int, int]) -> float:
        backend = self._new_backend()
        z = accounting_noise_multiplier(self._spec, self._quantization)
        try:
            for sample_size in sorted(ledger):
                event = GaussianPrivacyEvent(
                    noise_multiplier=z,
                    sample_size=sample_size,
                    population_size=self._population,
                )
                backend.compose(event, ledger[sample_size])
            return backend.get_epsilon(self.delta)
        except ValueError as exc:
            raise ValueError(
                f"Flower's RdpAccountant refused the round ({self._population} sites, "
                f"rounds by sample size {dict(sorted(ledger.items()))}): {exc}"
            ) from exc

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state for the coordinator's checkpoint (see :meth:`from_state`)."""
        return {
            "schema": _STATE_SCHEMA,
            "accountant": ACCOUNTANT_NAME,
            "sampling": SAMPLING.value,
            "neighbouring": NEIGHBOURING.value,
            "population_size": self._population,
            "noise_multiplier": float(self._spec.noise_multiplier),
            "clip_norm": float(self._spec.clip_norm),
            "quantization_term": self._quantization,
            "delta": self.delta,
            "orders": None if self._orders is None else list(self._orders),
            "rounds_by_sample_size": [[m, n] for m, n in sorted(self._ledger.items())],
            "rounds": self.rounds,
            "epsilon": self._epsilon,
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        spec: DpSpec | None = None,
        population_size: int | None = None,
        quantization: float | None = None,
    ) -> DpAccountant:
        """Rebuild an accountant from :meth:`state_dict`, reporting exactly the same epsilon.

        The state records the DP settings it was made with. Pass the scenario's current
        ``spec`` (and ``population_size``) to refuse resuming under different settings, which
        would make the reported guarantee describe a mechanism that did not run.

        Args:
            state: what :meth:`state_dict` returned (e.g. after a JSON round trip).
            spec: if given, must equal the settings the state was made with.
            population_size: if given, must equal the state's.
            quantization: if given, the mode's quantization term; must equal the state's
                when the state records one (a state from before the term was recorded is
                recomputed with it, so its epsilon becomes the true one).

        Returns:
            The accountant, ready to :meth:`step` on.

        Raises:
            ValueError: if the state is malformed or was made with other settings.
        """
        if not isinstance(state, Mapping) or state.get("schema") != _STATE_SCHEMA:
            found = state.get("schema") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"DP accountant state has schema {found!r}; expected {_STATE_SCHEMA} "
                "(a DpAccountant.state_dict() of this fedcore version)"
            )
        expected: dict[str, object] = {
            "accountant": ACCOUNTANT_NAME,
            "sampling": SAMPLING.value,
            "neighbouring": NEIGHBOURING.value,
        }
        if spec is not None:
            expected["noise_multiplier"] = float(spec.noise_multiplier)
            expected["clip_norm"] = float(spec.clip_norm)
            expected["delta"] = float(spec.delta)
        if population_size is not None:
            expected["population_size"] = population_size
        if quantization is not None and "quantization_term" in state:
            expected["quantization_term"] = float(quantization)
        mismatched = [
            f"{key}: checkpoint {state.get(key)!r}, now {value!r}"
            for key, value in expected.items()
            if state.get(key) != value
        ]
        if mismatched:
            raise ValueError(
                "the checkpoint's privacy accounting was made with other DP settings ("
                + "; ".join(mismatched)
                + "); resume with the original privacy.dp settings or start a new run"
            )
        try:
            stored_spec = DpSpec(
                noise_multiplier=state["noise_multiplier"],
                clip_norm=state["clip_norm"],
                delta=state["delta"],
            )
            population = state["population_size"]
            orders = state["orders"]
            term = float(
                quantization if quantization is not None else state.get("quantization_term", 0.0)
            )
            ledger = {int(m): int(n) for m, n in state["rounds_by_sample_size"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"DP accountant state is malformed: {exc}") from exc
        counted = sum(ledger.values())
        if any(n < 1 for n in ledger.values()) or state.get("rounds", counted) != counted:
            raise ValueError(
                f"DP accountant state has rounds_by_sample_size {ledger} and rounds "
                f"{state.get('rounds')!r}; expected positive counts that add up to rounds"
            )
        accountant = cls(spec or stored_spec, population, orders=orders, quantization=term)
        for sample_size in ledger:
            check_dp_settings(accountant.spec, population_size=population, sample_size=sample_size)
        accountant._ledger = ledger
        accountant._epsilon = accountant._compute(ledger) if ledger else 0.0
        stored = state.get("epsilon")
        if isinstance(stored, float) and stored != accountant._epsilon:
            logger.warning(
                "DP accountant: checkpoint recorded epsilon %.6g, recomputed %.6g "
                "(the accounting library changed?); using the recomputed value",
                stored,
                accountant._epsilon,
            )
        return accountant
