"""Read CT series from DICOM folders and DICOMDIRs into Hounsfield-unit volumes; resample; cut patches."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID
from scipy import ndimage

__all__ = [
    "DicomError",
    "ReadReport",
    "Volume",
    "extract_patch",
    "read_any",
    "read_dicomdir",
    "read_folder",
    "read_series",
    "resample",
    "window",
]

log = logging.getLogger(__name__)

# Elements larger than this are read from disk only when used, so that series skipped by
# modality never have their pixel data loaded.
_DEFER_SIZE = 16 * 1024
# Two slices whose positions along the normal differ by less than this are duplicates.
_DUPLICATE_MM = 0.01
# A step between slices larger than this multiple of the median step is a gap.
_GAP_FACTOR = 1.5
# Steps (gaps filled) further than this fraction from their median are reported as irregular.
_IRREGULAR = 0.1
# Direction cosines of two slices of one series may differ by this much.
_ORIENTATION_TOL = 1e-3
# Pixel spacings of two slices of one series may differ by this fraction.
_SPACING_RTOL = 1e-3
# Largest number of slices a series may grow to when its gaps are filled.
_MAX_SLICES = 4096
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_CONVERT_HINT = (
    "convert it to an uncompressed transfer syntax first, e.g. `gdcmconv --raw in.dcm out.dcm`"
)
# Packages that decode each compressed transfer syntax through pydicom.
_DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg + pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg + pylibjpeg-rle (pydicom also has a slower built-in decoder)",
}


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


@dataclass
class _Slice:
    path: Path
    ds: Dataset
    position: np.ndarray  # ImagePositionPatient, mm
    row_dir: np.ndarray  # unit vector along a row: the x (column index) axis
    col_dir: np.ndarray  # unit vector along a column: the y (row index) axis
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    shape: tuple[int, int]
    instance: int
    along: float = 0.0  # position projected on the slice normal


@dataclass
class _Assembled:
    volume: Volume
    dropped: list[Path]


def _label(uid: str, items: Sequence[tuple[Path, Dataset]]) -> str:
    modality = str(items[0][1].get("Modality", "") or "?")
    return f"series {uid} ({modality}, {len(items)} file(s) in {items[0][0].parent})"


def _numbers(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        arr = np.array([float(v) for v in (value if count > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise DicomError(
            f"{path}: {keyword} is {value!r}; expected {count} finite number(s) (fix the header)"
        )
    return arr


def _number(ds: Dataset, keyword: str, default: float, path: Path) -> float:
    arr = _numbers(ds, keyword, 1, path)
    return default if arr is None else float(arr[0])


def _geometry(path: Path, ds: Dataset, label: str) -> _Slice:
    """Read and check the geometry headers of one slice; raises DicomError naming the file."""
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise DicomError(
            f"{label}: {path} is a multi-frame image (NumberOfFrames={frames}); only single-frame "
            "slices are supported, export the series as one file per slice"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise DicomError(
            f"{label}: {path} is a colour image (SamplesPerPixel={samples}, "
            f"PhotometricInterpretation={ds.get('PhotometricInterpretation')!r}); expected greyscale"
        )
    position = _numbers(ds, "ImagePositionPatient", 3, path)
    orientation = _numbers(ds, "ImageOrientationPatient", 6, path)
    if position is None or orientation is None:
        raise DicomError(
            f"{label}: {path} has no ImagePositionPatient/ImageOrientationPatient, so it cannot be "
            "placed in patient space (projection images such as CR/DX have no 3D geometry); "
            "only cross-sectional images (CT, MR, PET) form a volume"
        )
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if spacing is None or np.any(spacing <= 0):
        raise DicomError(
            f"{label}: {path} has PixelSpacing {ds.get('PixelSpacing')!r}; expected two positive "
            "mm values (row spacing, column spacing)"
        )
    row_dir, col_dir = orientation[:3], orientation[3:]
    norms = (float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir)))
    if min(norms) < 1e-6 or abs(float(row_dir @ col_dir)) / (norms[0] * norms[1]) > 1e-3:
        raise DicomError(
            f"{label}: {path} has ImageOrientationPatient {orientation.tolist()}; expected two "
            "orthogonal direction cosines"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise DicomError(
            f"{label}: {path} has Rows={rows}, Columns={cols}; expected positive sizes"
        )
    instance = ds.get("InstanceNumber")
    return _Slice(
        path=path,
        ds=ds,
        position=position,
        row_dir=row_dir / norms[0],
        col_dir=col_dir / norms[1],
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        shape=(rows, cols),
        instance=int(instance) if instance not in (None, "") else 0,
    )


def _decode_message(path: Path, ds: Dataset, error: Exception) -> str:
    """Why the pixel data of ``path`` could not be decoded, and what to install or do."""
    error_text = " ".join(str(error).split())  # pydicom's messages span several lines
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsuid:
        return (
            f"{path}: pixel data could not be decoded ({error_text}); the file meta has no "
            "TransferSyntaxUID, the file is probably truncated or damaged"
        )
    uid = UID(str(tsuid))
    syntax = f"transfer syntax {uid.name} [{uid}]" if uid.name != uid else f"transfer syntax {uid}"
    packages = _DECODER_PACKAGES.get(str(uid))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (
            f"{path}: pixel data could not be decoded ({syntax}): pydicom has no decoder for this "
            f"transfer syntax; {_CONVERT_HINT}"
        )
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        return (
            f"{path}: pixel data could not be decoded ({syntax}): no decoder is installed; "
            f"install {packages or 'a decoder plugin'} (pydicom reports: {missing})"
        )
    if uid.is_compressed:
        alt = f"; decoders for this syntax come from {packages}" if packages else ""
        return (
            f"{path}: pixel data could not be decoded ({syntax}): {error_text}; the compressed data is "
            f"probably corrupt or truncated{alt}, or {_CONVERT_HINT}"
        )
    return (
        f"{path}: pixel data could not be decoded ({syntax}): {error_text}; the file is probably "
        f"truncated ({path.stat().st_size if path.exists() else '?'} bytes on disk), re-export it"
    )


def _to_hu(s: _Slice) -> np.ndarray:
    """The slice in Hounsfield units (its own rescale slope and intercept); raises _Unusable."""
    ds = s.ds
    try:
        stored = pixel_array(ds)  # unlike ds.pixel_array, keeps no decoded copy on the dataset
    except Exception as e:  # decoders raise many types; each is reported for this file only
        raise _Unusable(_decode_message(s.path, ds, e)) from e
    finally:
        del ds.PixelData  # the encoded bytes are no longer needed
    if stored.shape != s.shape:
        raise _Unusable(
            f"{s.path}: pixel data decoded to shape {stored.shape}; expected (Rows, Columns) = "
            f"{s.shape}"
        )
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    slope = _number(ds, "RescaleSlope", 1.0, s.path)
    intercept = _number(ds, "RescaleIntercept", 0.0, s.path)
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _z_spacing_single(s: _Slice, label: str, notes: list[str]) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _number(s.ds, keyword, 0.0, s.path)
        if value > 0:
            return abs(value)
    notes.append(
        f"{label}: one slice without SpacingBetweenSlices or SliceThickness; z spacing set to 1 mm"
    )
    return 1.0


def _files_named(paths: Sequence[Path], limit: int = 3) -> str:
    names = ", ".join(str(p) for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _assemble(
    uid: str, items: Sequence[tuple[Path, Dataset]], notes: list[str], *, strict: bool
) -> _Assembled:
    """Build one series' volume. Raises DicomError when the series cannot be assembled at all.

    Messages about slices that could not be used are appended to ``notes`` (also when the
    series then fails). With ``strict`` a slice whose pixel data cannot be decoded raises;
    otherwise it is dropped with a note (and, if inside the stack, becomes a filled gap).
    """
    label = _label(uid, items)
    dropped: list[Path] = []
    slices = [_geometry(path, ds, label) for path, ds in items]
    first = slices[0]
    for s in slices[1:]:
        if s.shape != first.shape:
            raise DicomError(
                f"{label}: slices differ in size: {first.path} is {first.shape[0]}x{first.shape[1]}"
                f", {s.path} is {s.shape[0]}x{s.shape[1]} (Rows x Columns); expected one size per "
                "series"
            )
        tilt = max(
            float(np.abs(s.row_dir - first.row_dir).max()),
            float(np.abs(s.col_dir - first.col_dir).max()),
        )
        if tilt > _ORIENTATION_TOL:
            raise DicomError(
                f"{label}: slices differ in orientation: {first.path} has ImageOrientationPatient "
                f"{np.round(np.r_[first.row_dir, first.col_dir], 5).tolist()}, {s.path} has "
                f"{np.round(np.r_[s.row_dir, s.col_dir], 5).tolist()}; expected parallel slices "
                "(a localizer or multi-plane series cannot form one volume)"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=_SPACING_RTOL, atol=0):
            raise DicomError(
                f"{label}: slices differ in PixelSpacing: {first.path} has "
                f"{list(first.pixel_spacing)}, {s.path} has {list(s.pixel_spacing)}; expected one "
                "spacing per series"
            )
    normal = np.cross(first.row_dir, first.col_dir)
    normal /= np.linalg.norm(normal)
    for s in slices:
        s.along = float(s.position @ normal)
    slices.sort(key=lambda s: (s.along, s.instance, str(s.path)))

    kept: list[_Slice] = []
    duplicates: list[Path] = []
    for s in slices:
        if kept and s.along - kept[-1].along < _DUPLICATE_MM:
            duplicates.append(s.path)
        else:
            kept.append(s)
    if duplicates:
        notes.append(
            f"{label}: {len(duplicates)} slice(s) repeat the position of another slice; kept the "
            f"one with the lowest InstanceNumber, ignored {_files_named(duplicates)}"
        )
        dropped.extend(duplicates)

    decoded: list[tuple[_Slice, np.ndarray]] = []
    for s in kept:
        try:
            decoded.append((s, _to_hu(s)))
        except _Unusable as e:
            if strict:
                raise DicomError(f"{label}: {e.message}") from e
            notes.append(e.message)
            dropped.append(s.path)
    if not decoded:
        raise DicomError(f"{label}: none of its {len(kept)} slice(s) could be decoded")

    # The usual step comes from every usable position, undecodable slices included; the lower
    # quartile stays right when up to three quarters of the steps are gaps.
    all_steps = np.diff([s.along for s in kept])
    usual = float(np.percentile(all_steps, 25, method="lower")) if all_steps.size else 0.0
    along = np.array([s.along for s, _ in decoded])
    z_dir = normal
    if len(decoded) == 1:
        z_spacing = _z_spacing_single(decoded[0][0], label, notes)
        counts = np.zeros(0, dtype=np.int64)
    else:
        steps = np.diff(along)
        gaps = steps > _GAP_FACTOR * usual
        counts = np.where(gaps, np.maximum(np.rint(steps / usual).astype(np.int64) - 1, 1), 0)
        filled = steps / (counts + 1)
        median = float(np.median(filled))
        if float(np.abs(filled - median).max()) > _IRREGULAR * median:
            notes.append(
                f"{label}: slice spacing varies from {filled.min():.3f} to {filled.max():.3f} mm"
                f" (median {median:.3f} mm); the volume assumes a uniform {median:.3f} mm"
            )
        travel = decoded[-1][0].position - decoded[0][0].position
        cos = float(travel @ normal) / float(np.linalg.norm(travel))
        if cos < 0.5:
            raise DicomError(
                f"{label}: slice positions do not advance along the slice normal (angle "
                f"{math.degrees(math.acos(cos)):.0f} degrees); expected a stack of parallel slices"
            )
        if cos < 1 - 1e-4:
            z_dir = travel / float(np.linalg.norm(travel))
            notes.append(
                f"{label}: slices are shifted in-plane from one to the next (gantry tilt "
                f"{math.degrees(math.acos(cos)):.1f} degrees); the volume's z axis follows the "
                "slice positions, so its axes are not orthogonal"
            )
        z_spacing = median / cos
    total = len(decoded) + int(counts.sum())
    if total > _MAX_SLICES:
        raise DicomError(
            f"{label}: filling the gaps between its {len(decoded)} slices would need {total} "
            f"slices (more than {_MAX_SLICES}); the positions look wrong or most slices are missing"
        )

    planes: list[np.ndarray] = []
    for i, (s, hu) in enumerate(decoded):
        if i > 0 and counts[i - 1]:
            k = int(counts[i - 1])
            before = planes[-1]
            for j in range(1, k + 1):
                t = j / (k + 1)
                planes.append(((1 - t) * before + t * hu).astype(np.float32))
            notes.append(
                f"{label}: {k} slice(s) missing between z={decoded[i - 1][0].along:.2f} and "
                f"z={s.along:.2f} mm; filled by linear interpolation between the neighbouring slices"
            )
        planes.append(hu)

    head = decoded[0][0]
    ds = head.ds
    volume = Volume(
        hu=np.stack(planes),
        spacing=(z_spacing, head.pixel_spacing[0], head.pixel_spacing[1]),
        origin=(float(head.position[0]), float(head.position[1]), float(head.position[2])),
        direction=np.column_stack([head.row_dir, head.col_dir, z_dir]),
        series_uid=uid,
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        missing_slices=int(counts.sum()),
    )
    return _Assembled(volume=volume, dropped=dropped)


def _load(path: Path) -> Dataset:
    """Read one file's headers (pixel data deferred); raises _Unusable for anything but an image."""
    try:
        ds = pydicom.dcmread(path, force=False, defer_size=_DEFER_SIZE)
    except OSError as e:
        raise _Unusable(f"{path}: cannot be read ({e})") from e
    except InvalidDicomError as e:
        size = path.stat().st_size
        why = (
            "empty file"
            if size == 0
            else "no 'DICM' marker after the 128-byte preamble; a dataset without file meta "
            "must be re-exported as a DICOM Part 10 file"
        )
        raise _Unusable(f"{path}: not a DICOM file ({why})") from e
    except Exception as e:  # pydicom raises many types on damaged files; report, read the rest
        raise _Unusable(f"{path}: not a DICOM file ({type(e).__name__}: {e})") from e
    media_class = ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    if media_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        log.info("%s: a DICOMDIR index; skipped, the images it lists are read as files", path)
        raise _Unusable(f"{path}: DICOMDIR index, not an image", problem=False)
    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        sop_name = UID(str(sop)).name if sop else "no SOPClassUID"
        if "Image Storage" in sop_name or "Rows" in ds:
            raise _Unusable(
                f"{path}: {sop_name} without Pixel Data; the file is probably truncated "
                f"({path.stat().st_size} bytes), re-export it"
            )
        raise _Unusable(
            f"{path}: not an image ({sop_name}, modality {ds.get('Modality', '?')}); skipped"
        )
    if not ds.get("SeriesInstanceUID"):
        raise _Unusable(f"{path}: image without SeriesInstanceUID; cannot tell its series, skipped")
    return ds


