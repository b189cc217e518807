"""From the slices of one DICOM series to one HU volume: geometry, decoding, order, duplicates, gaps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from fedcore.data.dicom.volume import DicomError, Volume, _Unusable

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
