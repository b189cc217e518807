"""Fixtures shared by the fedcore tests: pydicom's shipped test files and small CT series built from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

TestFile = Callable[[str], Path]
CtSeries = Callable[..., list[Path]]


@pytest.fixture
def pydicom_file() -> TestFile:
    """Path of a test file shipped inside pydicom (never downloaded); skips when absent."""

    def get(name: str) -> Path:
        found = get_testdata_file(name, download=False)
        if found is None:
            pytest.skip(f"pydicom does not ship the test file {name!r} in this version")
        return Path(str(found))

    return get


@pytest.fixture
def ct_series(pydicom_file: TestFile) -> CtSeries:
    """Writes copies of pydicom's CT_small.dcm as one series with chosen slice positions.

    ``ct_series(folder, offsets, ...)`` writes slice ``k`` at ``origin + offsets[k] * normal``
    with stored pixels ``CT_small + 10 * k`` (so each slice is recognisable), InstanceNumber
    counting down, and file names given by ``names`` (default ``f"s{k}.dcm"``). Returns the
    paths in slice-list order.
    """
    source = pydicom_file("CT_small.dcm")

    def make(
        folder: Path,
        offsets: Sequence[float],
        *,
        series: str = "a",
        orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        origin: Sequence[float] = (-158.0, -179.0, -75.0),
        names: Sequence[str] | None = None,
    ) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        row, col = np.array(orientation[:3]), np.array(orientation[3:])
        normal = np.cross(row, col)
        paths = []
        for k, offset in enumerate(offsets):
            ds = pydicom.dcmread(source)
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", series])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=["sop", series, str(k)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = len(offsets) - k
            ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
            position = np.array(origin) + float(offset) * normal
            ds.ImagePositionPatient = [round(float(v), 4) for v in position]
            ds.PixelData = (ds.pixel_array + 10 * k).astype(np.int16).tobytes()
            path = folder / (names[k] if names else f"s{k}.dcm")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    return make
