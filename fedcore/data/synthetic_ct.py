"""Seeded generator of synthetic chest CT slabs written as real DICOM series, with nodule candidates.

Each "scan" is a chest CT *slab* rather than a whole chest, so that scenarios can generate and
train on dozens of scans on a laptop CPU in minutes: a ``matrix x matrix`` axial grid (128 x 128
by default) at 0.74-0.86 mm pixel spacing covers about 95-110 mm of one lung region, and
``slices`` contiguous slices (``SpacingBetweenSlices == SliceThickness``) cover about 80-90 mm
along z. Whole-chest fields of view at this matrix would have 3 mm pixels, too coarse to show a
3 mm nodule; the slab keeps real CT resolution at a twentieth of the voxels, and a scan costs
about 0.2 s of one CPU core to generate and write.

Layout, in the slab frame (voxel ``(k, j, i)`` sits at ``(k * dz, j * ps, i * ps)`` mm): the chest
wall of the patient's right side lies along the low-x edge (air, skin, subcutaneous fat around
-100 HU, muscle around +45 HU, a rib layer with intercostal muscle and oblique ribs with cortex and
marrow, a thin extrapleural fat stripe), gently curved; lung parenchyma (around -860 HU, a
gravity-dependent gradient of up to +30 HU towards the back and a mild low-frequency texture)
fills the rest. Pulmonary vessel trees (+40 HU, non-contrast blood) enter from the medial
(high-x) edge and through the top and bottom of the slab and branch by Murray's law
(``d^3 = d1^3 + d2^3``), tapering from 2.5-6 mm to about 1 mm short of the pleura.

Candidates (1-4 per scan) are what a classifier sees:

* nodules (``nodule=1``): ellipsoids with lobulated margins, diameters ``3 * 10 ** (u ** 1.5)``
  mm with ``u`` uniform in [0, 1) (3-30 mm, median about 7 mm, most small); *solid* (+10..+50 HU,
  soft margin, occasionally a calcified core when benign) or *part-solid* (a ground-glass halo
  of -580..-420 HU that keeps the vessels inside it visible, around a solid core of 30-60 % of
  the diameter; only from 6 mm). Malignant nodules are more lobulated and usually spiculated.
* look-alikes (``nodule=0``): a vessel running through the slices (seen end-on it is a round
  blob in one axial slice), a vessel crossing, or a small plate-like scar. Telling them from a
  nodule needs the third dimension.

Malignancy (:func:`malignancy_probability`) is an illustrative, Brock-inspired logistic model,
not a clinical one: ``logit p = -1.6 + 2.0 * ln(d / 10 mm) + 1.0 * [part-solid]``, i.e. about
2 % at 3 mm, 17 % at 10 mm, 45 % at 20 mm and 65 % at 30 mm for solid nodules.

The acquisition differs per :class:`ScannerProfile`, which makes hospitals non-IID: pixel
spacing, slice thickness (partial volume is modelled by averaging sub-slices across each
slice), in-plane resolution (Gaussian blur of ``blur_sigma_mm``), noise (Gaussian, grain
correlated by the kernel, ``noise_hu`` standard deviation), a calibration offset of a few HU,
and the manufacturer, model, kernel and kVp in the header. Hospitals also differ in nodule
prevalence (``nodule_prob``).

:func:`write_series` writes one explicit-VR little-endian CT Image Storage file per slice
(signed int16, ``RescaleIntercept`` -1024), with deterministic UIDs, realistic fake identifying
attributes and a private block (so de-identification has work to do), under random hex file
names that do not sort in slice order. :func:`generate_site` writes a whole site plus its
``candidates.csv`` in the patient frame (LPS) of the written headers.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy import ndimage

from fedcore.storage import atomic_path

log = logging.getLogger(__name__)

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

RESCALE_INTERCEPT = -1024.0
"""Stored value = HU - RESCALE_INTERCEPT (signed int16, RescaleSlope 1)."""
_HU_MIN, _HU_MAX = -2048.0, 3071.0

NODULE_KINDS = ("solid", "part-solid")
LOOKALIKE_KINDS = ("vessel", "crossing", "scar")
CANDIDATE_COLUMNS = (
    "series_uid",
    "x_mm",
    "y_mm",
    "z_mm",
    "nodule",
    "malignant",
    "diameter_mm",
    "kind",
)
"""Header of ``candidates.csv``, in order."""
REQUIRED_COLUMNS = CANDIDATE_COLUMNS[:5]
"""Columns a candidates file must have; the others may be absent (see :func:`read_candidates`)."""

_PRIVATE_CREATOR = "FEDCORE SYNTHETIC CT"
_PRIVATE_GROUP = 0x0009
_UID_ROOT = "fedcore.synthetic_ct"


@dataclass(frozen=True)
class ScannerProfile:
    """One CT scanner model and protocol, as a hospital would have it.

    Attributes:
        name: Registry name, e.g. ``"ge-standard"``.
        manufacturer: DICOM ``Manufacturer``.
        model: DICOM ``ManufacturerModelName``.
        kernel: DICOM ``ConvolutionKernel``.
        pixel_spacing_mm: In-plane pixel spacing (rows and columns).
        slice_thickness_mm: Slice thickness, also the spacing between slices.
        noise_hu: Standard deviation of the image noise in HU.
        blur_sigma_mm: Gaussian in-plane resolution of the kernel (sharper kernels are smaller).
        hu_offset: Calibration offset added to every voxel, in HU.
        matrix: Rows and columns of each slice.
        slices: Number of slices per series.
        kvp: Tube voltage written to ``KVP``.
    """

    name: str
    manufacturer: str
    model: str
    kernel: str
    pixel_spacing_mm: float
    slice_thickness_mm: float
    noise_hu: float
    blur_sigma_mm: float
    hu_offset: float
    matrix: int = 128
    slices: int = 64
    kvp: int = 120

    def __post_init__(self) -> None:
        for field_name in ("pixel_spacing_mm", "slice_thickness_mm", "noise_hu", "blur_sigma_mm"):
            value = getattr(self, field_name)
            if not value > 0:
                raise ValueError(
                    f"ScannerProfile {self.name!r}: {field_name} must be > 0, got {value!r}"
                )
        if self.matrix < 96 or self.slices < 24:
            raise ValueError(
                f"ScannerProfile {self.name!r}: need matrix >= 96 and slices >= 24 to hold the "
                f"chest wall and a 30 mm nodule, got matrix={self.matrix}, slices={self.slices}"
            )


SCANNERS: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        ScannerProfile(
            name="siemens-sharp",
            manufacturer="SIEMENS",
            model="SOMATOM Definition AS+",
            kernel="B70f",
            pixel_spacing_mm=0.74,
            slice_thickness_mm=1.0,
            noise_hu=38.0,
            blur_sigma_mm=0.35,
            hu_offset=3.0,
            slices=80,
        ),
        ScannerProfile(
            name="ge-standard",
            manufacturer="GE MEDICAL SYSTEMS",
            model="LightSpeed VCT",
            kernel="STANDARD",
            pixel_spacing_mm=0.78,
            slice_thickness_mm=1.25,
            noise_hu=20.0,
            blur_sigma_mm=0.6,
            hu_offset=-2.0,
            slices=64,
        ),
        ScannerProfile(
            name="philips-smooth",
            manufacturer="Philips",
            model="Brilliance 64",
            kernel="A",
            pixel_spacing_mm=0.82,
            slice_thickness_mm=2.0,
            noise_hu=11.0,
            blur_sigma_mm=0.85,
            hu_offset=4.0,
            slices=44,
            kvp=100,
        ),
        ScannerProfile(
            name="canon-thick",
            manufacturer="TOSHIBA",
            model="Aquilion ONE",
            kernel="FC13",
            pixel_spacing_mm=0.86,
            slice_thickness_mm=2.5,
            noise_hu=15.0,
            blur_sigma_mm=0.75,
            hu_offset=-4.0,
            slices=36,
        ),
    )
}
"""Named scanner profiles; the scenario picks one per hospital."""


def scanner_profile(scanner: str | ScannerProfile) -> ScannerProfile:
    """Resolve a scanner name (or pass a profile through).

    Args:
        scanner: A key of :data:`SCANNERS` or a :class:`ScannerProfile`.

    Returns:
        The profile.

    Raises:
        KeyError: The name is not in :data:`SCANNERS`; the message lists the valid names.
    """
    if isinstance(scanner, ScannerProfile):
        return scanner
    try:
        return SCANNERS[scanner]
    except KeyError:
        raise KeyError(
            f"unknown scanner profile {scanner!r}; expected one of {sorted(SCANNERS)} "
            "or a ScannerProfile instance"
        ) from None


@dataclass(frozen=True)
class Candidate:
    """One candidate location in a written series, in the patient frame of its headers (mm).

    Attributes:
        series_uid: ``SeriesInstanceUID`` of the series holding the candidate.
        x_mm: Patient x (LPS) of the centre.
        y_mm: Patient y (LPS) of the centre.
        z_mm: Patient z (LPS) of the centre.
        nodule: 1 for a true nodule, 0 for a look-alike.
        malignant: 1 for a malignant nodule (never for a look-alike).
        diameter_mm: Nodule diameter; for a look-alike its apparent size (vessel diameter,
            scar length).
        kind: ``"solid"``, ``"part-solid"``, ``"vessel"``, ``"crossing"`` or ``"scar"``
            (``"unknown"`` when a hand-made candidates file leaves it out).
    """

    series_uid: str
    x_mm: float
    y_mm: float
    z_mm: float
    nodule: int
    malignant: int
    diameter_mm: float
    kind: str


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


# --------------------------------------------------------------------------- geometry helpers


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


# --------------------------------------------------------------------------- anatomy


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


# --------------------------------------------------------------------------- DICOM writing

_FAMILY = (
    "Andersen", "Bakker", "Costa", "Dubois", "Eriksson", "Fischer", "Garcia", "Horvat",
    "Ivanova", "Jansen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov",
    "Quinn", "Rossi", "Schmidt", "Tanaka", "Urbina", "Varga", "Weber", "Yilmaz", "Zielinski",
)  # fmt: skip
_GIVEN_F = ("Anna", "Clara", "Elena", "Fatima", "Greta", "Ines", "Julia", "Maria", "Nora", "Sofia")
_GIVEN_M = ("Adam", "Bruno", "Daniel", "Erik", "Felix", "Jonas", "Luca", "Marek", "Omar", "Peter")


def _seed_sequence(
    seed: int, hospital: str, patient_index: int, stream: int
) -> np.random.SeedSequence:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    if patient_index < 0:
        raise ValueError(f"patient_index must be >= 0, got {patient_index!r}")
    return np.random.SeedSequence([seed, zlib.crc32(hospital.encode()), patient_index, stream])


def _uid(seed: int, hospital: str, patient_index: int, *what: str) -> UID:
    return generate_uid(entropy_srcs=[_UID_ROOT, str(seed), hospital, str(patient_index), *what])


def _series_origin(seed: int, hospital: str, patient_index: int) -> tuple[float, float, float]:
    """ImagePositionPatient of the first slice: the lateral part of the right lung (LPS)."""
    rng = np.random.default_rng(_seed_sequence(seed, hospital, patient_index, 2))
    return (
        round(float(rng.uniform(-175.0, -160.0)), 3),
        round(float(rng.uniform(-80.0, -40.0)), 3),
        round(float(rng.uniform(-250.0, -120.0)), 3),
    )


def _ds(value: float) -> str:
    return f"{value:.4f}"


def _name(rng: np.random.Generator, sex: str = "") -> str:
    given = _GIVEN_F if sex == "F" else _GIVEN_M if sex == "M" else _GIVEN_F + _GIVEN_M
    return f"{rng.choice(_FAMILY)}^{rng.choice(given)}"


_PER_SLICE_TAGS = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)
"""SOPInstanceUID, InstanceNumber, ImagePositionPatient, SliceLocation, PixelData."""


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return fp.getvalue()


def _encode_runs(ds: Dataset) -> list[bytes]:
    """Explicit-VR LE encodings of the elements of ``ds`` before, between and after the
    per-slice tags."""
    runs = [Dataset() for _ in range(len(_PER_SLICE_TAGS) + 1)]
    for elem in ds:
        if elem.tag in _PER_SLICE_TAGS:
            raise ValueError(f"shared dataset must not hold per-slice element {elem.tag}")
        runs[sum(elem.tag > t for t in _PER_SLICE_TAGS)].add(elem)
    return [_encode(run) for run in runs]


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian data element (value padded to even length)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "OW") else b" "
    if vr in ("OB", "OW"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _file_meta(sop_uid: str, version_name: str) -> bytes:
    """Preamble, ``DICM`` prefix and file meta group of a CT Image Storage file."""
    body = b"".join(
        [
            _element(0x00020001, "OB", b"\x00\x01"),
            _element(0x00020002, "UI", CTImageStorage.encode()),
            _element(0x00020003, "UI", sop_uid.encode()),
            _element(0x00020010, "UI", ExplicitVRLittleEndian.encode()),
            _element(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID.encode()),
            _element(0x00020013, "SH", version_name.encode()),
        ]
    )
    length = _element(0x00020000, "UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + length + body


def write_series(
    hu: np.ndarray,
    out_dir: Path,
    *,
    scanner: ScannerProfile,
    seed: int,
    patient_index: int,
    hospital: str,
) -> tuple[str, list[Path]]:
    """Write an HU volume as a CT series, one DICOM file per slice.

    Slice ``k`` sits at ``ImagePositionPatient = (ox, oy, oz + k * slice_thickness)`` with axial
    orientation; the origin, UIDs, fake patient identity and file names are all derived from
    ``(seed, hospital, patient_index)``, so the same arguments give byte-identical files.

    Args:
        hu: Float HU volume ``[z, y, x]`` (e.g. from :func:`generate_scan`).
        out_dir: Folder for this series (created if needed).
        scanner: Profile giving spacing, thickness and the acquisition headers.
        seed: Site seed (>= 0).
        patient_index: Index of the patient within the site (>= 0).
        hospital: Hospital name, used in the headers and in the UID entropy.

    Returns:
        ``(series_instance_uid, files)`` with files in slice order.

    Raises:
        ValueError: ``hu`` is not a 3-D volume, or ``seed``/``patient_index`` is negative.
    """
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(
            f"hu must be a 3-D [z, y, x] volume, got shape {hu.shape}; pass the array returned "
            "by generate_scan"
        )
    rng = np.random.default_rng(_seed_sequence(seed, hospital, patient_index, 1))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nz, rows, cols = hu.shape
    origin = _series_origin(seed, hospital, patient_index)
    study_uid = _uid(seed, hospital, patient_index, "study")
    series_uid = _uid(seed, hospital, patient_index, "series")
    frame_uid = _uid(seed, hospital, patient_index, "frame")

    sex = str(rng.choice(["F", "M"]))
    study_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 2190)))
    age = int(rng.integers(50, 85))
    birth = study_date - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    study_time = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    words = re.findall(r"[A-Za-z0-9]+", hospital) or ["HSP"]
    site_code = ("".join(w[0] for w in words) if len(words) > 1 else words[0])[:3].upper()
    patient_id = f"{site_code}{int(rng.integers(1_000_000, 9_999_999))}"
    station = f"CT{int(rng.integers(1, 9)):02d}{site_code}"
    serial = str(zlib.crc32(f"{scanner.name}/{hospital}".encode()) % 90_000_000 + 10_000_000)

    version_name = "FEDCORE_SYNTH"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date.strftime(
        "%Y%m%d"
    )
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = f"A{int(rng.integers(100_000_000, 999_999_999))}"
    ds.Modality = "CT"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = f"{' '.join(words).title()} Medical Centre"[:64]
    ds.InstitutionAddress = f"{int(rng.integers(1, 200))} Hospital Road, Exampletown"
    ds.ReferringPhysicianName = _name(rng)
    ds.StationName = station
    ds.StudyDescription = "CT CHEST LOW DOSE"
    ds.SeriesDescription = f"Lung {scanner.slice_thickness_mm:g}mm {scanner.kernel}"
    ds.OperatorsName = _name(rng)
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = _name(rng, sex)
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = ds.InstitutionName
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientWeight = f"{rng.uniform(50.0, 110.0):.1f}"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(scanner.slice_thickness_mm)
    ds.KVP = str(scanner.kvp)
    ds.SpacingBetweenSlices = _ds(scanner.slice_thickness_mm)
    ds.DeviceSerialNumber = serial
    ds.SoftwareVersions = "fedcore-synthetic-ct 1"
    ds.XRayTubeCurrent = int(rng.integers(40, 200))
    ds.ConvolutionKernel = scanner.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(int(rng.integers(1000, 99999)))
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(scanner.pixel_spacing_mm), _ds(scanner.pixel_spacing_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    block = ds.private_block(_PRIVATE_GROUP, _PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", scanner.name)
    block.add_new(0x02, "LO", f"MRN {patient_id} / {ds.PatientName} / {hospital}"[:64])
    block.add_new(0x03, "LO", f"workstation {station} export")

    stored = (np.clip(np.rint(hu), _HU_MIN, _HU_MAX) - RESCALE_INTERCEPT).astype("<i2")
    # pydicom's writer costs ~6 ms a slice: encode the shared elements once with it and the
    # per-slice ones by hand (the bytes are exactly what pydicom.dcmwrite would write).
    shared = _encode_runs(ds)
    names: set[str] = set()
    files: list[Path] = []
    for k in range(nz):
        name = f"{int(rng.integers(0, 2**63)):016x}.dcm"
        while name in names:
            name = f"{int(rng.integers(0, 2**63)):016x}.dcm"
        names.add(name)
        sop_uid = _uid(seed, hospital, patient_index, "image", str(k))
        z = origin[2] + k * scanner.slice_thickness_mm
        own = (
            _element(0x00080018, "UI", sop_uid.encode()),
            _element(0x00200013, "IS", str(k + 1).encode()),
            _element(0x00200032, "DS", "\\".join(map(_ds, (origin[0], origin[1], z))).encode()),
            _element(0x00201041, "DS", _ds(z).encode()),
            _element(0x7FE00010, "OW", stored[k].tobytes()),
        )
        chunks = [_file_meta(sop_uid, version_name), shared[0]]
        for element, run in zip(own, shared[1:], strict=True):
            chunks += [element, run]
        path = out_dir / name
        path.write_bytes(b"".join(chunks))
        files.append(path)
    return str(series_uid), files


def generate_site(
    out_dir: Path | str,
    *,
    scans: int,
    scanner: str | ScannerProfile,
    seed: int,
    hospital: str = "hospital",
    nodule_prob: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> list[Candidate]:
    """Generate a hospital's scans as DICOM series plus ``candidates.csv``.

    Writes ``out_dir/patient_NNN/<hex>.dcm`` for each scan and then ``out_dir/candidates.csv``
    (columns :data:`CANDIDATE_COLUMNS`, coordinates in the patient frame of the headers). The
    same arguments give byte-identical files.

    Args:
        out_dir: Output folder (created if needed).
        scans: Number of scans (>= 1).
        scanner: Name in :data:`SCANNERS` or a profile.
        seed: Site seed (>= 0); ``hospital`` is mixed in, so two hospitals may share a seed.
        hospital: Hospital name, written in the headers.
        nodule_prob: Share of scans that contain a nodule (prevalence), in [0, 1].
        progress: Called with ``(done, scans)`` after each scan.

    Returns:
        All candidates, scan by scan.

    Raises:
        ValueError: ``scans`` < 1, ``nodule_prob`` outside [0, 1] or a negative seed.
        KeyError: Unknown scanner name.
        FileExistsError: A patient folder already holds DICOM files.
    """
    if scans < 1:
        raise ValueError(f"scans must be >= 1, got {scans!r}")
    if not 0.0 <= nodule_prob <= 1.0:
        raise ValueError(f"nodule_prob must be in [0, 1], got {nodule_prob!r}")
    profile = scanner_profile(scanner)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(scans):
        folder = root / f"patient_{i:03d}"
        if folder.is_dir() and any(folder.glob("*.dcm")):
            raise FileExistsError(
                f"{folder} already holds DICOM files; generate into an empty folder or delete "
                f"{root} first (stale slices would mix with the new series)"
            )
    started = time.perf_counter()
    candidates: list[Candidate] = []
    for i in range(scans):
        rng = np.random.default_rng(_seed_sequence(seed, hospital, i, 0))
        hu, found = generate_scan(rng, profile, nodule_prob=nodule_prob)
        series_uid, _ = write_series(
            hu,
            root / f"patient_{i:03d}",
            scanner=profile,
            seed=seed,
            patient_index=i,
            hospital=hospital,
        )
        ox, oy, oz = _series_origin(seed, hospital, i)
        ps, dz = profile.pixel_spacing_mm, profile.slice_thickness_mm
        for c in found:
            candidates.append(
                Candidate(
                    series_uid=series_uid,
                    x_mm=_round3(ox + c["x"] * ps),
                    y_mm=_round3(oy + c["y"] * ps),
                    z_mm=_round3(oz + c["z"] * dz),
                    nodule=int(c["nodule"]),
                    malignant=int(c["malignant"]),
                    diameter_mm=_round3(c["diameter_mm"]),
                    kind=str(c["kind"]),
                )
            )
        if progress is not None:
            progress(i + 1, scans)
    _write_candidates(root / "candidates.csv", candidates)
    log.info(
        "wrote %d %s scans for %s to %s in %.1f s (%d candidates, %d nodules)",
        scans,
        profile.name,
        hospital,
        root,
        time.perf_counter() - started,
        len(candidates),
        sum(c.nodule for c in candidates),
    )
    return candidates


def _round3(value: float) -> float:
    return float(f"{value:.3f}")


def _write_candidates(path: Path, candidates: list[Candidate]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CANDIDATE_COLUMNS)
        for c in candidates:
            writer.writerow(
                [
                    c.series_uid,
                    f"{c.x_mm:.3f}",
                    f"{c.y_mm:.3f}",
                    f"{c.z_mm:.3f}",
                    c.nodule,
                    c.malignant,
                    f"{c.diameter_mm:.3f}",
                    c.kind,
                ]
            )


def read_candidates(path: Path | str) -> list[Candidate]:
    """Read a ``candidates.csv`` written by :func:`generate_site`, or a hospital's own list.

    Columns :data:`REQUIRED_COLUMNS` must be present; ``malignant`` (default 0),
    ``diameter_mm`` (default 0, unknown) and ``kind`` (default ``"unknown"``) may be absent or
    left empty; extra columns are ignored. ``nodule`` and ``malignant`` must be 0 or 1, and
    only nodules can be malignant.

    Args:
        path: The CSV file (UTF-8, comma-separated, one header line).

    Returns:
        The candidates, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The header lacks a column or a value is malformed; the message names the
            file, the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"candidates file {path} not found; generate_site writes it as <out_dir>/candidates.csv"
        )
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            raise ValueError(
                f"{path}: file is empty; expected a header line {','.join(CANDIDATE_COLUMNS)}"
            )
        reader.fieldnames = header
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: line 1: missing column(s) {', '.join(repr(m) for m in missing)}; "
                f"found {','.join(header)}, expected at least {','.join(REQUIRED_COLUMNS)}"
            )
        out: list[Candidate] = []
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                found = len([v for v in row.values() if v is not None]) + len(row.get(None) or [])
                raise ValueError(
                    f"{path}: line {line}: expected {len(header)} fields like the header, "
                    f"found {found}"
                )
            out.append(_parse_row(path, line, row))
    return out


