"""DICOM ingestion: volumes in Hounsfield units from pydicom's real test files, ordering, gaps and the mess."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from fedcore.data.dicom import (
    DicomError,
    Volume,
    extract_patch,
    read_any,
    read_dicomdir,
    read_folder,
    read_series,
    resample,
    window,
)
from tests.fedcore.conftest import CtSeries, TestFile


def _expected_hu(path: Path) -> np.ndarray:
    """HU computed from the file itself: stored values * RescaleSlope + RescaleIntercept."""
    ds = pydicom.dcmread(path)
    slope = float(ds.get("RescaleSlope", 1))
    intercept = float(ds.get("RescaleIntercept", 0))
    return (ds.pixel_array.astype(np.float64) * slope + intercept).astype(np.float32)


def _along_normal(volume: Volume) -> np.ndarray:
    """Each slice's centre position projected on the slice normal (row x column cosines)."""
    normal = np.cross(volume.direction[:, 0], volume.direction[:, 1])
    k = np.arange(volume.hu.shape[0], dtype=np.float64)
    points = volume.voxel_to_world(np.stack([k, np.zeros_like(k), np.zeros_like(k)], axis=1))
    return np.asarray(points @ normal)


def _only(problems: list[str], *needles: str) -> str:
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, f"expected one problem with {needles}, got {hits} among {problems}"
    return hits[0]


# --- real files: CT_small.dcm and the DICOMDIR ---------------------------------------------


def test_ct_small_in_hounsfield_units(pydicom_file: TestFile) -> None:
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_series([path])
    assert vol.hu.shape == (1, 128, 128)
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu[0], _expected_hu(path))
    assert float(ds.RescaleIntercept) != 0  # the rescale really was applied
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    z_expected = float(ds.get("SpacingBetweenSlices") or ds.SliceThickness)
    assert vol.spacing == pytest.approx((z_expected, row_spacing, col_spacing))
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert (vol.series_uid, vol.study_uid, vol.modality) == (
        ds.SeriesInstanceUID,
        ds.StudyInstanceUID,
        "CT",
    )
    assert vol.patient_id == ds.PatientID
    assert vol.missing_slices == 0
    single = read_any(path)
    assert single.problems == [] and len(single.volumes) == 1
    np.testing.assert_array_equal(single.volumes[0].hu, vol.hu)


def test_dicomdir_series_slices_and_order(pydicom_file: TestFile) -> None:
    dicomdir = pydicom_file("DICOMDIR")
    fs = FileSet(pydicom.dcmread(dicomdir))
    records = Counter(str(i.SeriesInstanceUID) for i in fs if i.node.record_type == "IMAGE")
    report = read_dicomdir(dicomdir)

    assert report.volumes, report.problems
    for vol in report.volumes:
        # every image record of the series is a slice; gaps add filled slices on top
        assert vol.hu.shape[0] - vol.missing_slices == records[vol.series_uid], vol.series_uid
        assert np.all(np.diff(_along_normal(vol)) > 0), vol.series_uid
    # every image record is either in a volume or a skipped file, never lost
    used = sum(records[v.series_uid] for v in report.volumes)
    assert used + len(report.skipped_files) == sum(records.values())
    # the projection radiographs (CR) have no 3D geometry; the multi-plane series cannot stack
    assert sum("no ImagePositionPatient" in p for p in report.problems) == sum(
        1 for uid in records if fs.find(SeriesInstanceUID=uid)[0].Modality == "CR"
    )
    assert any("differ in orientation" in p and "CT2N" in p for p in report.problems)

    # CT5N: five real CT slices whose InstanceNumber runs against their position
    ct5 = [i for i in fs if "CT5N" in i.path]
    vol = next(v for v in report.volumes if v.series_uid == ct5[0].SeriesInstanceUID)
    files = sorted((pydicom.dcmread(i.path) for i in ct5), key=lambda d: d.ImagePositionPatient[2])
    assert [int(d.InstanceNumber) for d in files] != sorted(int(d.InstanceNumber) for d in files)
    for k, ds in enumerate(files):
        np.testing.assert_allclose(
            vol.voxel_to_world([k, 0, 0]), [float(v) for v in ds.ImagePositionPatient], atol=1e-4
        )
        np.testing.assert_array_equal(vol.hu[k], _expected_hu(Path(str(ds.filename))))
    steps = np.diff([float(d.ImagePositionPatient[2]) for d in files])
    assert vol.spacing[0] == pytest.approx(float(np.median(steps)))


