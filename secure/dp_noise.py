"""Noise sampling for DP: OS CSPRNG entropy sources, Box-Muller Gaussian, exact discrete Gaussian."""

from __future__ import annotations

import math
import secrets
from array import array as word_array
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedcore.config import DpSpec
from secure.dp_terms import _check_num_sites, _raise_if, _spec_problems

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
