"""The Hounsfield-unit volume and the read report that DICOM reading gives back, and its errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class DicomError(ValueError):
    """A series (or a file given on its own) that cannot be assembled; the message names it."""


class _Unusable(Exception):
    """One file that cannot be used; ``message`` says why, ``problem`` whether to report it."""

    def __init__(self, message: str, *, problem: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.problem = problem


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image in patient space.

    Attributes:
        hu: float32 ``[z, y, x]`` values in Hounsfield units (for modalities other than CT,
            the rescaled stored values); ``z`` is the slice index along the slice normal.
        spacing: ``(z, y, x)`` voxel spacing in mm.
        origin: patient ``(x, y, z)`` mm of the centre of voxel ``[0, 0, 0]``
            (ImagePositionPatient of the first slice).
        direction: 3x3; its columns are the patient-space unit vectors of the x (column),
            y (row) and z (slice) voxel axes.
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        patient_id: PatientID.
        modality: Modality, e.g. ``"CT"``.
        missing_slices: slices found missing and filled by linear interpolation.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    series_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    modality: str = ""
    missing_slices: int = 0

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu, dtype=np.float32)
        if hu.ndim != 3 or 0 in hu.shape:
            raise ValueError(f"Volume.hu must be a non-empty [z, y, x] array, got shape {hu.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(
                f"Volume.spacing must be three positive (z, y, x) mm values, got {self.spacing!r}"
            )
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
            raise ValueError(
                f"Volume.origin must be three finite (x, y, z) mm, got {self.origin!r}"
            )
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or abs(float(np.linalg.det(direction))) < 1e-6:
            raise ValueError(
                "Volume.direction must be an invertible 3x3 matrix whose columns are the x, y, z "
                f"axis directions, got {direction.tolist()!r}"
            )
        if self.missing_slices < 0:
            raise ValueError(f"Volume.missing_slices must be >= 0, got {self.missing_slices}")
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    def _matrix(self) -> np.ndarray:
        """Voxel (x, y, z) index offsets to patient mm offsets."""
        sz, sy, sx = self.spacing
        return np.asarray(self.direction * np.array([sx, sy, sz]), dtype=np.float64)

    def voxel_to_world(self, zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Patient ``(x, y, z)`` mm of the (fractional) voxel ``(z, y, x)``.

        Args:
            zyx: voxel coordinates, shape ``(3,)`` or ``(n, 3)``.

        Returns:
            float64 patient coordinates of the same shape.
        """
        v = _triples(zyx, "zyx")
        return np.asarray(np.asarray(self.origin) + v[..., ::-1] @ self._matrix().T, np.float64)

    def world_to_voxel(self, xyz_mm: Sequence[float] | np.ndarray) -> np.ndarray:
        """Fractional voxel ``(z, y, x)`` of the patient point ``(x, y, z)`` mm.

        Args:
            xyz_mm: patient coordinates in mm, shape ``(3,)`` or ``(n, 3)``.

        Returns:
            float64 voxel coordinates of the same shape.
        """
        p = _triples(xyz_mm, "xyz_mm") - np.asarray(self.origin)
        ijk = p @ np.linalg.inv(self._matrix()).T
        return np.asarray(ijk[..., ::-1])


def _triples(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (3,) or (n, 3), got {arr.shape}")
    return arr


@dataclass(frozen=True)
class ReadReport:
    """What a folder or DICOMDIR yielded.

    Attributes:
        volumes: one per readable image series, in the order their first file was met.
        problems: one message per file or series that could not be (fully) used.
        skipped_files: every file that contributed nothing to ``volumes``.
    """

    volumes: list[Volume]
    problems: list[str]
    skipped_files: list[str]
