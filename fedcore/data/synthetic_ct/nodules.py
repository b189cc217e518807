"""Nodules and their look-alikes: drawn size, type and malignancy, placement and rendering in HU."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedcore.data.synthetic_ct.anatomy import (
    F32,
    F64,
    GGO_HU,
    _blob,
    _capsule,
    _cross,
    _Grid,
    _turn,
    _unit,
    _Wall,
)

NODULE_KINDS = ("solid", "part-solid")
LOOKALIKE_KINDS = ("vessel", "crossing", "scar")


@dataclass(frozen=True)
class NoduleSpec:
    """A drawn nodule before it is placed: size, type and label.

    Attributes:
        diameter_mm: Mean diameter, 3-30 mm.
        kind: ``"solid"`` or ``"part-solid"``.
        malignant: 1 if malignant.
        core_fraction: Solid-core diameter / diameter for part-solid nodules, 0 for solid ones.
    """

    diameter_mm: float
    kind: str
    malignant: int
    core_fraction: float


def malignancy_probability(diameter_mm: float, part_solid: bool) -> float:
    """Probability that a nodule is malignant (illustrative, Brock-inspired, not clinical).

    ``logit p = -1.6 + 2.0 * ln(diameter_mm / 10) + 1.0 * part_solid``.

    Args:
        diameter_mm: Nodule diameter in mm (> 0).
        part_solid: Whether the nodule is part-solid.

    Returns:
        The probability in (0, 1).

    Raises:
        ValueError: ``diameter_mm`` is not positive.
    """
    if not diameter_mm > 0:
        raise ValueError(f"diameter_mm must be > 0, got {diameter_mm!r}")
    logit = -1.6 + 2.0 * math.log(diameter_mm / 10.0) + (1.0 if part_solid else 0.0)
    return 1.0 / (1.0 + math.exp(-logit))


def sample_nodule(rng: np.random.Generator) -> NoduleSpec:
    """Draw one nodule's diameter, type and malignancy label.

    Diameters are ``3 * 10 ** (u ** 1.5)`` mm (u uniform), so most nodules are small; nodules of
    6 mm or more are part-solid with probability 0.3; the label is drawn from
    :func:`malignancy_probability`.

    Args:
        rng: Source of randomness.

    Returns:
        The drawn nodule.
    """
    diameter = 3.0 * 10.0 ** (float(rng.random()) ** 1.5)
    part_solid = diameter >= 6.0 and bool(rng.random() < 0.3)
    malignant = int(rng.random() < malignancy_probability(diameter, part_solid))
    core = float(rng.uniform(0.3, 0.6)) if part_solid else 0.0
    return NoduleSpec(diameter, "part-solid" if part_solid else "solid", malignant, core)


@dataclass
class _Placed:
    centre: F64  # mm, slab frame (z, y, x)
    radius: float
    nodule: int
    malignant: int
    diameter_mm: float
    kind: str
    core_fraction: float = 0.0


def _place(
    rng: np.random.Generator,
    grid: _Grid,
    wall: _Wall,
    radius: float,
    placed: list[_Placed],
    tries: int = 80,
) -> F64 | None:
    """A centre inside the lung, ``radius`` clear of the wall, the slab edges and other candidates."""
    ext = grid.extent
    lo_z, hi_z = radius + 3.0, ext[0] - radius - 3.0
    lo_y, hi_y = radius + 4.0, ext[1] - radius - 4.0
    if lo_z >= hi_z or lo_y >= hi_y:
        return None
    for _ in range(tries):
        z, y = rng.uniform(lo_z, hi_z), rng.uniform(lo_y, hi_y)
        k0, k1 = max(0, int((z - radius) / grid.dz)), int((z + radius) / grid.dz) + 1
        j0, j1 = max(0, int((y - radius) / grid.ps)), int((y + radius) / grid.ps) + 1
        lo_x = float(wall.pleura[k0:k1, j0:j1].max()) + 1.2 * radius + 2.5
        hi_x = ext[2] - radius - 3.0
        if lo_x >= hi_x:
            continue
        centre = np.array([z, y, rng.uniform(lo_x, hi_x)])
        if all(math.dist(centre, o.centre) >= radius + o.radius + 4.0 for o in placed):
            return centre
    return None


def _render_nodule(rng: np.random.Generator, grid: _Grid, hu: F32, cand: _Placed) -> None:
    radius = cand.radius
    lobulation = rng.uniform(0.12, 0.25) if cand.malignant else rng.uniform(0.03, 0.10)
    axes = (1.0, float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.8, 1.0)))
    margin = float(rng.uniform(0.5, 0.9))
    if cand.kind == "part-solid":
        outer = _blob(grid, rng, cand.centre, radius, axes, lobulation, margin)
        if outer is not None:
            sl, occ = outer
            ggo = np.float32(rng.uniform(GGO_HU - 80.0, GGO_HU + 80.0))
            region = hu[sl]
            hu[sl] = region + occ * (np.maximum(region, ggo) - region)
        core_radius = radius * cand.core_fraction
        shift = _unit(rng.standard_normal(3)) * radius * (1 - cand.core_fraction) * 0.3
        core = _blob(grid, rng, cand.centre + shift, core_radius, axes, lobulation / 2, margin)
    else:
        core = _blob(grid, rng, cand.centre, radius, axes, lobulation, margin)
    if core is None:
        return
    sl, occ = core
    solid = np.float32(rng.uniform(10.0, 50.0) if cand.kind == "solid" else rng.uniform(0.0, 40.0))
    hu[sl] = hu[sl] + occ * (solid - hu[sl])
    if rng.random() < (0.75 if cand.malignant else 0.08):  # spiculated margin
        for _ in range(int(rng.integers(4, 9))):
            tip = cand.centre + _unit(rng.standard_normal(3)) * radius * rng.uniform(1.3, 1.9)
            found = _capsule(grid, cand.centre, tip, 0.7, 0.25)
            if found is not None:
                ssl, socc = found
                hu[ssl] = hu[ssl] + socc * (solid - hu[ssl])
    if cand.kind == "solid" and not cand.malignant and radius >= 2.5 and rng.random() < 0.15:
        calc = _blob(grid, rng, cand.centre, radius * rng.uniform(0.3, 0.55), (1, 1, 1), 0.1, 0.5)
        if calc is not None:
            csl, cocc = calc
            hu[csl] = hu[csl] + cocc * (np.float32(rng.uniform(300.0, 700.0)) - hu[csl])


def _lookalike(
    rng: np.random.Generator, grid: _Grid, wall: _Wall, hu: F32, vessels: F32, placed: list[_Placed]
) -> _Placed | None:
    kind = str(rng.choice(LOOKALIKE_KINDS, p=[0.45, 0.35, 0.20]))
    if kind == "vessel":
        diameter = float(rng.uniform(3.0, 6.0))
        centre = _place(rng, grid, wall, diameter / 2 + 1.0, placed)
        if centre is None:
            return None
        axis = _turn(rng, np.array([1.0, 0.0, 0.0]), math.radians(rng.uniform(0, 20)))
        before, after = rng.uniform(15.0, 30.0), rng.uniform(15.0, 30.0)
        taper = float(rng.uniform(0.85, 1.0))
        found = _capsule(
            grid, centre - axis * before, centre + axis * after, diameter / 2, diameter * taper / 2
        )
        if found is not None:
            sl, block = found
            np.maximum(vessels[sl], block, out=vessels[sl])
        return _Placed(centre, diameter / 2 + 1.0, 0, 0, diameter, kind)
    if kind == "crossing":
        d1, d2 = float(rng.uniform(2.5, 4.5)), float(rng.uniform(2.0, 4.0))
        centre = _place(rng, grid, wall, max(d1, d2) / 2 + 2.0, placed)
        if centre is None:
            return None
        a1 = _unit(rng.standard_normal(3))
        a2 = _turn(rng, a1, math.radians(rng.uniform(45, 90)))
        offset = _unit(_cross(a1, a2)) * rng.uniform(0.0, 0.4) * min(d1, d2)
        for axis, diameter, shift in ((a1, d1, offset), (a2, d2, -offset)):
            half = rng.uniform(12.0, 20.0)
            found = _capsule(
                grid,
                centre + shift - axis * half,
                centre + shift + axis * half,
                diameter / 2,
                diameter / 2,
            )
            if found is not None:
                sl, block = found
                np.maximum(vessels[sl], block, out=vessels[sl])
        return _Placed(centre, max(d1, d2) / 2 + 2.0, 0, 0, max(d1, d2), kind)
    length = float(rng.uniform(8.0, 16.0))
    centre = _place(rng, grid, wall, length / 2, placed)
    if centre is None:
        return None
    axes = (1.0, float(rng.uniform(0.3, 0.5)), float(rng.uniform(1.2, 2.5)) / length)
    found = _blob(grid, rng, centre, length / 2, axes, 0.15, 0.5)
    if found is not None:
        sl, occ = found
        hu[sl] = hu[sl] + occ * (np.float32(rng.uniform(-250.0, 0.0)) - hu[sl])
    return _Placed(centre, length / 2, 0, 0, length, kind)
