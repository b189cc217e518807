"""Local training shared by every task: seeding, weights as numpy arrays, results, class weight."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedcore.config import TrainingSpec
from fedcore.metrics import flagged_counts


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's ``state_dict`` as numpy copies (on CPU, same dtypes), owned by the caller."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load named numpy arrays into ``model`` (in place), checking them first.

    Raises:
        ValueError: naming the key(s) on a missing or extra key, a shape mismatch or a
            non-finite value; the model is left unchanged then.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(arrays))
    extra = sorted(set(arrays) - set(state))
    if missing or extra:
        raise ValueError(
            f"arrays do not match {type(model).__name__}: missing {missing or 'none'}, "
            f"extra {extra or 'none'} (was the model built with the same task settings?)"
        )
    new: dict[str, torch.Tensor] = {}
    for key, ref in state.items():
        arr = np.asarray(arrays[key])
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"array {key!r} has shape {tuple(arr.shape)}, the model expects {tuple(ref.shape)} "
                "(task.hidden, task.layers or task.features differ?)"
            )
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"array {key!r} holds non-finite values (nan/inf); refusing to load it"
            )
        new[key] = torch.as_tensor(np.array(arr, copy=True)).to(dtype=ref.dtype, device=ref.device)
    model.load_state_dict(new)


@dataclass(frozen=True)
class TrainStats:
    """Result of one call to local training, for any task.

    Returned by :func:`fedcore.fraud_training.train_local` and
    :func:`fedcore.imaging_training.train_patches`.
    """

    loss: float
    num_examples: int
    seconds: float


@dataclass(frozen=True)
class EvalStats:
    """Result of evaluating one split of one site, for any task.

    Returned by :func:`fedcore.fraud_training.evaluate` and
    :func:`fedcore.imaging_training.evaluate_patches`.
    """

    loss: float
    num_examples: int
    num_positive: int
    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    threshold: float = 0.5
    """Score at or above which an example counted as flagged in ``metrics``."""

    def flagged(self) -> tuple[int, int]:
        """``(true positives, false positives)`` at :attr:`threshold`."""
        return flagged_counts(self.labels, self.scores, self.threshold)


def class_weight(num_pos: int, num_total: int, training: TrainingSpec) -> float:
    """``training.pos_weight``, or ``sqrt(neg / pos)`` (1.0 when a class is missing).

    >>> class_weight(10, 1010, TrainingSpec())
    10.0
    """
    if training.pos_weight is not None:
        return float(training.pos_weight)
    neg = num_total - num_pos
    if num_pos <= 0 or neg <= 0:
        return 1.0
    return math.sqrt(neg / num_pos)