def _read_paths(paths: Iterable[Path], modality: str | None) -> ReadReport:
    """Load, group by SeriesInstanceUID and assemble; every failure becomes a problem."""
    problems: list[str] = []
    skipped: list[str] = []
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in paths:
        try:
            ds = _load(path)
        except _Unusable as e:
            skipped.append(str(path))
            if e.problem:
                problems.append(e.message)
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))

    volumes: list[Volume] = []
    for uid, items in groups.items():
        found = str(items[0][1].get("Modality", "") or "")
        if modality is not None and found.upper() != modality.upper():
            problems.append(
                f"{_label(uid, items)}: modality {found or '(none)'}, expected {modality}; "
                "skipped (pass modality=None to read every modality)"
            )
            skipped.extend(str(p) for p, _ in items)
            continue
        notes: list[str] = []
        try:
            done = _assemble(uid, items, notes, strict=False)
        except DicomError as e:
            problems.extend(notes)
            problems.append(str(e))
            skipped.extend(str(p) for p, _ in items)
            continue
        volumes.append(done.volume)
        problems.extend(notes)
        skipped.extend(str(p) for p in done.dropped)
    for problem in problems:
        log.warning("%s", problem)
    return ReadReport(volumes=volumes, problems=problems, skipped_files=skipped)


