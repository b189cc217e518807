"""Tests of local training and evaluation of the nodule model on CT patches."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fedcore.config import TrainingSpec
from fedcore.imaging_training import (
    IMAGING_METRIC_KEYS,
    augment,
    evaluate_patches,
    imaging_metrics,
    patch_positive_weight,
    train_patches,
)
from fedcore.models.nodule_net import NoduleNet, PatchSet
from fedcore.training import seed_everything


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Bit-for-bit reproducible CPU kernels, and no fight over the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _small_model(seed: int = 0) -> NoduleNet:
    seed_everything(seed)
    return NoduleNet(in_size=16, channels=(4, 8), dim=16, heads=2, layers=1)


def _random_patches(n: int, size: int = 16, seed: int = 0) -> PatchSet:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, size, generator=gen)
    y = (torch.arange(n) % 3 == 0).to(torch.int64)
    return PatchSet(x, y, [f"1.2.3:{i}" for i in range(n)])


def _sphere_or_tube(n: int, seed: int, size: int = 32) -> PatchSet:
    """Noisy cubes holding a bright ball (label 1, a nodule) or a bright straight tube (0, a vessel).

    Both sit near the centre with random size and brightness; the tube runs in a random 3D
    direction right through the cube, so only the 3D shape tells the two apart.
    """
    rng = np.random.default_rng(seed)
    axis = np.arange(size, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)  # [S, S, S, 3]
    y = (np.arange(n) % 2).astype(np.int64)
    x = np.empty((n, 1, size, size, size), dtype=np.float32)
    for i in range(n):
        vol = rng.normal(0.15, 0.05, (size, size, size)).astype(np.float32)
        centre = rng.uniform(size / 2 - 4, size / 2 + 4, 3).astype(np.float32)
        rel = grid - centre
        if y[i]:
            radius = rng.uniform(3.5, 6.0)
            dist2 = (rel**2).sum(-1)
        else:
            direction = rng.normal(size=3).astype(np.float32)
            direction /= np.linalg.norm(direction)
            radius = rng.uniform(1.5, 3.0)
            along = rel @ direction
            dist2 = ((rel - along[..., None] * direction) ** 2).sum(-1)
        vol[dist2 <= radius**2] += rng.uniform(0.4, 0.7)
        x[i, 0] = np.clip(vol, 0.0, 1.0)
    return PatchSet(torch.from_numpy(x), torch.from_numpy(y), [f"toy:{i}" for i in range(n)])


def test_imaging_metrics_on_a_hand_computed_table() -> None:
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.55, 0.05]
    m = imaging_metrics(y, s, 0.5)
    assert set(m) == set(IMAGING_METRIC_KEYS)
    # called (score >= 0.5): positives 0.9, 0.8, 0.6 -> TP = 3, FN = 1 (0.3)
    #                        negatives 0.7, 0.55     -> FP = 2, TN = 4
    assert m["sensitivity"] == pytest.approx(3 / 4)  # TP / (TP + FN) = 3 / 4 = 0.75
    assert m["specificity"] == pytest.approx(4 / 6)  # TN / (TN + FP) = 4 / 6 = 0.667
    assert m["recall"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(3 / 5)  # TP / (TP + FP)
    assert m["fpr"] == pytest.approx(2 / 6)
    # ROC-AUC = share of (positive, negative) pairs ranked right, out of 4 * 6 = 24:
    # 0.9 beats 6, 0.8 beats 6, 0.6 beats 5 (not 0.7), 0.3 beats 3 (0.2, 0.1, 0.05) -> 20 / 24
    assert m["roc_auc"] == pytest.approx(20 / 24)


def test_imaging_metrics_with_a_missing_class() -> None:
    no_nodules = imaging_metrics([0, 0, 0], [0.1, 0.6, 0.2], 0.5)
    assert math.isnan(no_nodules["sensitivity"])  # undefined without positives
    assert no_nodules["specificity"] == pytest.approx(2 / 3)  # TN 2 of 3 negatives
    assert math.isnan(no_nodules["roc_auc"])
    only_nodules = imaging_metrics([1, 1], [0.9, 0.2], 0.5)
    assert only_nodules["sensitivity"] == pytest.approx(0.5)
    assert math.isnan(only_nodules["specificity"])
    empty = imaging_metrics([], [], 0.5)
    assert math.isnan(empty["sensitivity"]) and math.isnan(empty["specificity"])


def _all_orientations(patch: torch.Tensor) -> list[torch.Tensor]:
    """The 32 flips x in-plane rotations of a [C, D, H, W] patch."""
    out = []
    for flips in itertools.product([False, True], repeat=3):
        dims = [a + 1 for a in range(3) if flips[a]]
        flipped = torch.flip(patch, dims) if dims else patch
        out += [torch.rot90(flipped, k, dims=(2, 3)) for k in range(4)]
    return out


def test_augment_permutes_voxels_and_is_seeded() -> None:
    base = torch.arange(6 * 6 * 6, dtype=torch.float32).reshape(1, 6, 6, 6)  # all distinct
    x = base.expand(64, 1, 6, 6, 6).clone()
    before = x.clone()
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)  # the input is left alone
    orientations = _all_orientations(base)
    seen = set()
    for patch in out:
        assert torch.equal(patch.flatten().sort().values, base.flatten())  # same voxels
        match = [i for i, o in enumerate(orientations) if torch.equal(patch, o)]
        assert match, "augment produced something other than a flip/rotation"
        seen.add(tuple(patch.flatten()[:8].tolist()))
    assert len(seen) >= 8  # random per patch, not one transform for the batch
    again = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match=r"found \[2, 1, 4, 4, 3\]"):
        augment(torch.zeros(2, 1, 4, 4, 3), torch.Generator())


def test_positive_weight() -> None:
    train = _random_patches(9)  # labels 1 at 0, 3, 6 -> 3 positives, 6 negatives
    assert patch_positive_weight(train, TrainingSpec()) == pytest.approx(math.sqrt(6 / 3))
    assert patch_positive_weight(train, TrainingSpec(pos_weight=3.0)) == 3.0
    negatives = PatchSet(train.x, torch.zeros(9, dtype=torch.int64), train.ids)
    assert patch_positive_weight(negatives, TrainingSpec()) == 1.0


def test_same_seed_same_weights() -> None:
    train = _random_patches(40)
    spec = TrainingSpec(local_epochs=2, lr=0.01, batch_size=16)
    a, b, c = _small_model(0), _small_model(0), _small_model(0)
    stats_a = train_patches(a, train, spec, seed=7)
    stats_b = train_patches(b, train, spec, seed=7)
    train_patches(c, train, spec, seed=8)
    assert stats_a.loss == stats_b.loss and stats_a.num_examples == 40
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_learns_sphere_versus_tube() -> None:
    train = _sphere_or_tube(128, seed=0)
    test = _sphere_or_tube(64, seed=100)
    seed_everything(0)
    model = NoduleNet()  # the scenario's default size, 32^3 patches
    untrained = evaluate_patches(model, test)
    spec = TrainingSpec(local_epochs=6, lr=3e-3, batch_size=16)
    stats = train_patches(model, train, spec, seed=0)
    trained = evaluate_patches(model, test)
    assert stats.num_examples == 128 and math.isfinite(stats.loss)
    assert trained.metrics["roc_auc"] > 0.9, (untrained.metrics, trained.metrics)
    assert trained.loss < untrained.loss


def test_evaluate_scores_loss_and_batching() -> None:
    model = _small_model(1)
    test = _random_patches(10)
    ev = evaluate_patches(model, test, 0.5)
    assert (ev.num_examples, ev.num_positive) == (10, 4)  # labels 1 at 0, 3, 6, 9
    assert np.array_equal(ev.labels, test.y.numpy())
    p, y = ev.scores, ev.labels
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert ev.loss == pytest.approx(bce, rel=1e-5)
    assert ev.metrics == imaging_metrics(y, p, 0.5)
    in_threes = evaluate_patches(model, test, 0.5, batch_size=3)
    np.testing.assert_allclose(in_threes.scores, ev.scores, rtol=1e-5, atol=1e-7)


def test_non_finite_loss_raises_and_keeps_weights() -> None:
    model = _small_model(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    bad = _random_patches(8)
    bad.x[:, :, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="8 non-finite voxel"):
        train_patches(model, bad, TrainingSpec(lr=0.01), seed=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, start[key]), key


def test_empty_train_set_and_zero_epochs() -> None:
    model = _small_model(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    empty = PatchSet(torch.zeros(0, 1, 16, 16, 16), torch.zeros(0, dtype=torch.int64), [])
    stats = train_patches(model, empty, TrainingSpec(), seed=0)
    assert math.isnan(stats.loss) and stats.num_examples == 0
    stats = train_patches(model, _random_patches(6), TrainingSpec(), seed=0, epochs=0)
    assert math.isnan(stats.loss) and stats.num_examples == 6
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    ev = evaluate_patches(model, empty)
    assert math.isnan(ev.loss) and ev.num_examples == 0 and len(ev.scores) == 0
    with pytest.raises(ValueError, match="found -1"):
        train_patches(model, _random_patches(6), TrainingSpec(), seed=0, epochs=-1)
