"""One synthetic chest CT slab as an HU volume with its candidates, in memory (no I/O)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage

from fedcore.data.synthetic_ct.anatomy import (
    BLOOD_HU,
    F64,
    _chest_wall,
    _Grid,
    _vessel_tree,
)
from fedcore.data.synthetic_ct.nodules import (
    _lookalike,
    _place,
    _Placed,
    _render_nodule,
    sample_nodule,
)
from fedcore.data.synthetic_ct.scanners import ScannerProfile

log = logging.getLogger(__name__)


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> F64:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k: F64 = np.exp(-0.5 * (x / sigma) ** 2)
    normalised: F64 = k / k.sum()
    return normalised


def _voxel_grid(scanner: ScannerProfile) -> _Grid:
    dz = scanner.slice_thickness_mm
    return _Grid(
        nz=scanner.slices,
        ny=scanner.matrix,
        nx=scanner.matrix,
        ps=scanner.pixel_spacing_mm,
        dz=dz,
        sub=max(1, math.ceil(dz / 1.0)),
    )


def generate_scan(
    rng: np.random.Generator, scanner: ScannerProfile, *, nodule_prob: float = 0.5
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Generate one chest CT slab as an HU volume with its candidates (pure, no I/O).

    With probability ``nodule_prob`` the scan holds one nodule (two with probability 0.25),
    plus look-alikes so that it has 1-4 candidates in all.

    Args:
        rng: Source of randomness; the same state gives the same scan.
        scanner: Acquisition profile (geometry, resolution, noise, calibration).
        nodule_prob: Probability that the scan contains at least one nodule, in [0, 1].

    Returns:
        ``(hu, candidates)``: ``hu`` is float32 ``[z, y, x]`` of shape
        ``(scanner.slices, scanner.matrix, scanner.matrix)``; each candidate is a dict with
        ``z``, ``y``, ``x`` (float voxel indices of the centre), ``nodule``, ``malignant``,
        ``diameter_mm``, ``kind`` and, for part-solid nodules, ``core_diameter_mm``.

    Raises:
        ValueError: ``nodule_prob`` is outside [0, 1].
    """
    if not 0.0 <= nodule_prob <= 1.0:
        raise ValueError(f"nodule_prob must be in [0, 1], got {nodule_prob!r}")
    grid = _voxel_grid(scanner)
    wall = _chest_wall(rng, grid)
    hu = wall.hu
    vessels = np.zeros_like(hu)
    n_segments = _vessel_tree(rng, grid, wall, vessels)

    placed: list[_Placed] = []
    n_nodules = (1 + int(rng.random() < 0.25)) if rng.random() < nodule_prob else 0
    specs = sorted((sample_nodule(rng) for _ in range(n_nodules)), key=lambda s: -s.diameter_mm)
    for spec in specs:
        for _ in range(20):
            centre = _place(rng, grid, wall, spec.diameter_mm / 2, placed)
            if centre is not None:
                break
            spec = sample_nodule(rng)  # no room (wall too thick, slab too thin): redraw
        else:
            raise RuntimeError(
                f"could not place a nodule in a {grid.nz}x{grid.ny}x{grid.nx} slab of scanner "
                f"{scanner.name!r}; use a larger matrix or more slices"
            )
        placed.append(
            _Placed(
                centre,
                spec.diameter_mm / 2,
                1,
                spec.malignant,
                spec.diameter_mm,
                spec.kind,
                spec.core_fraction,
            )
        )
    n_look = int(rng.integers(0 if n_nodules else 1, 5 - n_nodules))
    lookalikes: list[_Placed] = []
    for _ in range(n_look):
        found = _lookalike(rng, grid, wall, hu, vessels, placed + lookalikes)
        if found is not None:
            lookalikes.append(found)

    vessels[:, :, : wall.lung.shape[2]] *= wall.lung
    blend = np.float32(BLOOD_HU) - hu
    blend *= vessels
    hu += blend
    del blend
    for cand in placed:
        _render_nodule(rng, grid, hu, cand)

    # Noise enters before the in-plane reconstruction blur, so its grain follows the kernel;
    # it is scaled so that its standard deviation after the blur is the scanner's noise_hu.
    # Along z the slice profile is already modelled by sub-slice averaging.
    sigma = scanner.blur_sigma_mm / grid.ps
    gain = float((_gaussian_kernel(sigma, 3.0) ** 2).sum())
    noise_sd = scanner.noise_hu * float(rng.uniform(0.9, 1.1)) / gain
    # Pad with edge values (what mode="nearest" does) so that edge voxels get as much
    # independent noise under the kernel as inner ones.
    r = int(3.0 * sigma + 0.5)
    padded = np.pad(hu, ((0, 0), (r, r), (r, r)), mode="edge")
    noise = rng.standard_normal(padded.shape, dtype=np.float32)
    noise *= np.float32(noise_sd)
    padded += noise
    del noise
    padded += np.float32(scanner.hu_offset)
    blurred = ndimage.gaussian_filter(
        padded, sigma=(0.0, sigma, sigma), mode="nearest", truncate=3.0
    )
    hu = blurred[:, r : r + grid.ny, r : r + grid.nx]

    candidates: list[dict[str, Any]] = []
    for cand in placed + lookalikes:
        entry: dict[str, Any] = {
            "z": float(cand.centre[0] / grid.dz),
            "y": float(cand.centre[1] / grid.ps),
            "x": float(cand.centre[2] / grid.ps),
            "nodule": cand.nodule,
            "malignant": cand.malignant,
            "diameter_mm": float(cand.diameter_mm),
            "kind": cand.kind,
        }
        if cand.kind == "part-solid":
            entry["core_diameter_mm"] = float(cand.diameter_mm * cand.core_fraction)
        candidates.append(entry)
    log.debug(
        "generated %s scan: %d vessel segments, %d nodules, %d look-alikes",
        scanner.name,
        n_segments,
        len(placed),
        len(lookalikes),
    )
    return hu.astype(np.float32, copy=False), candidates
