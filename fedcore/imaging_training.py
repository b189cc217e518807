"""Local training and evaluation of the nodule model on one site's CT candidate patches."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from fedcore.config import TrainingSpec
from fedcore.metrics import METRIC_KEYS, binary_metrics
from fedcore.models.nodule_net import PatchSet
from fedcore.training import EvalStats, TrainStats, class_weight, seed_everything

log = logging.getLogger(__name__)

__all__ = [
    "IMAGING_METRIC_KEYS",
    "PatchSet",
    "augment",
    "evaluate_patches",
    "imaging_metrics",
    "patch_positive_weight",
    "train_patches",
]

IMAGING_METRIC_KEYS = (*METRIC_KEYS, "sensitivity", "specificity")
"""Keys of every metrics dict returned by :func:`imaging_metrics`."""

DEFAULT_BATCH_SIZE = 32
"""Patches per mini-batch when ``training.batch_size`` is not set."""


def imaging_metrics(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Binary metrics of nodule scores, with the clinical names added.

    Args:
        y_true: Labels, 1 = nodule, 0 = not a nodule, shape ``[n]``.
        scores: Nodule probabilities (higher = more likely a nodule), same shape; finite.
        threshold: Scores ``>= threshold`` count as called a nodule.

    Returns:
        :func:`fedcore.metrics.binary_metrics` (``pr_auc``, ``roc_auc``, ``f1``,
        ``precision``, ``recall``, ``fpr``) plus ``sensitivity`` = TP / (TP + FN) (the
        recall; ``nan`` without positives, where it is undefined, although ``recall`` is
        reported as 0 there) and ``specificity`` = TN / (TN + FP) = 1 - ``fpr`` (``nan``
        without negatives). Never raises for a missing class.

    Raises:
        ValueError: for mismatched lengths, labels other than 0/1 or non-finite scores.
    """
    metrics = binary_metrics(y_true, scores, threshold)
    num_pos = int(np.sum(np.asarray(y_true).reshape(-1) == 1))
    metrics["sensitivity"] = metrics["recall"] if num_pos > 0 else float("nan")
    metrics["specificity"] = 1.0 - metrics["fpr"]  # nan stays nan
    return metrics


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Randomly flip and rotate each patch of a batch (a new tensor; ``x`` is left alone).

    Every patch is flipped along each of its three axes with probability 1/2 and then
    rotated in-plane (the last two axes, the axial plane) by 0, 90, 180 or 270 degrees, all
    drawn independently per patch from ``gen``. Each result is a permutation of the patch's
    voxels: nodules have no preferred orientation, so labels are unchanged.

    Args:
        x: Patches ``[B, C, S, S, S]`` (any device; in-plane sides must be equal).
        gen: CPU generator the draws come from.

    Returns:
        The augmented patches, same shape, dtype and device.
    """
    if x.dim() != 5 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"augment expects patches [B, C, D, S, S] with a square axial plane; "
            f"found {list(x.shape)}"
        )
    n = int(x.shape[0])
    flips = (torch.rand((n, 3), generator=gen) < 0.5).tolist()
    turns = torch.randint(0, 4, (n,), generator=gen).tolist()
    out = torch.empty_like(x)
    for i in range(n):
        patch = x[i]  # [C, D, H, W]
        dims = [axis + 1 for axis in range(3) if flips[i][axis]]
        if dims:
            patch = torch.flip(patch, dims)
        if turns[i]:
            patch = torch.rot90(patch, int(turns[i]), dims=(2, 3))
        out[i] = patch
    return out


def patch_positive_weight(train: PatchSet, training: TrainingSpec) -> float:
    """:func:`fedcore.training.class_weight` of the site's train patches (1.0 without both classes)."""
    return class_weight(train.num_pos, len(train), training)


