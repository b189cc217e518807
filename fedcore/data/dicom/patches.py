"""Resampling HU volumes to a spacing, cutting patches around a point, and windowing for a model."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage

from fedcore.data.dicom.volume import Volume

log = logging.getLogger(__name__)


def resample(
    volume: Volume, spacing: tuple[float, float, float] = (1.5, 1.5, 1.5), *, order: int = 1
) -> Volume:
    """Resample a volume to a new voxel spacing, keeping its origin and direction.

    The new shape is ``round(shape * old_spacing / new_spacing)`` per axis; voxel ``i`` of the
    result lies ``i * new_spacing`` from the origin. Values beyond the last voxel repeat the
    edge.

    Args:
        volume: the volume.
        spacing: new ``(z, y, x)`` spacing in mm (default 1.5 mm isotropic).
        order: spline order, 0 (nearest) to 5; default 1 (trilinear).

    Returns:
        A new volume; the input is not changed.
    """
    new = tuple(float(s) for s in spacing)
    if len(new) != 3 or not all(math.isfinite(s) and s > 0 for s in new):
        raise ValueError(f"spacing must be three positive (z, y, x) mm values, got {spacing!r}")
    if order not in range(6):
        raise ValueError(f"order must be an integer spline order 0..5, got {order!r}")
    shape = tuple(
        max(1, math.floor(n * old / s + 0.5))
        for n, old, s in zip(volume.hu.shape, volume.spacing, new, strict=True)
    )
    scale = np.array(new) / np.array(volume.spacing)
    hu = ndimage.affine_transform(
        volume.hu,
        scale,
        offset=0.0,
        output_shape=shape,
        output=np.float32,
        order=order,
        mode="nearest",
        prefilter=order > 1,
    )
    return replace(volume, hu=hu, spacing=(new[0], new[1], new[2]))


def extract_patch(
    volume: Volume,
    center_xyz_mm: Sequence[float] | np.ndarray,
    size: int | tuple[int, int, int],
    *,
    fill_hu: float = -1000.0,
) -> np.ndarray:
    """Cut a patch of the volume's voxels around a patient-space point.

    The point's nearest voxel becomes patch voxel ``(size_z // 2, size_y // 2, size_x // 2)``;
    voxels are copied as they are (resample first for an isotropic patch).

    Args:
        volume: the volume.
        center_xyz_mm: patient ``(x, y, z)`` mm of the patch centre.
        size: edge length in voxels, or ``(size_z, size_y, size_x)``.
        fill_hu: value for patch voxels outside the volume (default -1000, air).

    Returns:
        float32 ``[size_z, size_y, size_x]``.
    """
    sizes = (size,) * 3 if isinstance(size, int) else tuple(size)
    if len(sizes) != 3 or not all(isinstance(n, int | np.integer) and n > 0 for n in sizes):
        raise ValueError(
            f"size must be a positive int or three positive ints (z, y, x), got {size!r}"
        )
    centre = volume.world_to_voxel(center_xyz_mm)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(f"center_xyz_mm must be one finite (x, y, z) point, got {center_xyz_mm!r}")
    start = np.floor(centre + 0.5).astype(np.int64) - np.array(sizes) // 2
    out = np.full(sizes, fill_hu, dtype=np.float32)
    src: list[slice] = []
    dst: list[slice] = []
    for lo, n, extent in zip(start, sizes, volume.hu.shape, strict=True):
        a, b = max(int(lo), 0), min(int(lo) + n, extent)
        if a >= b:
            log.warning(
                "patch of size %s around %s mm (voxel %s) lies wholly outside series %s of shape "
                "%s; returned all fill_hu=%s",
                sizes,
                list(center_xyz_mm),
                np.round(centre, 1).tolist(),
                volume.series_uid,
                volume.hu.shape,
                fill_hu,
            )
            return out
        src.append(slice(a, b))
        dst.append(slice(a - int(lo), b - int(lo)))
    out[tuple(dst)] = volume.hu[tuple(src)]
    return out


def window(hu: np.ndarray, low: float = -1000.0, high: float = 400.0) -> np.ndarray:
    """Clip Hounsfield units to ``[low, high]`` and scale them to ``[0, 1]``.

    Args:
        hu: values in Hounsfield units.
        low: value mapped to 0 (default -1000, air).
        high: value mapped to 1 (default 400, soft tissue and bone edge).

    Returns:
        float32 array of the same shape; the input is not changed.
    """
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"window needs finite low < high, got low={low!r}, high={high!r}")
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.asarray(np.clip(scaled, 0.0, 1.0), dtype=np.float32)
