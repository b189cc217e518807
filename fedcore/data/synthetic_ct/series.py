"""Writing one HU volume as a CT series of DICOM files, with seeded UIDs, fake identities and origin."""

from __future__ import annotations

import datetime as dt
import re
import struct
import zlib
from pathlib import Path

import numpy as np
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

from fedcore.data.synthetic_ct.scanners import ScannerProfile

RESCALE_INTERCEPT = -1024.0
"""Stored value = HU - RESCALE_INTERCEPT (signed int16, RescaleSlope 1)."""
_HU_MIN, _HU_MAX = -2048.0, 3071.0

_PRIVATE_CREATOR = "FEDCORE SYNTHETIC CT"
_PRIVATE_GROUP = 0x0009
_UID_ROOT = "fedcore.synthetic_ct"

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
