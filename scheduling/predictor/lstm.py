"""The LSTM round-duration forecaster (Hochreiter & Schmidhuber, Neural Computation 9(8), 1997)."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcore.storage import atomic_write_bytes
from scheduling.history import Observation
from scheduling.predictor.base import DurationPrior, EwmaForecaster, Forecaster
from scheduling.predictor.features import (
    CONTEXT_FEATURES,
    STEP_FEATURES,
    context_features,
    example_seconds,
    work_size,
)

log = logging.getLogger(__name__)

_FILE_FORMAT = "fedcore.lstm_forecaster"
_FILE_VERSION = 1


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
