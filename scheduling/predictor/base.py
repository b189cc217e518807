"""The forecaster interface, the per-site duration prior, and the EWMA and last-value forecasters."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scheduling.history import Observation
from scheduling.predictor.features import ewma, example_seconds, work_size


@dataclass(frozen=True)
class DurationPrior:
    """Seconds per example for a site with no measured round yet.

    In order: the fleet's median A100-equivalent time divided by the site's
    ``relative_throughput`` (when both are known), the fleet's median, then ``default``.

    Attributes:
        a100_example_seconds: Median of ``example_seconds * relative_throughput`` over the
            fleet's measured rounds that report a throughput.
        example_seconds: Median seconds per example over the fleet's measured rounds.
        default: The caller's guess, used when the fleet has no measured round either.
    """

    a100_example_seconds: float | None = None
    example_seconds: float | None = None
    default: float | None = None

    def refit(self, histories: Mapping[str, Sequence[Observation]]) -> DurationPrior:
        """The same prior with its medians taken over ``histories`` (kept when none measured)."""
        per_example: list[float] = []
        a100: list[float] = []
        for history in histories.values():
            for obs in history:
                seconds = example_seconds(obs)
                if seconds is None:
                    continue
                per_example.append(seconds)
                throughput = obs.readings.get("relative_throughput", 0.0)
                if throughput > 0:
                    a100.append(seconds * throughput)
        return DurationPrior(
            float(np.median(a100)) if a100 else self.a100_example_seconds,
            float(np.median(per_example)) if per_example else self.example_seconds,
            self.default,
        )

    def seconds_per_example(self, readings: Mapping[str, float]) -> float:
        """The prior for a site that reports ``readings``.

        Raises:
            ValueError: When nothing is known (no fit on any measured round, no default).
        """
        throughput = readings.get("relative_throughput", 0.0)
        if self.a100_example_seconds is not None and throughput > 0:
            return self.a100_example_seconds / throughput
        if self.example_seconds is not None:
            return self.example_seconds
        if self.default is not None:
            return self.default
        raise ValueError(
            "no measured round for this site and no prior to fall back on: fit the forecaster "
            "on other sites' history first, or pass prior_example_seconds"
        )


class Forecaster(ABC):
    """Predicts how long a site's next round will take.

    Attributes:
        name: The forecaster's name (``lstm``, ``ewma``, ``last-value``).
        last_source: What answered the newest :meth:`predict`: the forecaster's own name,
            ``ewma`` when an LSTM fell back, or ``prior`` for a site with no measured round.
    """

    name: str = "abstract"

    def __init__(self) -> None:
        self.last_source = ""

    @abstractmethod
    def fit(self, histories: Mapping[str, Sequence[Observation]]) -> None:
        """Learn from many sites' histories (site id -> observations in round order)."""

    @abstractmethod
    def predict_with_source(
        self,
        history: Sequence[Observation],
        next_work: Mapping[str, float],
        next_readings: Mapping[str, float],
    ) -> tuple[float, str]:
        """Predicted seconds of the next round, and what answered (see ``last_source``).

        Args:
            history: The site's past observations in round order; rounds without a measured
                duration are skipped.
            next_work: The work the next round would get (``examples``, ``steps``).
            next_readings: The site's telemetry sent for the next round.
        """

    def predict(
        self,
        history: Sequence[Observation],
        next_work: Mapping[str, float],
        next_readings: Mapping[str, float],
    ) -> float:
        """Predicted seconds of the next round; sets :attr:`last_source`."""
        seconds, self.last_source = self.predict_with_source(history, next_work, next_readings)
        return seconds


class EwmaForecaster(Forecaster):
    """EWMA of the site's seconds per example, times the next round's work.

    Args:
        alpha: Weight of the newest round, in (0, 1] (default 0.3; 1 is the last value).
        prior_example_seconds: Seconds per example for a site with no measured round when
            :meth:`fit` saw none either (see :class:`DurationPrior`).
    """

    name = "ewma"

    def __init__(self, alpha: float = 0.3, prior_example_seconds: float | None = None) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self.prior = DurationPrior(default=_positive_or_none(prior_example_seconds))

    def fit(self, histories: Mapping[str, Sequence[Observation]]) -> None:
        self.prior = self.prior.refit(histories)

    def predict_with_source(
        self,
        history: Sequence[Observation],
        next_work: Mapping[str, float],
        next_readings: Mapping[str, float],
    ) -> tuple[float, str]:
        values = [s for s in map(example_seconds, history) if s is not None]
        if values:
            return ewma(values, self.alpha) * work_size(next_work), self.name
        return self.prior.seconds_per_example(next_readings) * work_size(next_work), "prior"

    def __repr__(self) -> str:
        return f"EwmaForecaster(alpha={self.alpha}, prior={self.prior})"


class LastValueForecaster(EwmaForecaster):
    """The last measured duration, scaled by the work ratio (next work / last round's work).

    Args:
        prior_example_seconds: Seconds per example for a site with no measured round when
            :meth:`fit` saw none either (see :class:`DurationPrior`).
    """

    name = "last-value"

    def __init__(self, prior_example_seconds: float | None = None) -> None:
        super().__init__(alpha=1.0, prior_example_seconds=prior_example_seconds)  # the last value

    def __repr__(self) -> str:
        return f"LastValueForecaster(prior={self.prior})"


def _positive_or_none(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"prior_example_seconds must be a finite number > 0, got {value!r}")
    return value