def _parse_row(path: Path, line: int, row: dict[str, str]) -> Candidate:
    def text(column: str, default: str = "") -> str:
        value = (row.get(column) or "").strip()
        return value or default

    def number(column: str, default: str = "") -> float:
        raw = text(column, default)
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"{path}: line {line}, column {column!r}: expected a number, found {raw!r}"
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"{path}: line {line}, column {column!r}: expected a finite number, found {raw!r}"
            )
        return value

    def flag(column: str, default: str = "") -> int:
        raw = text(column, default)
        if raw not in ("0", "1"):
            raise ValueError(
                f"{path}: line {line}, column {column!r}: expected 0 or 1, found {raw!r}"
            )
        return int(raw)

    series_uid = text("series_uid")
    if not series_uid:
        raise ValueError(f"{path}: line {line}, column 'series_uid': expected a UID, found ''")
    nodule, malignant = flag("nodule"), flag("malignant", "0")
    if malignant and not nodule:
        raise ValueError(
            f"{path}: line {line}, column 'malignant': found 1 for a candidate with nodule=0; "
            "only nodules can be malignant"
        )
    diameter = number("diameter_mm", "0")
    if diameter < 0:
        raise ValueError(
            f"{path}: line {line}, column 'diameter_mm': expected >= 0, found {text('diameter_mm')!r}"
        )
    return Candidate(
        series_uid=series_uid,
        x_mm=number("x_mm"),
        y_mm=number("y_mm"),
        z_mm=number("z_mm"),
        nodule=nodule,
        malignant=malignant,
        diameter_mm=diameter,
        kind=text("kind", "unknown"),
    )