def train_patches(
    model: nn.Module,
    train: PatchSet,
    training: TrainingSpec,
    *,
    seed: int,
    epochs: int | None = None,
    device: str = "cpu",
    augment_data: bool = True,
) -> TrainStats:
    """Train ``model`` in place on the site's train patches.

    Loss: binary cross-entropy with logits, nodules weighted by
    :func:`patch_positive_weight`; optimiser Adam(``training.lr``,
    ``training.weight_decay``), fresh at every call (as at the start of a federated round).
    Every epoch shuffles the patches into mini-batches of ``training.batch_size`` (32 when
    unset), each taking one step, with :func:`augment` applied per batch when
    ``augment_data``.

    All RNGs are seeded with ``seed`` first, so the same seed, model and patches give the
    same weights, also in a fresh process (on the same hardware and thread count).

    Args:
        model: A ``NoduleNet`` (any module mapping ``[B, 1, S, S, S]`` to logits ``[B]``).
        train: The site's train patches.
        training: Learning rate, weight decay, batch size, positive weight, local epochs.
        seed: Seed for dropout, batch order and augmentation.
        epochs: Epochs to run; default ``training.local_epochs``.
        device: Torch device string.
        augment_data: Apply random flips and in-plane rotations.

    Returns:
        Mean training loss over the last epoch (``nan`` without patches or epochs), number
        of train patches, seconds.

    Raises:
        ValueError: for negative ``epochs``.
        FloatingPointError: when a batch loss is not finite (the weights keep the last
            finite step).
    """
    start = time.perf_counter()
    seed_everything(seed)
    n_epochs = training.local_epochs if epochs is None else epochs
    if n_epochs < 0:
        raise ValueError(f"epochs must be >= 0; found {n_epochs}")
    model.to(device)
    n = len(train)
    if n == 0:
        log.warning("no train patches at this site; skipping local training")
        return TrainStats(loss=float("nan"), num_examples=0, seconds=time.perf_counter() - start)
    batch_size = training.batch_size or DEFAULT_BATCH_SIZE
    pos_weight = torch.tensor(patch_positive_weight(train, training), device=device)
    x = train.x.to(device)
    target = train.y.to(device).float()
    opt = torch.optim.Adam(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    last = float("nan")
    for epoch in range(n_epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for step, b in enumerate(torch.split(perm, batch_size)):
            xb = augment(x[b], gen) if augment_data else x[b]
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(xb), target[b], pos_weight=pos_weight)
            value = float(loss.detach())
            if not math.isfinite(value):
                bad = int((~torch.isfinite(x[b])).sum())
                raise FloatingPointError(
                    f"training loss became {value} at epoch {epoch + 1}, batch {step + 1}; "
                    f"lower training.lr (now {training.lr}) or check the patches: this batch "
                    f"holds {bad} non-finite voxel(s) (patches must be windowed to [0, 1])"
                )
            torch.autograd.backward(loss)
            opt.step()
            total += value * int(b.numel())
        last = total / n
    seconds = time.perf_counter() - start
    log.debug(
        "trained %d epoch(s) on %d patches (%d nodules): loss %.4f in %.2fs",
        n_epochs,
        n,
        train.num_pos,
        last,
        seconds,
    )
    return TrainStats(loss=last, num_examples=n, seconds=seconds)


@torch.no_grad()
def evaluate_patches(
    model: nn.Module,
    test: PatchSet,
    threshold: float = 0.5,
    *,
    device: str = "cpu",
    batch_size: int = 64,
) -> EvalStats:
    """Score the site's patches of one split.

    Args:
        model: A ``NoduleNet``.
        test: The patches to score.
        threshold: Probability at or above which a patch is called a nodule.
        device: Torch device string.
        batch_size: Patches per forward pass (memory only; results do not depend on it).

    Returns:
        Unweighted BCE loss (``nan`` without patches), counts, :func:`imaging_metrics`,
        and the scores (probabilities) and labels themselves (which must stay at the site).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; found {batch_size}")
    model.to(device)
    model.eval()
    labels = test.y.cpu().numpy().astype(np.int64)
    if len(test) == 0:
        scores = np.zeros(0, dtype=np.float64)
        loss = float("nan")
    else:
        logits = torch.cat(
            [model(xb.to(device)).float().cpu() for xb in torch.split(test.x, batch_size)]
        )
        loss = float(F.binary_cross_entropy_with_logits(logits, test.y.float().cpu()))
        scores = torch.sigmoid(logits).numpy().astype(np.float64)
    return EvalStats(
        loss=loss,
        num_examples=len(test),
        num_positive=int(labels.sum()),
        metrics=imaging_metrics(labels, scores, threshold),
        scores=scores,
        labels=labels,
        threshold=threshold,
    )
