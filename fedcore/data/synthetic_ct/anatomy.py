"""Chest slab phantom anatomy: tissue densities, the voxel grid, chest wall and lung, vessel trees."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

AIR_HU = -1000.0
LUNG_HU = -860.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
SKIN_HU = 30.0
BLOOD_HU = 40.0
RIB_CORTEX_HU = 800.0
RIB_MARROW_HU = 250.0
GGO_HU = -500.0


@dataclass(frozen=True)
class _Grid:
    """Voxel grid of one slab; ``sub`` sub-slices per slice model the slice thickness."""

    nz: int
    ny: int
    nx: int
    ps: float
    dz: float
    sub: int

    @property
    def extent(self) -> F64:
        """Largest (z, y, x) coordinate of a voxel centre, in mm."""
        return np.array([(self.nz - 1) * self.dz, (self.ny - 1) * self.ps, (self.nx - 1) * self.ps])

    def block(
        self, lo: F64, hi: F64
    ) -> tuple[tuple[slice, slice, slice], tuple[F32, F32, F32]] | None:
        """Voxel slices covering the mm box [lo, hi] and their mm coordinates (z sub-sampled)."""
        spacing = (self.dz, self.ps, self.ps)
        sizes = (self.nz, self.ny, self.nx)
        sl: list[slice] = []
        for a in range(3):
            i0 = max(0, math.floor(lo[a] / spacing[a]))
            i1 = min(sizes[a], math.ceil(hi[a] / spacing[a]) + 1)
            if i0 >= i1:
                return None
            sl.append(slice(i0, i1))
        z, y, x = self._coords
        z_sub = z[sl[0].start * self.sub : sl[0].stop * self.sub]
        return (sl[0], sl[1], sl[2]), (z_sub, y[:, sl[1], :], x[:, :, sl[2]])

    @cached_property
    def _coords(self) -> tuple[F32, F32, F32]:
        """mm coordinates: z of every sub-slice ``(nz * sub, 1, 1)``, y ``(1, ny, 1)``, x."""
        offsets = ((np.arange(self.sub) + 0.5) / self.sub - 0.5) * self.dz
        z = (np.arange(self.nz)[:, None] * self.dz + offsets[None, :]).reshape(-1)
        y = np.arange(self.ny) * self.ps
        x = np.arange(self.nx) * self.ps
        return (
            z.astype(np.float32)[:, None, None],
            y.astype(np.float32)[None, :, None],
            x.astype(np.float32)[None, None, :],
        )

    def collapse(self, occ: F32) -> F32:
        """Average the z sub-samples of a block back to slices."""
        nzs, ny, nx = occ.shape
        slices: F32 = occ.reshape(nzs // self.sub, self.sub, ny, nx).mean(axis=1, dtype=np.float32)
        return slices


def _unit(v: F64) -> F64:
    return v / math.sqrt(float((v * v).sum()))


def _cross(a: F64, b: F64) -> F64:
    """Cross product of two 3-vectors (np.cross costs ~0.5 ms a call)."""
    return np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )


def _random_rotation(rng: np.random.Generator) -> F64:
    q = _unit(rng.standard_normal(4))
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _turn(rng: np.random.Generator, direction: F64, angle_rad: float) -> F64:
    """``direction`` turned by ``angle_rad`` towards a random perpendicular."""
    perp = _cross(direction, rng.standard_normal(3))
    perp = _unit(perp)
    return _unit(math.cos(angle_rad) * direction + math.sin(angle_rad) * perp)


def _capsule(
    grid: _Grid, p0: F64, p1: F64, r0: float, r1: float
) -> tuple[tuple[slice, slice, slice], F32] | None:
    """Partial-volume occupancy of a tapered tube from p0 (radius r0) to p1 (radius r1)."""
    pad = max(r0, r1) + 0.5 * grid.ps
    found = grid.block(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad)
    if found is None:
        return None
    sl, (z, y, x) = found
    d = (p1 - p0).astype(np.float32)
    length2 = np.float32(max(float((d * d).sum()), 1e-9))
    az, ay, ax = z - np.float32(p0[0]), y - np.float32(p0[1]), x - np.float32(p0[2])
    # Squared distance to the segment: |a|^2 - 2 t (a.d) + t^2 |d|^2 with t clamped to [0, 1].
    a_dot_d = (az * d[0] + ay * d[1]) + ax * d[2]
    a2 = (az * az + ay * ay) + ax * ax
    t = np.clip(a_dot_d / length2, 0.0, 1.0)
    dist = np.sqrt(np.maximum(a2 - t * (2 * a_dot_d - t * length2), 0.0))
    # Linear partial-volume ramp one pixel wide around the (tapered) radius.
    inv = np.float32(1.0 / grid.ps)
    occ = np.clip((np.float32(r0) + t * np.float32(r1 - r0) - dist) * inv + 0.5, 0.0, 1.0)
    return sl, grid.collapse(occ)


def _blob(
    grid: _Grid,
    rng: np.random.Generator,
    centre: F64,
    radius: float,
    axes: tuple[float, float, float],
    lobulation: float,
    margin_mm: float,
) -> tuple[tuple[slice, slice, slice], F32] | None:
    """Partial-volume occupancy of a randomly rotated, lobulated ellipsoid."""
    rot = _random_rotation(rng)
    normals = np.stack([_unit(rng.standard_normal(3)) for _ in range(3)])
    freqs = rng.uniform(2.5, 5.0, size=3)
    phases = rng.uniform(0.0, 2 * math.pi, size=3)
    weights = rng.dirichlet(np.ones(3))
    reach = radius * max(axes) * (1.0 + lobulation) + 2 * margin_mm + grid.ps
    found = grid.block(centre - reach, centre + reach)
    if found is None:
        return None
    sl, (z, y, x) = found
    dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
    v = [rot[i, 0] * dz + rot[i, 1] * dy + rot[i, 2] * dx for i in range(3)]
    q = np.sqrt((v[0] / axes[0]) ** 2 + (v[1] / axes[1]) ** 2 + (v[2] / axes[2]) ** 2)
    norm = np.maximum(np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2), 1e-6)
    wave = sum(
        weights[m]
        * np.cos(
            freqs[m] * (v[0] * normals[m, 0] + v[1] * normals[m, 1] + v[2] * normals[m, 2]) / norm
            + phases[m]
        )
        for m in range(3)
    )
    surface = radius * (1.0 + lobulation * wave)
    occ = np.clip((surface - q) / max(margin_mm, grid.ps) + 0.5, 0.0, 1.0)
    return sl, grid.collapse(occ)


def _upsample(coarse: F64, shape: tuple[int, int, int]) -> F32:
    """Separable linear interpolation of a coarse field onto ``shape`` (corners aligned)."""
    out = coarse.astype(np.float32)
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        pos = np.linspace(0.0, m - 1.0, n)
        i0 = np.minimum(np.floor(pos).astype(int), m - 2)
        w = (pos - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        # np.take, not an interpolation matrix: BLAS threads thrash on a busy machine.
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
    result: F32 = np.ascontiguousarray(out, dtype=np.float32)
    return result


@dataclass(frozen=True)
class _Wall:
    pleura: F64  # (nz, ny) x of the pleura in mm
    hu: F32  # base volume: chest wall + lung parenchyma
    lung: F32  # (nz, ny, columns) 1 inside the lung, 0 in the wall; all columns beyond are lung


def _chest_wall(rng: np.random.Generator, grid: _Grid) -> _Wall:
    """Chest wall along the low-x edge, lung parenchyma elsewhere."""
    zc, yc = grid.extent[0] / 2, grid.extent[1] / 2
    z = np.arange(grid.nz)[:, None] * grid.dz
    y = np.arange(grid.ny)[None, :] * grid.ps
    freq = rng.uniform(1.0, 2.5, size=2) * 2 * math.pi / grid.extent[:2]
    phase = rng.uniform(0.0, 2 * math.pi, size=2)
    wobble = np.sin(freq[0] * z + phase[0]) + np.sin(freq[1] * y + phase[1])
    outer = (
        rng.uniform(5.0, 8.0)
        + rng.uniform(2.0, 5.0) * ((y - yc) / yc) ** 2
        + rng.uniform(-1.5, 1.5) * ((z - zc) / zc) ** 2
        + 0.5 * wobble
    )
    skin = rng.uniform(1.7, 2.3)
    fat = rng.uniform(3.0, 10.0)
    muscle = rng.uniform(4.0, 8.0)
    rib_layer = rng.uniform(7.0, 9.0)
    stripe = rng.uniform(0.5, 1.5)
    bounds = np.cumsum([skin, fat, muscle, rib_layer, stripe])
    pleura = outer + bounds[-1]

    # Parenchyma everywhere first: base level, gravity gradient towards the back (+y), texture.
    coarse = rng.standard_normal(
        (int(grid.extent[0] / 6) + 2, int(grid.extent[1] / 6) + 2, int(grid.extent[2] / 6) + 2)
    )
    hu = _upsample(coarse, (grid.nz, grid.ny, grid.nx))
    hu *= np.float32(rng.uniform(10.0, 16.0))
    gradient = (y / grid.extent[1]) * rng.uniform(15.0, 30.0) + rng.uniform(-15.0, 15.0) + LUNG_HU
    hu += gradient[:, :, None].astype(np.float32)

    # The wall only spans the first columns: compute its layers there.
    nxw = min(grid.nx, math.ceil((float(pleura.max()) + 1.0) / grid.ps) + 1)
    x = (np.arange(nxw) * grid.ps).astype(np.float32)
    depth = x[None, None, :] - outer[:, :, None].astype(np.float32)  # mm inside the body surface
    layer = (depth >= 0.0).view(np.uint8).copy()  # 0 air, 1 skin, 2 fat, 3 muscle, 4 fat, 5 lung
    for edge in (bounds[0], bounds[1], bounds[3], bounds[4]):
        layer += depth >= np.float32(edge)
    lut = np.array([AIR_HU, SKIN_HU, FAT_HU, MUSCLE_HU, FAT_HU, 0.0], dtype=np.float32)
    wall_hu = lut[layer]
    # Oblique ribs inside the rib layer: elliptical sections with cortex and marrow.
    period = rng.uniform(22.0, 28.0)
    slope = rng.uniform(0.25, 0.5)
    offset = rng.uniform(0.0, period)
    half_height = rng.uniform(3.5, 4.5)
    u = (depth - np.float32(bounds[2] + rib_layer / 2)) / np.float32(0.45 * rib_layer)
    along = (z - slope * (y - yc) - offset).astype(np.float32)[:, :, None]
    v = (along - np.float32(period) * np.round(along / np.float32(period))) / np.float32(
        half_height
    )
    q = u * u + v * v
    ribs = q < 1.0
    wall_hu[ribs] = np.where(q[ribs] > 0.55, RIB_CORTEX_HU, RIB_MARROW_HU)
    in_lung = layer == 5
    hu[:, :, :nxw] = np.where(in_lung, hu[:, :, :nxw], wall_hu)
    return _Wall(pleura=pleura, hu=hu, lung=in_lung.astype(np.float32))


def _pleura_at(wall: _Wall, grid: _Grid, p: F64) -> float:
    k = min(max(round(p[0] / grid.dz), 0), grid.nz - 1)
    j = min(max(round(p[1] / grid.ps), 0), grid.ny - 1)
    return float(wall.pleura[k, j])


def _vessel_tree(rng: np.random.Generator, grid: _Grid, wall: _Wall, occ: F32) -> int:
    """Branching vessels entering from the medial edge; returns the number of segments."""
    ext = grid.extent
    queue: deque[tuple[F64, F64, float, int]] = deque()
    for _ in range(int(rng.integers(8, 12))):
        face = rng.random()
        if face < 0.5:  # from the hilum side, heading lateral
            start = [rng.uniform(0.05, 0.95) * ext[0], rng.uniform(0.1, 0.9) * ext[1], ext[2] + 3]
            heading = [rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), -1.0]
        else:  # through the top or bottom of the slab, heading lateral and along z
            top = face < 0.75
            start = [ext[0] + 3 if top else -3.0, rng.uniform(0.1, 0.9) * ext[1], 0.0]
            start[2] = rng.uniform(0.55, 1.0) * ext[2]
            heading = [-1.0 if top else 1.0, rng.uniform(-0.4, 0.4), -rng.uniform(0.2, 0.8)]
        queue.append((np.array(start), _unit(np.array(heading)), float(rng.uniform(2.5, 6.0)), 0))
    segments = 0
    while queue and segments < 320:
        p0, direction, diameter, depth = queue.popleft()
        length = float(rng.uniform(7.0, 14.0)) * math.sqrt(diameter / 4.0)
        p1 = p0 + direction * length
        d_end = diameter * float(rng.uniform(0.9, 0.97))
        found = _capsule(grid, p0, p1, diameter / 2, d_end / 2)
        if found is not None:
            sl, block = found
            np.maximum(occ[sl], block, out=occ[sl])
        segments += 1
        inside = bool(np.all(p1 >= -2.0) and np.all(p1 <= ext + 2.0))
        if d_end < 1.0 or depth >= 12 or not inside or p1[2] < _pleura_at(wall, grid, p1) + 4.0:
            continue
        main = d_end * float(rng.uniform(0.85, 0.93))
        side = max((d_end**3 - main**3) ** (1 / 3), 0.8)
        queue.append((p1, _turn(rng, direction, math.radians(rng.uniform(8, 25))), main, depth + 1))
        queue.append(
            (p1, _turn(rng, direction, math.radians(rng.uniform(30, 65))), side, depth + 1)
        )
    return segments
