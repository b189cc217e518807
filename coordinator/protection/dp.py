"""Differential privacy as a wrapper: uniform weights, Gaussian noise on the aggregate, the accountant.

The central-DP mechanism of McMahan et al., "Learning Differentially Private Recurrent
Language Models" (ICLR 2018), as Flower's ``DifferentialPrivacyServerSideFixedClipping``:
sites clip their updates, every site counts once, and the coordinator adds Gaussian noise
``N(0, (z C)^2)`` to the sum (or ``z C / m`` to the mean of ``m``), wherever the inner
protection's aggregate lives: in clear, encrypted (CKKS) or unmasked (SecAgg+).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import RecordDict

from coordinator.protection.base import (
    Collected,
    Noise,
    Protection,
    TrainRound,
    UniformWeights,
)
from fedcore import records as R
from fedcore.config import DpSpec
from scheduling.base import Candidate


class GaussianNoise:
    """The Gaussian mechanism's noise, drawn from fresh OS entropy (never the scenario seed).

    Args:
        spec: The scenario's DP settings.
        rng: The generator (default: seeded from the operating system).
    """

    def __init__(self, spec: DpSpec, rng: np.random.Generator | None = None) -> None:
        self.spec = spec
        self.rng = rng if rng is not None else np.random.default_rng()

    def on_sum(self, length: int) -> np.ndarray:
        """``N(0, (z C)^2)`` per value of a sum of clipped updates."""
        from secure.dp import gaussian_noise, sum_noise_std

        return gaussian_noise(length, sum_noise_std(self.spec), self.rng)

    def on_mean(self, mean: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """``mean`` of ``count`` clipped updates plus ``N(0, (z C / count)^2)`` per value."""
        from secure.dp import gaussian_noise, noise_std

        std = noise_std(self.spec, count)
        return {
            k: (v + gaussian_noise(v.shape, std, self.rng)).astype(v.dtype) for k, v in mean.items()
        }


class DifferentialPrivacy(Protection):
    """Wraps an inner protection with central differential privacy.

    It owns the weight policy (every site counts once), the noise and the privacy
    accountant; everything else passes through to ``inner``.

    Args:
        inner: The protection whose aggregate is noised.
        spec: The scenario's DP settings.
        population_size: Sites in the consortium (the accountant's sampling population).
        rng: Noise generator (default: fresh OS entropy).
    """

    def __init__(
        self,
        inner: Protection,
        spec: DpSpec,
        population_size: int,
        rng: np.random.Generator | None = None,
    ) -> None:
        from secure.dp import DpAccountant

        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.can_skip_round = inner.can_skip_round
        self.evaluation_rides_on_train = inner.evaluation_rides_on_train
        self.inner.weights = self.weights = UniformWeights()
        self.spec = spec
        self.population_size = population_size
        self.noise: Noise = GaussianNoise(spec, rng)
        self.accountant = DpAccountant(spec, population_size=population_size)
        self._epsilon: float | None = None

    def collect(self, rnd: TrainRound) -> Collected:
        self._epsilon = None
        return self.inner.collect(rnd)

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        self.inner.aggregate(round_, collected, self.noise)
        self._epsilon = self.accountant.step(collected.chosen)

    def round_figures(self) -> dict[str, float]:
        return {} if self._epsilon is None else {"epsilon": round(self._epsilon, 4)}

    def instruction(self, cfg: R.RoundConfig, site: Candidate) -> RecordDict:
        return self.inner.instruction(cfg, site)

    def observe_telemetry(self, telemetry: R.Telemetry) -> None:
        self.inner.observe_telemetry(telemetry)

    def check_evaluations(self, round_: int, replies: Sequence[R.EvalReply]) -> list[str]:
        return self.inner.check_evaluations(round_, replies)

    @property
    def global_arrays(self) -> dict[str, np.ndarray]:
        return self.inner.global_arrays

    @property
    def holds_global_model(self) -> bool:
        return self.inner.holds_global_model

    def summary(self) -> dict[str, Any]:
        return {**self.inner.summary(), **self.accountant.summary()}

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "dp": self.accountant.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        from secure.dp import DpAccountant

        self.inner.load_state_dict(state, arrays)
        if "dp" in state:
            self.accountant = DpAccountant.from_state(
                state["dp"], spec=self.spec, population_size=self.population_size
            )
