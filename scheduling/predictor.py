"""Round-duration forecasters over each site's telemetry history: last value, EWMA and an LSTM.

The LSTM is Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997.
Every forecaster predicts *time per unit of work* (seconds per example) and multiplies by the
next round's work, so one model serves sites that are given different amounts of work.
"""

from __future__ import annotations

import io
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcore.storage import atomic_write_bytes
from scheduling.history import Observation

log = logging.getLogger(__name__)

STEP_FEATURES = ("log_example_seconds", "log_example_seconds_change")
"""Per past round, besides its context: log seconds per example, and the same minus the
newest round's (so the model sees the shape of the series apart from its level)."""

CONTEXT_FEATURES = (
    "utilization",
    "background_load",
    "temperature_c",
    "power_fraction",
    "memory_fraction",
    "log_relative_throughput",
    "log_num_devices",
    "log_net_bytes",
    "log_examples",
    "log_steps",
)
"""What is known about a round before it runs (see :func:`context_features`)."""

_FILE_FORMAT = "fedcore.lstm_forecaster"
_FILE_VERSION = 1


def work_size(work: Mapping[str, float]) -> float:
    """Units of work in a round: ``examples`` if > 0, else ``steps`` if > 0, else 1 (the round).

    >>> work_size({"steps": 50, "examples": 3200})
    3200.0
    """
    for key in ("examples", "steps"):
        value = work.get(key, 0.0)
        if value > 0:
            return float(value)
    return 1.0


def example_seconds(obs: Observation) -> float | None:
    """Seconds per unit of work of a measured round (``duration_s / work_size``), else ``None``."""
    if obs.duration_s is None or obs.duration_s <= 0:
        return None
    return obs.duration_s / work_size(obs.work)


def ewma(values: Sequence[float], alpha: float) -> float:
    """Exponentially weighted moving average, oldest value first.

    ``s_1 = x_1`` and ``s_i = alpha * x_i + (1 - alpha) * s_(i-1)``; returns ``s_n``.

    >>> ewma([10.0, 20.0], 0.3)
    13.0

    Raises:
        ValueError: On no values or ``alpha`` outside (0, 1].
    """
    if not values:
        raise ValueError("ewma needs at least one value, found none")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    s = float(values[0])
    for x in values[1:]:
        s = alpha * float(x) + (1.0 - alpha) * s
    return s