def test_dicomdir_large_gap_reported_and_filled(pydicom_file: TestFile) -> None:
    dicomdir = pydicom_file("DICOMDIR")
    ct2 = sorted(
        (pydicom.dcmread(p) for p in (dicomdir.parent / "77654033" / "CT2").iterdir()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    z = np.array([float(d.ImagePositionPatient[2]) for d in ct2])
    step = float(np.median(np.diff(z)))
    missing = round((z[1] - z[0]) / step) - 1  # one big hole after the first slice
    report = read_dicomdir(dicomdir, modality="CT")
    vol = next(v for v in report.volumes if v.series_uid == ct2[0].SeriesInstanceUID)
    assert vol.missing_slices == missing > 100
    _only(report.problems, f"{missing} slice(s) missing between z={z[0]:.2f} and z={z[1]:.2f} mm")
    np.testing.assert_allclose(vol.voxel_to_world([missing + 1, 0, 0])[2], z[1], atol=step / 2)
    assert all(v.modality == "CT" for v in report.volumes)


def test_dicomdir_missing_file_reported_rest_read(tmp_path: Path, pydicom_file: TestFile) -> None:
    tree = tmp_path / "media"
    shutil.copytree(pydicom_file("DICOMDIR").parent, tree)
    gone = tree / "98892001" / "CT5N" / "2392"
    gone.unlink()
    report = read_any(tree / "DICOMDIR")
    _only(report.problems, str(gone), "missing on disk")
    uid = pydicom.dcmread(tree / "98892001" / "CT5N" / "2062").SeriesInstanceUID
    vol = next(v for v in report.volumes if v.series_uid == uid)
    assert (vol.hu.shape[0], vol.missing_slices) == (5, 1)


# --- ordering by position --------------------------------------------------------------------


def test_order_follows_position_not_name_or_instance(tmp_path: Path, ct_series: CtSeries) -> None:
    offsets = [7.5, 0.0, 12.5, 2.5, 10.0, 5.0]
    names = ["a.dcm", "f.dcm", "b.dcm", "e.dcm", "c.dcm", "d.dcm"]
    paths = ct_series(tmp_path / "s", offsets, names=names)
    vol = read_series(list(reversed(paths)))
    order = np.argsort(offsets)
    assert vol.hu.shape == (6, 128, 128)
    for k, src in enumerate(order):
        np.testing.assert_array_equal(vol.hu[k], _expected_hu(paths[src]))
    assert vol.spacing[0] == pytest.approx(2.5)
    assert vol.origin[2] == pytest.approx(-75.0)
    assert np.all(np.diff(_along_normal(vol)) == pytest.approx(2.5))
    folder = read_folder(tmp_path / "s")
    assert folder.problems == []
    np.testing.assert_array_equal(folder.volumes[0].hu, vol.hu)


def test_oblique_orientation(tmp_path: Path, ct_series: CtSeries) -> None:
    a, b = np.radians(30.0), np.radians(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rz @ rx  # columns: row direction, column direction, normal
    offsets = [4.0, -2.0, 0.0, 2.0]
    paths = ct_series(tmp_path, offsets, orientation=np.r_[rot[:, 0], rot[:, 1]].tolist())
    vol = read_series(paths)
    np.testing.assert_allclose(vol.direction, rot, atol=1e-5)
    for k, src in enumerate(np.argsort(offsets)):
        ipp = [float(v) for v in pydicom.dcmread(paths[src]).ImagePositionPatient]
        np.testing.assert_allclose(vol.voxel_to_world([k, 0, 0]), ipp, atol=1e-3)
        np.testing.assert_array_equal(vol.hu[k], _expected_hu(paths[src]))
    corner = vol.voxel_to_world([3, 127, 5])
    np.testing.assert_allclose(vol.world_to_voxel(corner), [3, 127, 5], atol=1e-9)
    assert vol.spacing[0] == pytest.approx(2.0, abs=1e-3)


# --- the mess ---------------------------------------------------------------------------------


def test_mixed_series_in_one_folder(
    tmp_path: Path, ct_series: CtSeries, pydicom_file: TestFile
) -> None:
    ct_series(tmp_path / "x", [0, 5, 10], series="a")
    ct_series(tmp_path / "x" / "deeper", [0, 5], series="b")
    shutil.copy(pydicom_file("rtplan.dcm"), tmp_path / "x" / "plan.dcm")
    shutil.copy(pydicom_file("MR_small.dcm"), tmp_path / "x" / "mr.dcm")
    report = read_folder(tmp_path / "x")
    assert sorted(v.hu.shape[0] for v in report.volumes) == [2, 3]
    assert len({v.series_uid for v in report.volumes}) == 2
    _only(report.problems, "plan.dcm", "not an image", "RT Plan Storage")
    _only(report.problems, "modality MR, expected CT")
    assert set(report.skipped_files) == {str(tmp_path / "x" / n) for n in ("plan.dcm", "mr.dcm")}
    everything = read_folder(tmp_path / "x", modality=None)
    assert sorted(v.modality for v in everything.volumes) == ["CT", "CT", "MR"]


def test_inconsistent_series_fails_alone(
    tmp_path: Path, ct_series: CtSeries, pydicom_file: TestFile
) -> None:
    good = ct_series(tmp_path, [0, 5], series="good")
    bad = ct_series(tmp_path, [0, 5], series="bad", names=["b0.dcm", "b1.dcm"])
    stray = pydicom.dcmread(pydicom_file("MR_small.dcm"))  # 64x64 slice claiming the bad series
    stray.SeriesInstanceUID = pydicom.dcmread(bad[0]).SeriesInstanceUID
    stray.save_as(tmp_path / "stray.dcm")
    report = read_folder(tmp_path, modality=None)
    assert [v.series_uid for v in report.volumes] == [pydicom.dcmread(good[0]).SeriesInstanceUID]
    message = _only(report.problems, "slices differ in size")
    assert "stray.dcm" in message and "64x64" in message and "128x128" in message
    with pytest.raises(DicomError, match="differ in size"):
        read_series([*bad, tmp_path / "stray.dcm"])


def test_missing_slice_reported_and_interpolated(tmp_path: Path, ct_series: CtSeries) -> None:
    offsets = [0.0, 2.5, 5.0, 10.0, 12.5]  # 7.5 mm is missing
    paths = ct_series(tmp_path, offsets)
    report = read_folder(tmp_path)
    (vol,) = report.volumes
    assert vol.hu.shape[0] == 6 and vol.missing_slices == 1
    assert vol.spacing[0] == pytest.approx(2.5)
    _only(report.problems, "1 slice(s) missing between z=-70.00 and z=-65.00 mm")
    filled = (_expected_hu(paths[2]) + _expected_hu(paths[3])) / 2
    np.testing.assert_allclose(vol.hu[3], filled, atol=1e-3)
    np.testing.assert_array_equal(vol.hu[4], _expected_hu(paths[3]))
    np.testing.assert_allclose(vol.voxel_to_world([3, 0, 0])[2], -75.0 + 7.5, atol=1e-4)


def test_missing_file_in_short_series(tmp_path: Path, ct_series: CtSeries) -> None:
    # steps 5 and 10 mm: the median (7.5) would hide the gap, the usual step (5) does not
    ct_series(tmp_path, [0.0, 5.0, 15.0])
    report = read_folder(tmp_path)
    (vol,) = report.volumes
    assert (vol.hu.shape[0], vol.missing_slices) == (4, 1)
    assert vol.spacing[0] == pytest.approx(5.0)
    _only(report.problems, "1 slice(s) missing between z=-70.00 and z=-60.00 mm")


def test_gantry_tilt_follows_positions(tmp_path: Path, ct_series: CtSeries) -> None:
    paths = ct_series(tmp_path, [0.0, 2.0, 4.0])
    shift = np.tan(np.radians(15.0)) * 2.0  # each slice 2 mm up and shifted in y: 15 degree tilt
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + k * shift, 4), z]
        ds.save_as(path)
    report = read_folder(tmp_path)
    (vol,) = report.volumes
    for k, path in enumerate(paths):
        ipp = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        np.testing.assert_allclose(vol.voxel_to_world([k, 0, 0]), ipp, atol=1e-3)
    assert vol.spacing[0] == pytest.approx(2.0 / np.cos(np.radians(15.0)), abs=1e-3)
    _only(report.problems, "gantry tilt 15.0 degrees")


def test_duplicate_position_kept_once(tmp_path: Path, ct_series: CtSeries) -> None:
    paths = ct_series(tmp_path, [0.0, 2.5, 2.5, 5.0])
    report = read_folder(tmp_path)
    (vol,) = report.volumes
    assert vol.hu.shape[0] == 3 and vol.missing_slices == 0
    message = _only(report.problems, "repeat the position")
    # InstanceNumber counts down, so the later file (s2) has the lower number and is kept
    assert str(paths[1]) in message and report.skipped_files == [str(paths[1])]
    np.testing.assert_array_equal(vol.hu[1], _expected_hu(paths[2]))


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_equals_uncompressed(pydicom_file: TestFile, name: str) -> None:
    compressed = pydicom_file(name)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID.is_compressed
    reference = read_series([pydicom_file("MR_small.dcm")])
    np.testing.assert_array_equal(read_series([compressed]).hu, reference.hu)


def test_compressed_ct_jpeg2000(pydicom_file: TestFile) -> None:
    path = pydicom_file("693_J2KI.dcm")  # a real CT slice, lossy JPEG 2000, slope/intercept set
    report = read_any(path, modality="CT")
    assert report.problems == []
    np.testing.assert_array_equal(report.volumes[0].hu[0], _expected_hu(path))


def test_undecodable_file_named_rest_read(
    tmp_path: Path, ct_series: CtSeries, pydicom_file: TestFile
) -> None:
    ct_series(tmp_path, [0, 5, 10])
    ds = pydicom.dcmread(pydicom_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.92")  # JPEG 2000 Part 2: no decoder
    ds.save_as(tmp_path / "part2.dcm")
    report = read_folder(tmp_path, modality=None)
    assert [v.modality for v in report.volumes] == ["CT"]
    message = _only(report.problems, "part2.dcm")
    assert "JPEG 2000 Part 2" in message and "1.2.840.10008.1.2.4.92" in message
    assert "no decoder" in message and "gdcmconv --raw" in message
    assert str(tmp_path / "part2.dcm") in report.skipped_files
    with pytest.raises(DicomError, match="JPEG 2000 Part 2"):
        read_series([tmp_path / "part2.dcm"])


def test_missing_decoder_names_package(
    monkeypatch: pytest.MonkeyPatch, pydicom_file: TestFile
) -> None:
    path = pydicom_file("MR_small_jp2klossless.dcm")
    decoder = get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    # as on a machine where pylibjpeg-openjpeg was never installed
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg>=2.0",)})
    report = read_any(path)
    assert report.volumes == []
    message = _only(report.problems, str(path))
    assert "JPEG 2000 Image Compression (Lossless Only)" in message
    assert "install pylibjpeg + pylibjpeg-openjpeg" in message


def test_corrupt_compressed_data_reported(tmp_path: Path, pydicom_file: TestFile) -> None:
    ds = pydicom.dcmread(pydicom_file("JPEG-lossy.dcm"))  # a JPEG stream libjpeg rejects
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.save_as(tmp_path / "lossy.dcm")
    with pytest.raises(DicomError, match=r"lossy.dcm: .*JPEG Extended.*probably corrupt"):
        read_series([tmp_path / "lossy.dcm"])


def test_not_dicom_and_truncated_files(
    tmp_path: Path, ct_series: CtSeries, pydicom_file: TestFile
) -> None:
    paths = ct_series(tmp_path, [0, 5, 10, 15])
    whole = paths[2].read_bytes()
    paths[2].write_bytes(whole[: len(whole) // 2])  # cut inside the pixel data
    (tmp_path / "notes.txt").write_text("scanner export log\n")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "header_only.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:1000])
    report = read_folder(tmp_path)
    (vol,) = report.volumes  # the series still reads; the truncated slice becomes a filled gap
    assert vol.hu.shape[0] == 4 and vol.missing_slices == 1
    _only(report.problems, "notes.txt: not a DICOM file (")
    _only(report.problems, "empty.dcm: not a DICOM file (empty file)")
    _only(report.problems, "header_only.dcm", "without Pixel Data", "truncated")
    cut = _only(report.problems, f"{paths[2]}: pixel data could not be decoded")
    assert "Explicit VR Little Endian" in cut and "truncated" in cut
    assert {str(paths[2]), str(tmp_path / "notes.txt")} <= set(report.skipped_files)
    shipped = read_any(pydicom_file("MR_truncated.dcm"))
    assert shipped.volumes == [] and "truncated" in _only(shipped.problems, "MR_truncated.dcm")
    with pytest.raises(DicomError, match="notes.txt: not a DICOM file"):
        read_series([paths[0], tmp_path / "notes.txt"])


def test_read_series_rejects_several_series(tmp_path: Path, ct_series: CtSeries) -> None:
    a = ct_series(tmp_path, [0], series="a", names=["a.dcm"])
    b = ct_series(tmp_path, [5], series="b", names=["b.dcm"])
    with pytest.raises(DicomError, match="belong to 2 series"):
        read_series([*a, *b])
    with pytest.raises(FileNotFoundError):
        read_any(tmp_path / "nowhere")


# --- resample, patches, window ----------------------------------------------------------------


def _volume(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Volume:
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return Volume(
        hu=np.full(shape, -1000.0, dtype=np.float32),
        spacing=spacing,
        origin=(-12.0, 30.0, 7.5),
        direction=direction,
        series_uid="1.2.3",
    )


def test_resample_spacing_shape_and_constant() -> None:
    vol = _volume((10, 21, 17), (2.5, 0.7, 0.8))
    out = resample(vol)
    # round(extent / 1.5): 25/1.5 = 16.7 -> 17, 14.7/1.5 = 9.8 -> 10, 13.6/1.5 = 9.07 -> 9
    assert out.hu.shape == (17, 10, 9) and out.spacing == (1.5, 1.5, 1.5)
    assert out.origin == vol.origin and out.series_uid == "1.2.3"
    np.testing.assert_allclose(out.hu, -1000.0, atol=1e-3)
    np.testing.assert_array_equal(vol.hu, -1000.0)  # input untouched
    cubic = resample(replace_hu(vol, np.full(vol.hu.shape, 40.0, np.float32)), order=3)
    np.testing.assert_allclose(cubic.hu, 40.0, atol=1e-3)


def replace_hu(vol: Volume, hu: np.ndarray) -> Volume:
    return Volume(hu, vol.spacing, vol.origin, vol.direction, vol.series_uid)


def test_resample_keeps_world_positions() -> None:
    vol = _volume((12, 30, 30), (2.4, 0.7, 0.7))
    hu = vol.hu.copy()
    hu[5, 13, 18] = 500.0
    vol = replace_hu(vol, hu)
    point = vol.voxel_to_world([5, 13, 18])  # new voxel (12, 9.1, 12.6): no ties in rounding
    out = resample(vol, (1.0, 1.0, 1.0))
    peak = np.array(np.unravel_index(int(np.argmax(out.hu)), out.hu.shape), dtype=np.float64)
    np.testing.assert_allclose(out.voxel_to_world(peak), point, atol=0.5 * np.sqrt(3) + 1e-9)
    np.testing.assert_allclose(np.abs(out.world_to_voxel(point) - peak), 0, atol=0.5 + 1e-9)


def test_extract_patch_centre_and_padding() -> None:
    vol = _volume((20, 20, 20), (1.5, 1.5, 1.5))
    hu = vol.hu.copy()
    hu[7, 11, 4] = 900.0
    vol = replace_hu(vol, hu)
    centre = vol.voxel_to_world([7, 11, 4]) + 0.3  # off-centre by less than half a voxel
    patch = extract_patch(vol, centre, 9)
    assert patch.shape == (9, 9, 9) and patch.dtype == np.float32
    assert patch[4, 4, 4] == 900.0 and int((patch == 900.0).sum()) == 1
    uneven = extract_patch(vol, centre, (3, 5, 7))
    assert uneven[1, 2, 3] == 900.0
    corner = extract_patch(vol, vol.voxel_to_world([0, 0, 0]), 4, fill_hu=-2000.0)
    assert np.all(corner[:2] == -2000.0) and np.all(corner[:, :2] == -2000.0)
    np.testing.assert_array_equal(corner[2:, 2:, 2:], vol.hu[:2, :2, :2])


def test_extract_patch_outside_volume_warns(caplog: pytest.LogCaptureFixture) -> None:
    vol = _volume((4, 4, 4), (1.0, 1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="fedcore.data.dicom"):
        patch = extract_patch(vol, vol.voxel_to_world([100, 0, 0]), 3, fill_hu=-5.0)
    assert np.all(patch == -5.0)
    assert "wholly outside" in caplog.text
    with pytest.raises(ValueError, match="size must be"):
        extract_patch(vol, (0.0, 0.0, 0.0), 0)


def test_window() -> None:
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0])
    np.testing.assert_allclose(window(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert window(hu).dtype == np.float32
    np.testing.assert_allclose(window(hu, -1000.0, 0.0)[2], 0.7)
    with pytest.raises(ValueError, match="low < high"):
        window(hu, 10.0, 10.0)


def test_volume_checks_its_fields() -> None:
    with pytest.raises(ValueError, match=r"\[z, y, x\]"):
        Volume(np.zeros((4, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((1, 4, 4)), (0.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="invertible"):
        Volume(np.zeros((1, 4, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.zeros((3, 3)))