def read_series(files: Sequence[Path | str]) -> Volume:
    """Assemble the files of one series into a volume.

    Slices are ordered by the projection of ImagePositionPatient on the slice normal (the
    cross product of the ImageOrientationPatient cosines), never by file name or
    InstanceNumber, and rescaled to Hounsfield units slice by slice (RescaleSlope and
    RescaleIntercept, default 1 and 0). The z spacing is the median step between positions
    (SpacingBetweenSlices, then SliceThickness, for a single slice). A step more than 1.5
    times the usual one is a gap: the missing slices are filled by linear interpolation
    between the two neighbours so that voxel ``k`` lies ``k`` steps from the first slice, and
    counted in :attr:`Volume.missing_slices`. Of slices sharing a position, the one with the
    lowest InstanceNumber is kept. Gaps and duplicates are logged as warnings here and
    reported in :attr:`ReadReport.problems` by the folder readers.

    Args:
        files: the series' DICOM files, in any order.

    Returns:
        The series as a volume in Hounsfield units.

    Raises:
        DicomError: a file is not a usable DICOM image, the files belong to several series,
            or the slices cannot form one volume (sizes, orientations or spacings differ).
    """
    if not files:
        raise DicomError("read_series: got no files; expected the DICOM files of one series")
    items: list[tuple[Path, Dataset]] = []
    for f in files:
        path = Path(f)
        try:
            items.append((path, _load(path)))
        except _Unusable as e:
            raise DicomError(e.message) from e
    uids = sorted({str(ds.SeriesInstanceUID) for _, ds in items})
    if len(uids) > 1:
        raise DicomError(
            f"read_series: the {len(items)} files belong to {len(uids)} series ({', '.join(uids)}); "
            "expected one series, use read_folder() to split them"
        )
    notes: list[str] = []
    try:
        return _assemble(uids[0], items, notes, strict=True).volume
    finally:
        for note in notes:
            log.warning("%s", note)


