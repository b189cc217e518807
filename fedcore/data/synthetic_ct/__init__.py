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

# The package's parts, in the order a scan is made; every public name is importable from
# fedcore.data.synthetic_ct itself.
from fedcore.data.synthetic_ct.anatomy import (
    AIR_HU,
    BLOOD_HU,
    FAT_HU,
    GGO_HU,
    LUNG_HU,
    MUSCLE_HU,
    RIB_CORTEX_HU,
    RIB_MARROW_HU,
    SKIN_HU,
)
from fedcore.data.synthetic_ct.candidates import (
    CANDIDATE_COLUMNS,
    REQUIRED_COLUMNS,
    Candidate,
    read_candidates,
)
from fedcore.data.synthetic_ct.nodules import (
    LOOKALIKE_KINDS,
    NODULE_KINDS,
    NoduleSpec,
    malignancy_probability,
    sample_nodule,
)
from fedcore.data.synthetic_ct.scan import generate_scan
from fedcore.data.synthetic_ct.scanners import SCANNERS, ScannerProfile, scanner_profile
from fedcore.data.synthetic_ct.series import RESCALE_INTERCEPT, write_series
from fedcore.data.synthetic_ct.site import generate_site

__all__ = [
    "AIR_HU",
    "BLOOD_HU",
    "CANDIDATE_COLUMNS",
    "FAT_HU",
    "GGO_HU",
    "LOOKALIKE_KINDS",
    "LUNG_HU",
    "MUSCLE_HU",
    "NODULE_KINDS",
    "REQUIRED_COLUMNS",
    "RESCALE_INTERCEPT",
    "RIB_CORTEX_HU",
    "RIB_MARROW_HU",
    "SCANNERS",
    "SKIN_HU",
    "Candidate",
    "NoduleSpec",
    "ScannerProfile",
    "generate_scan",
    "generate_site",
    "malignancy_probability",
    "read_candidates",
    "sample_nodule",
    "scanner_profile",
    "write_series",
]
