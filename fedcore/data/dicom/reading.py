"""Reading DICOM files, folders and DICOMDIRs into HU volumes, with a report of what was skipped and why."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from fedcore.data.dicom.assemble import _assemble, _label
from fedcore.data.dicom.volume import DicomError, ReadReport, Volume, _Unusable

log = logging.getLogger(__name__)

# Elements larger than this are read from disk only when used, so that series skipped by
# modality never have their pixel data loaded.
_DEFER_SIZE = 16 * 1024

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


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
