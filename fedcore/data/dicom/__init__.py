"""Read CT series from DICOM folders and DICOMDIRs into Hounsfield-unit volumes; resample; cut patches."""

from fedcore.data.dicom.patches import extract_patch, resample, window
from fedcore.data.dicom.reading import read_any, read_dicomdir, read_folder, read_series
from fedcore.data.dicom.volume import DicomError, ReadReport, Volume

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