def read_folder(path: Path | str, *, modality: str | None = "CT") -> ReadReport:
    """Read every image series under a folder (recursively), one volume per SeriesInstanceUID.

    Series are assembled as by :func:`read_series`. Nothing stops the reading: a file that is
    not DICOM, not an image, truncated or undecodable, and a series that cannot form a volume
    (or has another modality) each get one message in the report, and the rest is read. A
    slice whose pixel data cannot be decoded is left out of its series; inside the stack it
    becomes a gap, filled and reported like any missing slice.

    Args:
        path: the folder.
        modality: keep only series of this Modality (case-insensitive); ``None`` keeps all.
            Series of another modality are skipped with a message.

    Returns:
        The volumes, with one message per file or series that could not be (fully) used.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DicomError: ``path`` is a file, not a folder.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder; expected a folder of DICOM files")
    if not root.is_dir():
        raise DicomError(
            f"{root}: expected a folder of DICOM files, found a file; use read_any() for files"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        log.warning("%s: no files found", root)
        return ReadReport(volumes=[], problems=[f"{root}: no files found"], skipped_files=[])
    return _read_paths(files, modality)


def read_dicomdir(path: Path | str, *, modality: str | None = None) -> ReadReport:
    """Read the image series listed in a DICOMDIR.

    Files are found through the DICOMDIR's IMAGE records; records of other types (RT plans,
    reports, ...) and listed files missing on disk are reported. Series are assembled from
    the files' own headers, as by :func:`read_folder`.

    Args:
        path: the DICOMDIR file.
        modality: keep only series of this Modality; ``None`` keeps all.

    Returns:
        The volumes, with one message per record, file or series that could not be used.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DicomError: ``path`` is not a readable DICOMDIR.
    """
    dicomdir = Path(path)
    if not dicomdir.is_file():
        raise FileNotFoundError(f"{dicomdir}: no such file; expected a DICOMDIR file")
    try:
        ds = pydicom.dcmread(dicomdir, force=False)
    except Exception as e:  # any parse failure means this is no usable DICOMDIR
        raise DicomError(f"{dicomdir}: not a readable DICOMDIR ({type(e).__name__}: {e})") from e
    records = ds.get("DirectoryRecordSequence")
    if records is None:
        raise DicomError(
            f"{dicomdir}: a DICOM file but not a DICOMDIR (no DirectoryRecordSequence); "
            "use read_any() or read_folder() for image files"
        )
    root = dicomdir.parent.resolve()
    problems: list[str] = []
    skipped: list[str] = []
    files: list[Path] = []
    for record in records:
        if record.get("RecordInUseFlag") == 0 or "ReferencedFileID" not in record:
            continue
        parts = record.ReferencedFileID
        parts = [parts] if isinstance(parts, str) else list(parts)
        file = root.joinpath(*(str(p) for p in parts))
        kind = str(record.get("DirectoryRecordType", "?"))
        if not file.resolve().is_relative_to(root):
            problems.append(
                f"{dicomdir}: record {kind} points outside the DICOMDIR's folder "
                f"({'/'.join(map(str, parts))}); ignored"
            )
        elif kind != "IMAGE":
            problems.append(f"{file}: DICOMDIR record type {kind}, not an image; skipped")
            skipped.append(str(file))
        elif not file.is_file():
            problems.append(f"{file}: listed in {dicomdir} but missing on disk")
            skipped.append(str(file))
        else:
            files.append(file)
    for problem in problems:
        log.warning("%s", problem)
    report = _read_paths(files, modality)
    return ReadReport(
        volumes=report.volumes,
        problems=problems + report.problems,
        skipped_files=skipped + report.skipped_files,
    )


def read_any(path: Path | str, *, modality: str | None = None) -> ReadReport:
    """Read a folder, a DICOMDIR file or a single DICOM file.

    Args:
        path: what to read.
        modality: keep only series of this Modality; ``None`` (default) keeps all.

    Returns:
        The report of :func:`read_folder`, :func:`read_dicomdir`, or of the single file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if p.is_dir():
        return read_folder(p, modality=modality)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or folder; expected DICOM data")
    if p.name.upper() == "DICOMDIR":
        return read_dicomdir(p, modality=modality)
    try:
        head = pydicom.dcmread(p, force=False, stop_before_pixels=True)
    except Exception:  # not DICOM: _read_paths reports it with the reason
        head = None
    if head is not None and "DirectoryRecordSequence" in head:
        return read_dicomdir(p, modality=modality)
    return _read_paths([p], modality)


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
