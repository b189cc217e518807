"""Differential privacy as a wrapper: uniform weights, Gaussian noise on the aggregate, the accountant.

The central-DP mechanism of McMahan et al., "Learning Differentially Private Recurrent
Language Models" (ICLR 2018), as Flower's ``DifferentialPrivacyServerSideFixedClipping``:
sites clip their updates, every site counts once, and the coordinator adds Gaussian noise
``N(0, (z C)^2)`` to the sum (or ``z C / m`` to the mean of ``m``), wherever the inner
protection's aggregate lives: in clear, encrypted (CKKS) or unmasked (SecAgg+).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator.protection.base import (
    Collected,
    Noise,
    Protection,
    TrainRound,
    UniformWeights,
    WrappedProtection,
)
from coordinator.protection.ckks import Ckks
from coordinator.protection.secagg import SecAggPlus
from fedcore.config import DpSpec

if TYPE_CHECKING:
    from secure.dp import EntropySource


class GaussianNoise:
    """The Gaussian mechanism's noise, from the operating system's CSPRNG (never the scenario seed).

    On a clear aggregate (plaintext, SecAgg+) the noise is the continuous Gaussian
    (:func:`secure.dp.gaussian_noise`); on an aggregate that lives on an integer grid (the
    lanes of packed CKKS, ``grid`` = the quantization step) it is the discrete Gaussian on
    that grid (:func:`secure.dp.discrete_gaussian`, Canonne, Kamath & Steinke 2020), so the
    released sum is an exact discrete Gaussian mechanism with no floating-point gap
    (Mironov 2012). Every draw reads fresh OS entropy: there is no seed or key to keep.

    Args:
        spec: The scenario's DP settings.
        rng: An injected source for tests (a seeded ``numpy.random.Generator`` or an
            ``EntropySource``); default ``None``, the OS CSPRNG.
        grid: The aggregate's quantization step, or ``None`` when it is not on a grid.
    """

    def __init__(
        self,
        spec: DpSpec,
        rng: np.random.Generator | EntropySource | None = None,
        grid: float | None = None,
    ) -> None:
        from secure.dp import entropy_source

        if grid is not None and not (np.isfinite(grid) and grid > 0.0):
            raise ValueError(f"noise grid step is {grid!r}; expected a positive finite number")
        self.spec = spec
        self.grid = grid
        self.rng = entropy_source(rng) if rng is not None else None

    def on_sum(self, length: int) -> np.ndarray:
        """``N(0, (z C)^2)`` per value of a sum of clipped updates (on the grid, if any)."""
        from secure.dp import discrete_gaussian, gaussian_noise, sum_noise_std

        std = sum_noise_std(self.spec)
        if self.grid is None:
            return gaussian_noise(length, std, self.rng)
        return discrete_gaussian(length, std / self.grid, self.rng) * self.grid

    def on_mean(self, mean: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """``mean`` of ``count`` clipped updates plus ``N(0, (z C / count)^2)`` per value."""
        from secure.dp import gaussian_noise, noise_std

        std = noise_std(self.spec, count)
        return {
            k: (v + gaussian_noise(v.shape, std, self.rng)).astype(v.dtype) for k, v in mean.items()
        }


def quantization_of(inner: Protection) -> tuple[int, float, float | None]:
    """``(length, value_error, grid)`` of the updates ``inner`` aggregates.

    ``value_error`` is the most quantization can move one value of a site's clipped update
    (0 where updates travel unrounded), ``grid`` the step of the integer grid the aggregate
    lives on (packed CKKS only). Packed CKKS rounds each value to the nearest step
    (``PackedCodec.error_bound(1)``: ``step / 2`` plus float64 rounding); unpacked CKKS
    encodes at scale ``2**scale_bits`` (``CkksCodec.error_bound(1)``); SecAgg+ rounds
    stochastically to its grid (``secagg_error_bound`` of one site of weight 1, every
    weight being 1 under DP).
    """
    from secure.ckks import PackedCodec

    length = int(sum(np.asarray(a).size for a in inner.global_arrays.values()))
    if isinstance(inner, Ckks):
        codec = inner.codec
        grid = codec.step if isinstance(codec, PackedCodec) else None
        return inner.length, float(codec.error_bound(1)), grid
    if isinstance(inner, SecAggPlus):
        from secure.secagg import secagg_error_bound

        one = inner.privacy.secagg.model_copy(update={"max_weight": 1})
        return length, float(secagg_error_bound(one, [1])), None
    return length, 0.0, None


class DifferentialPrivacy(WrappedProtection):
    """Wraps an inner protection with central differential privacy.

    It owns the weight policy (every site counts once), the noise and the privacy
    accountant; everything else passes through to ``inner``. The accountant's sensitivity
    is ``clip_norm`` plus what the inner mode's quantization can add to a clipped update
    (:func:`quantization_of`, :func:`secure.dp.quantization_term`).

    Args:
        inner: The protection whose aggregate is noised.
        spec: The scenario's DP settings.
        population_size: Sites in the consortium (the accountant's sampling population).
        rng: Injected noise source for tests (default ``None``: the OS CSPRNG, fresh per draw).
    """

    def __init__(
        self,
        inner: Protection,
        spec: DpSpec,
        population_size: int,
        rng: np.random.Generator | EntropySource | None = None,
    ) -> None:
        from secure.dp import DpAccountant, quantization_term

        super().__init__(inner)
        self.weights = UniformWeights()  # the inner protection's policy: every site counts once
        self.spec = spec
        self.population_size = population_size
        length, value_error, grid = quantization_of(inner)
        self.quantization = quantization_term(length, value_error)
        self.noise: Noise = GaussianNoise(spec, rng, grid)
        self.accountant = DpAccountant(
            spec, population_size=population_size, quantization=self.quantization
        )
        self._epsilon: float | None = None

    def collect(self, rnd: TrainRound) -> Collected:
        self._epsilon = None
        return self.inner.collect(rnd)

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        self.inner.aggregate(round_, collected, self.noise)
        self._epsilon = self.accountant.step(collected.chosen)

    def round_figures(self) -> dict[str, Any]:
        inner = self.inner.round_figures()
        return inner if self._epsilon is None else {**inner, "epsilon": round(self._epsilon, 4)}

    def summary(self) -> dict[str, Any]:
        return {**self.inner.summary(), **self.accountant.summary()}

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "dp": self.accountant.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        from secure.dp import DpAccountant

        self.inner.load_state_dict(state, arrays)
        if "dp" in state:
            self.accountant = DpAccountant.from_state(
                state["dp"],
                spec=self.spec,
                population_size=self.population_size,
                quantization=self.quantization,
            )