def mape(actual: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean absolute percentage error, ``100 * mean(|a - p| / |a|)``, in percent.

    Pairs whose actual value is 0 are left out (their percentage error is undefined); a
    duration of 0 means nothing was measured, so it has nothing to score against.

    >>> mape([100.0, 200.0, 0.0], [110.0, 150.0, 5.0])  # (10% + 25%) / 2; the 0 is left out
    17.5

    Raises:
        ValueError: On sequences of different lengths, non-finite values, or no pair left.
    """
    if len(actual) != len(predicted):
        raise ValueError(
            f"mape needs as many predictions as actual values; found {len(predicted)} "
            f"predictions for {len(actual)} actual values"
        )
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(p).all()):
        raise ValueError("mape needs finite values; found NaN or infinity")
    keep = a != 0
    if not keep.any():
        raise ValueError(
            f"mape needs at least one actual value != 0; found none among {len(actual)}"
        )
    return float(100.0 * np.mean(np.abs(a[keep] - p[keep]) / np.abs(a[keep])))


def context_features(readings: Mapping[str, float], work: Mapping[str, float]) -> np.ndarray:
    """A round's known context as :data:`CONTEXT_FEATURES`, ``float64 [C]``, NaN where unknown.

    ``utilization`` is ``device_utilization_percent / 100`` (``cpu_util_percent`` on a site
    without a device), ``background_load`` is ``background_load_percent / 100``,
    ``power_fraction`` is ``device_power_w / device_power_limit_w``, ``memory_fraction`` is
    device memory used / total (host memory without a device), then the logs of
    ``relative_throughput``, ``num_devices``, ``1 + net_bytes`` and the work's ``examples``
    and ``steps``.
    """

    def get(key: str) -> float:
        value = readings.get(key)
        return float(value) if value is not None and math.isfinite(value) else math.nan

    def ratio(num: str, den: str) -> float:
        d = get(den)
        return get(num) / d if d > 0 else math.nan

    def log_of(value: float | None) -> float:
        return math.log(value) if value is not None and value > 0 else math.nan

    util = get("device_utilization_percent")
    if math.isnan(util):
        util = get("cpu_util_percent")
    memory = ratio("device_memory_used_mib", "device_memory_total_mib")
    if math.isnan(memory):
        memory = ratio("mem_used_mib", "mem_total_mib")
    net = get("net_bytes")
    return np.array(
        [
            util / 100.0,
            get("background_load_percent") / 100.0,
            get("device_temperature_c"),
            ratio("device_power_w", "device_power_limit_w"),
            memory,
            log_of(get("relative_throughput")),
            log_of(get("num_devices")),
            math.log1p(net) if net >= 0 else math.nan,
            log_of(work.get("examples")),
            log_of(work.get("steps")),
        ],
        dtype=np.float64,
    )


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


class _LstmNet(nn.Module):
    """LSTM over past rounds ``[B, K, S]``; its last hidden state and the next round's context
    ``[B, C]`` go through a small MLP to the normalized change in log seconds per example ``[B]``.
    """

    def __init__(self, step_size: int, context_size: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(step_size, hidden, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden + context_size, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, steps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(steps)
        out: torch.Tensor = self.head(torch.cat([h[-1], context], dim=1))
        return out.squeeze(1)


class LstmForecaster(Forecaster):
    """An LSTM over a site's last ``window`` measured rounds, with EWMA while history is short.

    Each past round contributes its log seconds per example (also relative to the newest
    round's) and its context (:data:`CONTEXT_FEATURES`); the next round's known context joins
    the LSTM's last state, and the model predicts the change in log seconds per example from
    the newest round. The prediction is ``exp(log seconds per example) * work_size(next_work)``.
    Features are standardized with statistics of the training data (saved with the weights);
    a missing reading is imputed with the training mean. A site with fewer than ``window``
    measured rounds, or any site before :meth:`fit` found a training window, gets the
    :class:`EwmaForecaster`'s answer (``last_source`` says ``ewma`` or ``prior``).

    Training is seeded, leaves torch's global random state alone and uses the caller's
    ``torch.set_num_threads``; with the defaults, 20 sites x 200 rounds (about 3,800 windows)
    fit in about 4 s on one core.

    Args:
        window: Past measured rounds the LSTM reads, K (default 8).
        hidden: LSTM and head width (default 32).
        epochs: Passes over the training windows (default 30).
        lr: Adam's learning rate, annealed to 0 along a cosine (default 0.01).
        batch_size: Windows per Adam step (default 256).
        alpha: The EWMA fallback's alpha (default 0.3).
        seed: Seed for the initial weights and the batch order (default 0).
        prior_example_seconds: The fallback's guess for a fleet with no measured round.
    """

    name = "lstm"

    def __init__(
        self,
        window: int = 8,
        hidden: int = 32,
        epochs: int = 30,
        lr: float = 0.01,
        batch_size: int = 256,
        alpha: float = 0.3,
        seed: int = 0,
        prior_example_seconds: float | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("window", window), ("hidden", hidden), ("epochs", epochs)):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.window = window
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.fallback = EwmaForecaster(alpha, prior_example_seconds)
        self._net: _LstmNet | None = None
        self._mean = np.zeros(len(STEP_FEATURES) + len(CONTEXT_FEATURES))
        self._std = np.ones(len(STEP_FEATURES) + len(CONTEXT_FEATURES))
        self._target_mean = 0.0
        self._target_std = 1.0
        self.train_loss: float | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether the LSTM has weights (otherwise every prediction comes from the fallback)."""
        return self._net is not None

    def fit(self, histories: Mapping[str, Sequence[Observation]]) -> None:
        """Train on every window of ``window + 1`` consecutive measured rounds of every site.

        With no such window the LSTM keeps its previous state (logged); the EWMA fallback's
        prior is refitted either way.
        """
        self.fallback.fit(histories)
        seqs, contexts, targets = [], [], []
        for site_id in sorted(histories):
            rows = _rows([o for o in histories[site_id] if example_seconds(o) is not None])
            for j in range(self.window, len(rows)):
                seqs.append(_steps(rows[j - self.window : j]))
                contexts.append(rows[j, 1:])
                targets.append(rows[j, 0] - rows[j - 1, 0])
        if not seqs:
            log.info(
                "LSTM forecaster not trained: no site has more than %d measured rounds; "
                "the EWMA fallback answers meanwhile",
                self.window,
            )
            return
        x = np.stack(seqs)
        c = np.stack(contexts)
        y = np.asarray(targets)
        flat = x.reshape(-1, x.shape[-1])
        self._mean = _nan_stat(np.nanmean, flat, 0.0)
        self._std = _nan_stat(np.nanstd, flat, 1.0)
        self._std[self._std < 1e-8] = 1.0
        self._target_mean = float(y.mean())
        self._target_std = float(y.std()) if y.std() > 1e-8 else 1.0
        xt, ct = self._tensors(x, c)
        yt = torch.as_tensor((y - self._target_mean) / self._target_std, dtype=torch.float32)
        self._net, self.train_loss = self._train(xt, ct, yt)
        log.info(
            "LSTM forecaster trained on %d windows from %d sites (loss %.4f)",
            len(y),
            len(histories),
            self.train_loss,
        )

    def _batch_loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss of one batch of standardized log per-example times (squared error)."""
        return nn.functional.mse_loss(predicted, target)

    def _train(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> tuple[_LstmNet, float]:
        n = len(y)
        steps_per_epoch = math.ceil(n / self.batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _LstmNet(x.shape[-1], c.shape[-1], self.hidden)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=self.epochs * steps_per_epoch
            )
            order = torch.Generator().manual_seed(self.seed)
            total = 0.0
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=order)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    idx = perm[start : start + self.batch_size]
                    loss = self._batch_loss(net(x[idx], c[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
        net.eval()
        return net, total / n

    def predict_with_source(
        self,
        history: Sequence[Observation],
        next_work: Mapping[str, float],
        next_readings: Mapping[str, float],
    ) -> tuple[float, str]:
        recent = _last_measured(history, self.window) if self._net is not None else []
        if self._net is None or len(recent) < self.window:
            return self.fallback.predict_with_source(history, next_work, next_readings)
        rows = _rows(recent)
        xt, ct = self._tensors(_steps(rows)[None], context_features(next_readings, next_work)[None])
        with torch.no_grad():
            z = float(self._net(xt, ct)[0])
        log_seconds = rows[-1, 0] + z * self._target_std + self._target_mean
        return math.exp(log_seconds) * work_size(next_work), self.name

    def _tensors(self, x: np.ndarray, c: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardize and impute (NaN or infinity -> the training mean, i.e. 0) ``[N, K, S]``, ``[N, C]``."""
        k = len(STEP_FEATURES)
        xs = np.nan_to_num((x - self._mean) / self._std, nan=0.0, posinf=0.0, neginf=0.0)
        cs = np.nan_to_num((c - self._mean[k:]) / self._std[k:], nan=0.0, posinf=0.0, neginf=0.0)
        return (
            torch.as_tensor(xs, dtype=torch.float32),
            torch.as_tensor(cs, dtype=torch.float32),
        )

    def save(self, path: str | Path) -> None:
        """Write the weights and their metadata (features, normalization, settings) atomically.

        Raises:
            ValueError: When the LSTM is not fitted (there is nothing to save).
        """
        if self._net is None:
            raise ValueError("nothing to save: the LSTM is not fitted; call fit(histories) first")
        metadata = {
            "features": {"step": list(STEP_FEATURES), "context": list(CONTEXT_FEATURES)},
            "settings": {
                "window": self.window,
                "hidden": self.hidden,
                "epochs": self.epochs,
                "lr": self.lr,
                "batch_size": self.batch_size,
                "alpha": self.fallback.alpha,
                "seed": self.seed,
            },
            "normalization": {
                "mean": self._mean.tolist(),
                "std": self._std.tolist(),
                "target_mean": self._target_mean,
                "target_std": self._target_std,
            },
            "prior": asdict(self.fallback.prior),
            "train_loss": self.train_loss,
        }
        payload = {
            "format": _FILE_FORMAT,
            "version": _FILE_VERSION,
            "metadata": json.dumps(metadata),
            "state_dict": self._net.state_dict(),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> LstmForecaster:
        """Read a forecaster written by :meth:`save`.

        Raises:
            ValueError: When the file is not such a forecaster, or was trained on another
                feature list (refit and save again).
        """
        p = Path(path)
        data = p.read_bytes()
        try:
            payload = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:
            raise ValueError(
                f"{p}: expected an LSTM forecaster saved by LstmForecaster.save, found a file "
                f"torch cannot read ({type(e).__name__}: {e})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
            raise ValueError(
                f"{p}: expected an LSTM forecaster saved by LstmForecaster.save (format "
                f"{_FILE_FORMAT!r}), found another torch file; point to the forecaster's file"
            )
        if payload.get("version") != _FILE_VERSION:
            raise ValueError(
                f"{p}: expected LSTM forecaster file version {_FILE_VERSION}, found "
                f"{payload.get('version')!r}; refit the forecaster and save it again"
            )
        metadata = json.loads(payload["metadata"])
        ours = {"step": list(STEP_FEATURES), "context": list(CONTEXT_FEATURES)}
        if metadata.get("features") != ours:
            raise ValueError(
                f"{p}: the model was trained on features {metadata.get('features')}, this "
                f"version uses {ours}; refit the forecaster (fit) and save it again"
            )
        try:
            model = cls._from_metadata(metadata)
            net = _LstmNet(
                len(STEP_FEATURES) + len(CONTEXT_FEATURES), len(CONTEXT_FEATURES), model.hidden
            )
            net.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"{p}: the forecaster's metadata or weights are damaged ({type(e).__name__}: "
                f"{e}); refit the forecaster and save it again"
            ) from None
        net.eval()
        model._net = net
        return model

    @classmethod
    def _from_metadata(cls, metadata: dict[str, Any]) -> LstmForecaster:
        s = metadata["settings"]
        model = cls(
            s["window"], s["hidden"], s["epochs"], s["lr"], s["batch_size"], s["alpha"], s["seed"]
        )
        model.fallback.prior = DurationPrior(**metadata["prior"])
        norm = metadata["normalization"]
        model._mean = np.asarray(norm["mean"], dtype=np.float64)
        model._std = np.asarray(norm["std"], dtype=np.float64)
        model._target_mean = float(norm["target_mean"])
        model._target_std = float(norm["target_std"])
        model.train_loss = metadata.get("train_loss")
        return model

    def __repr__(self) -> str:
        return (
            f"LstmForecaster(window={self.window}, hidden={self.hidden}, epochs={self.epochs}, "
            f"lr={self.lr}, batch_size={self.batch_size}, alpha={self.fallback.alpha}, "
            f"seed={self.seed}, fitted={self.is_fitted})"
        )


def evaluate(
    forecaster: Forecaster, histories: Mapping[str, Sequence[Observation]], warmup: int = 1
) -> dict[str, Any]:
    """MAPE of one-step-ahead predictions over held-out histories.

    Every measured round after a site's first ``warmup`` measured rounds is predicted from
    the observations before it, with that round's work and readings as the next round's.

    Args:
        forecaster: A fitted forecaster (it is not refitted here).
        histories: Site id -> observations in round order.
        warmup: Measured rounds a site must have before its rounds are scored (default 1).

    Returns:
        ``{"forecaster", "mape", "count", "per_site": {site: mape}, "sources": {source: n}}``.

    Raises:
        ValueError: When no round could be scored.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    actual: list[float] = []
    predicted: list[float] = []
    per_site: dict[str, float] = {}
    sources: dict[str, int] = {}
    for site_id in sorted(histories):
        history = list(histories[site_id])
        site_actual: list[float] = []
        site_predicted: list[float] = []
        seen = 0
        for i, obs in enumerate(history):
            if obs.duration_s is None:
                continue
            if seen >= warmup:
                seconds, source = forecaster.predict_with_source(
                    history[:i], obs.work, obs.readings
                )
                site_actual.append(obs.duration_s)
                site_predicted.append(seconds)
                sources[source] = sources.get(source, 0) + 1
            seen += 1
        if site_actual:
            per_site[site_id] = mape(site_actual, site_predicted)
            actual += site_actual
            predicted += site_predicted
    if not actual:
        raise ValueError(
            f"nothing to evaluate: no site has more than {warmup} measured rounds "
            f"(sites: {len(histories)})"
        )
    return {
        "forecaster": forecaster.name,
        "mape": mape(actual, predicted),
        "count": len(actual),
        "per_site": per_site,
        "sources": dict(sorted(sources.items())),
    }


def _rows(measured: Sequence[Observation]) -> np.ndarray:
    """``[log seconds per example, context...]`` per measured round, ``float64 [N, 1 + C]``."""
    out = np.empty((len(measured), 1 + len(CONTEXT_FEATURES)))
    for i, obs in enumerate(measured):
        seconds = example_seconds(obs)
        assert seconds is not None
        out[i, 0] = math.log(seconds)
        out[i, 1:] = context_features(obs.readings, obs.work)
    return out


def _last_measured(history: Sequence[Observation], k: int) -> list[Observation]:
    """The newest ``k`` measured observations (fewer if there are not so many), oldest first."""
    found: list[Observation] = []
    for obs in reversed(history):
        if len(found) == k:
            break
        if example_seconds(obs) is not None:
            found.append(obs)
    return found[::-1]


def _steps(rows: np.ndarray) -> np.ndarray:
    """Window rows ``[K, 1 + C]`` to LSTM steps ``[K, S + C]`` (adds the change column)."""
    change = rows[:, :1] - rows[-1, 0]
    return np.concatenate([rows[:, :1], change, rows[:, 1:]], axis=1)


def _nan_stat(stat: Any, flat: np.ndarray, empty: float) -> np.ndarray:
    """Per-column ``stat`` ignoring NaN; ``empty`` for a column with no value at all."""
    out = np.full(flat.shape[1], empty)
    seen = ~np.isnan(flat).all(axis=0)
    if seen.any():
        out[seen] = stat(flat[:, seen], axis=0)
    return out


def _positive_or_none(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"prior_example_seconds must be a finite number > 0, got {value!r}")
    return value
