"""DICOM files in and out of de-identification: reading, refusing what cannot be made safe, atomic writing."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from fedcore.storage import atomic_path


class DeidentificationError(ValueError):
    """A file that cannot be de-identified safely, or a bad secret, file or folder."""


def check_output_outside(src: Path, dst: Path) -> None:
    """Refuse an output folder equal to, inside, or above the input folder.

    Args:
        src: The input folder.
        dst: The output folder.

    Raises:
        DeidentificationError: Naming both folders and how to fix it.
    """
    src, dst = src.resolve(), dst.resolve()
    if dst == src or dst.is_relative_to(src):
        where = "is the input folder" if dst == src else "is inside the input folder"
        raise DeidentificationError(
            f"output folder {str(dst)!r} {where} {str(src)!r}: expected a folder outside it, so "
            "that originals and de-identified copies are never mixed. Fix: pick an output "
            "folder elsewhere"
        )
    if src.is_relative_to(dst):
        raise DeidentificationError(
            f"output folder {str(dst)!r} contains the input folder {str(src)!r}: mirrored "
            "output paths could land on input files. Fix: pick an output folder beside it"
        )


def same_file(src: Path, dst: Path) -> bool:
    if src.resolve() == dst.resolve():
        return True
    try:
        return dst.exists() and os.path.samefile(src, dst)
    except OSError:
        return False


def read_dicom(src: Path) -> Dataset:
    """Read a DICOM file: a Part 10 file, or a bare dataset that has a SOP Instance UID."""
    try:
        ds: Dataset = pydicom.dcmread(src)
    except InvalidDicomError:
        ds = _read_bare(src)
    meta = getattr(ds, "file_meta", None)
    is_dir = isinstance(meta, Dataset) and meta.get("MediaStorageSOPClassUID") == (
        MediaStorageDirectoryStorage
    )
    if is_dir or "DirectoryRecordSequence" in ds:
        raise DeidentificationError(
            "a DICOMDIR, a media index that lists patients, studies and file paths: not copied, since its record offsets cannot survive de-identification; the "
            "image files it lists are de-identified on their own. Fix: if an index is needed, "
            "build one from the output with pydicom.fileset.FileSet"
        )
    return ds


def _read_bare(src: Path) -> Dataset:
    """A dataset written without the Part 10 header (no preamble, no 'DICM'), if it is one."""
    reason = (
        "not a DICOM file: no 'DICM' Part 10 header, and no dataset with a SOP Instance UID "
        "could be read from it; not copied. Fix: nothing, if it is not an image; else check "
        "that the file is complete"
    )
    if not _starts_like_a_dataset(src):
        raise DeidentificationError(reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds: Dataset = pydicom.dcmread(src, force=True)
            uid = ds.get("SOPInstanceUID")
            has_class = "SOPClassUID" in ds
    except Exception:  # whatever garbage a forced read of a non-DICOM file trips over
        raise DeidentificationError(reason) from None
    if not uid or not has_class:
        raise DeidentificationError(reason)
    return ds


def _starts_like_a_dataset(src: Path) -> bool:
    """Whether the file opens with a group 0002 or 0008 tag, as a bare dataset does.

    Guards the forced read, which would otherwise parse any file (a PDF, an archive) as DICOM.
    """
    with src.open("rb") as fh:
        head = fh.read(4)
    if len(head) < 4:
        return False
    groups = {int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")}
    return bool(groups & {0x0002, 0x0008})


def write_dicom(ds: Dataset, dst: Path) -> None:
    """Write ``ds`` in its own encoding, atomically: ``dst`` never holds a partial file."""
    if getattr(ds, "preamble", None):
        ds.preamble = bytes(128)  # may hold a TIFF header and thumbnail of the image
    with atomic_path(dst) as tmp:
        ds.save_as(tmp, enforce_file_format=False)
