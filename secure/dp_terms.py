"""DP calibration terms: the mechanism's constants, sensitivity, quantization and settings checks."""

from __future__ import annotations

import math

import numpy as np
from flwr.serverapp import NeighboringRelation, SamplingMethod

from fedcore.config import DpSpec

ACCOUNTANT_NAME = "rdp (flwr RdpAccountant)"
SAMPLING = SamplingMethod.WITHOUT_REPLACEMENT
NEIGHBOURING = NeighboringRelation.REPLACE_ONE
REPLACE_ONE_SENSITIVITY = 2.0
"""L2 sensitivity of a sum of C-clipped updates under replace-one, in units of C (u -> u')."""


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
