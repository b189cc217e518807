"""Tests of the seeded synthetic chest CT generator: determinism, realism measured on the written
DICOM files, scanner differences, headers, candidate coordinates and the candidates file."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from fedcore.data.synthetic_ct import (
    CANDIDATE_COLUMNS,
    SCANNERS,
    Candidate,
    generate_scan,
    generate_site,
    malignancy_probability,
    read_candidates,
    sample_nodule,
    scanner_profile,
    write_series,
)

IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "InstitutionName",
    "ReferringPhysicianName",
    "AccessionNumber",
    "DeviceSerialNumber",
    "StationName",
    "OperatorsName",
)


@dataclass
class Series:
    """A series read back from disk the way a reader would: ordered by ImagePositionPatient."""

    hu: np.ndarray  # [z, y, x]
    origin: np.ndarray  # (x, y, z) of the first slice
    dz: float
    row_spacing: float  # between rows: along y
    col_spacing: float  # between columns: along x
    datasets: list[pydicom.FileDataset]
    names: list[str]  # file names in slice order

    def voxel(self, c: Candidate) -> tuple[int, int, int]:
        """(k, j, i) of the voxel holding the patient point of ``c``."""
        k = round((c.z_mm - self.origin[2]) / self.dz)
        j = round((c.y_mm - self.origin[1]) / self.row_spacing)
        i = round((c.x_mm - self.origin[0]) / self.col_spacing)
        return k, j, i

    def centre_hu(self, c: Candidate) -> float:
        """Mean HU of the 3 x 3 in-plane neighbourhood of the candidate's voxel."""
        k, j, i = self.voxel(c)
        return float(self.hu[k, j - 1 : j + 2, i - 1 : i + 2].mean())


def read_series(folder: Path) -> Series:
    files = list(folder.glob("*.dcm"))
    pairs = sorted(
        ((pydicom.dcmread(f), f.name) for f in files),
        key=lambda p: float(p[0].ImagePositionPatient[2]),
    )
    datasets = [p[0] for p in pairs]
    hu = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]
    )
    first = datasets[0]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    return Series(
        hu=hu.astype(np.float32),
        origin=np.array([float(v) for v in first.ImagePositionPatient]),
        dz=float(datasets[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]),
        row_spacing=row_spacing,
        col_spacing=col_spacing,
        datasets=datasets,
        names=[p[1] for p in pairs],
    )


def file_hashes(root: Path) -> list[tuple[str, str]]:
    return [
        (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Candidate]]:
    """Eight Philips scans (2 mm slices) of one hospital, most with nodules."""
    out = tmp_path_factory.mktemp("site")
    candidates = generate_site(
        out, scans=8, scanner="philips-smooth", seed=11, hospital="hospital-a", nodule_prob=0.9
    )
    return out, candidates


@pytest.fixture(scope="module")
def volumes(site: tuple[Path, list[Candidate]]) -> dict[str, Series]:
    """The site's series read back from disk, by SeriesInstanceUID."""
    root, _ = site
    series = [read_series(folder) for folder in sorted(root.glob("patient_*"))]
    return {str(s.datasets[0].SeriesInstanceUID): s for s in series}


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_and_candidates(tmp_path: Path) -> None:
    def site(name: str, seed: int, scans: int) -> list[Candidate]:
        return generate_site(
            tmp_path / name, scans=scans, scanner="canon-thick", seed=seed, hospital="hospital-b"
        )

    a, b, c = site("a", 5, 2), site("b", 5, 2), site("c", 6, 1)
    hashes = file_hashes(tmp_path / "a")
    assert len(hashes) == 2 * SCANNERS["canon-thick"].slices + 1  # slices + candidates.csv
    assert hashes == file_hashes(tmp_path / "b")
    assert a == b
    assert [x for x in a if x.series_uid == a[0].series_uid] != c
    first_a = read_series(tmp_path / "a" / "patient_000")
    first_c = read_series(tmp_path / "c" / "patient_000")
    assert first_a.hu.shape == first_c.hu.shape
    assert float(np.abs(first_a.hu - first_c.hu).mean()) > 5.0  # different anatomy and noise


def test_generate_scan_is_pure_and_seeded() -> None:
    profile = SCANNERS["canon-thick"]
    hu1, c1 = generate_scan(np.random.default_rng(3), profile)
    hu2, c2 = generate_scan(np.random.default_rng(3), profile)
    hu3, _ = generate_scan(np.random.default_rng(4), profile)
    assert hu1.dtype == np.float32
    assert hu1.shape == (profile.slices, profile.matrix, profile.matrix)
    assert np.array_equal(hu1, hu2) and c1 == c2
    assert not np.array_equal(hu1, hu3)


def test_identity_and_uids_depend_on_seed_hospital_and_patient(tmp_path: Path) -> None:
    hu = np.full((2, 8, 8), -1000.0, dtype=np.float32)
    profile = SCANNERS["canon-thick"]
    seen = set()
    for i, (seed, hospital, patient) in enumerate(
        [(1, "north", 0), (1, "south", 0), (2, "north", 0), (1, "north", 1)]
    ):
        uid, files = write_series(
            hu,
            tmp_path / str(i),
            scanner=profile,
            seed=seed,
            patient_index=patient,
            hospital=hospital,
        )
        ds = pydicom.dcmread(files[0])
        seen.add((uid, str(ds.PatientID), str(ds.StudyInstanceUID)))
    uids, patients, studies = zip(*seen, strict=True)
    assert len(set(uids)) == len(set(studies)) == 4
    assert len(set(patients)) == 4


# ----------------------------------------------------------------------------- realism


def test_tissue_densities_measured_on_written_files(volumes: dict[str, Series]) -> None:
    for uid, s in volumes.items():
        nx = s.hu.shape[2]
        # The chest wall is documented to lie along the low-x edge and to be thinner than half
        # the field of view: the far 40 % of the columns is lung.
        lung = s.hu[:, :, int(0.6 * nx) :]
        assert -900.0 <= float(np.median(lung)) <= -800.0, uid
        # Air outside the body at the very edge.
        assert -1030.0 <= float(s.hu[:, :, :2].mean()) <= -970.0, uid
        # Column medians across the wall: there is a soft-tissue layer (0..+80 HU) and a
        # subcutaneous fat layer (around -100 HU), each at least 3 columns (>2 mm) thick.
        medians = np.median(s.hu[:, :, : nx // 2].reshape(-1, nx // 2), axis=0)
        assert _longest_run((medians >= 0) & (medians <= 80)) >= 3, (uid, medians.round())
        assert _longest_run((medians >= -130) & (medians <= -70)) >= 3, (uid, medians.round())


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for flag in mask:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def test_candidates_have_realistic_sizes_and_both_classes(
    site: tuple[Path, list[Candidate]], volumes: dict[str, Series]
) -> None:
    _, candidates = site
    nodules = [c for c in candidates if c.nodule]
    others = [c for c in candidates if not c.nodule]
    assert nodules and others
    assert all(3.0 <= c.diameter_mm <= 30.0 for c in nodules)
    assert {c.kind for c in nodules} <= {"solid", "part-solid"}
    assert {c.kind for c in others} <= {"vessel", "crossing", "scar"}
    assert all(c.malignant == 0 for c in others)
    per_series = {uid: sum(c.series_uid == uid for c in candidates) for uid in volumes}
    assert set(per_series) == {c.series_uid for c in candidates}
    assert all(1 <= n <= 4 for n in per_series.values()), per_series


def test_nodule_candidates_land_on_nodule_density(
    site: tuple[Path, list[Candidate]], volumes: dict[str, Series]
) -> None:
    """Patient coordinates mapped back through the headers hit the nodule, not the lung."""
    _, candidates = site
    nodules = [c for c in candidates if c.nodule]
    assert len(nodules) >= 4
    for c in nodules:
        s = volumes[c.series_uid]
        k, j, i = s.voxel(c)
        assert 0 <= k < s.hu.shape[0] and 0 <= j < s.hu.shape[1] and 0 <= i < s.hu.shape[2]
        centre = s.centre_hu(c)
        assert centre > -500.0, (c, centre)  # lung is around -850
        if c.kind == "solid" and c.diameter_mm >= 6.0:
            # Small ones lose contrast to partial volume; from 6 mm the core is fully solid.
            assert centre > -100.0, (c, centre)


def test_part_solid_nodule_has_ground_glass_halo(tmp_path: Path) -> None:
    profile = SCANNERS["canon-thick"]
    for seed in range(200):
        hu, found = generate_scan(np.random.default_rng(seed), profile, nodule_prob=1.0)
        big = [c for c in found if c["kind"] == "part-solid" and c["diameter_mm"] >= 12.0]
        if big:
            break
    else:
        pytest.fail("no part-solid nodule of 12 mm or more in 200 scans")
    nodule = big[0]
    uid, _ = write_series(
        hu, tmp_path / "s", scanner=profile, seed=seed, patient_index=0, hospital="h"
    )
    s = read_series(tmp_path / "s")
    assert str(s.datasets[0].SeriesInstanceUID) == uid
    kz, ky, kx = (np.arange(n, dtype=np.float64) for n in s.hu.shape)
    r_mm = np.sqrt(
        ((kz[:, None, None] - nodule["z"]) * s.dz) ** 2
        + ((ky[None, :, None] - nodule["y"]) * s.row_spacing) ** 2
        + ((kx[None, None, :] - nodule["x"]) * s.col_spacing) ** 2
    )
    radius = nodule["diameter_mm"] / 2
    core = nodule["core_diameter_mm"] / 2
    halo = s.hu[(r_mm > core + 1.5) & (r_mm < max(core + 2.0, 0.8 * radius))]
    centre = s.hu[r_mm < max(0.5 * core, 1.0)]
    assert halo.size > 20
    assert -700.0 <= float(np.median(halo)) <= -300.0, nodule
    assert float(np.median(centre)) > float(np.median(halo)) + 200.0, nodule


def test_malignancy_rises_with_size_and_part_solid_type() -> None:
    rng = np.random.default_rng(0)
    drawn = [sample_nodule(rng) for _ in range(6000)]
    diameters = np.array([n.diameter_mm for n in drawn])
    malignant = np.array([n.malignant for n in drawn])
    part_solid = np.array([n.kind == "part-solid" for n in drawn])
    assert diameters.min() >= 3.0 and diameters.max() <= 30.0
    assert np.median(diameters) < 10.0  # most nodules are small
    assert diameters[part_solid].min() >= 6.0
    small, large = malignant[diameters < 6.0].mean(), malignant[diameters >= 15.0].mean()
    assert large > 3 * small, (small, large)
    mid = (diameters >= 6.0) & (diameters < 15.0)
    assert malignant[mid & part_solid].mean() > malignant[mid & ~part_solid].mean()
    # The documented model: odds ratio e for part-solid, monotonic in diameter.
    p_s, p_ps = malignancy_probability(10.0, False), malignancy_probability(10.0, True)
    assert (p_ps / (1 - p_ps)) / (p_s / (1 - p_s)) == pytest.approx(np.e)
    sizes = [3.0, 6.0, 10.0, 20.0, 30.0]
    probs = [malignancy_probability(d, False) for d in sizes]
    assert probs == sorted(probs) and probs[0] < 0.05 < 0.5 < probs[-1]
    with pytest.raises(ValueError, match="diameter_mm must be > 0"):
        malignancy_probability(0.0, False)


def test_prevalence_follows_nodule_prob() -> None:
    profile = SCANNERS["canon-thick"]
    none = [generate_scan(np.random.default_rng(s), profile, nodule_prob=0.0)[1] for s in range(2)]
    every = [generate_scan(np.random.default_rng(s), profile, nodule_prob=1.0)[1] for s in range(2)]
    assert all(not any(c["nodule"] for c in cands) and cands for cands in none)
    assert all(any(c["nodule"] for c in cands) for cands in every)


# ----------------------------------------------------------------------------- scanners


def test_scanners_differ_in_noise_and_geometry(tmp_path: Path) -> None:
    sharp, smooth = SCANNERS["siemens-sharp"], SCANNERS["philips-smooth"]
    assert sharp.noise_hu > smooth.noise_hu
    measured = {}
    for profile in (sharp, smooth):
        hu, _ = generate_scan(np.random.default_rng(21), profile)
        write_series(
            hu, tmp_path / profile.name, scanner=profile, seed=21, patient_index=0, hospital="h"
        )
        s = read_series(tmp_path / profile.name)
        ds = s.datasets[0]
        assert float(ds.SliceThickness) == profile.slice_thickness_mm
        assert float(ds.SpacingBetweenSlices) == profile.slice_thickness_mm
        assert s.dz == pytest.approx(profile.slice_thickness_mm)
        assert s.col_spacing == pytest.approx(profile.pixel_spacing_mm)
        assert (ds.Manufacturer, ds.ManufacturerModelName, ds.ConvolutionKernel) == (
            profile.manufacturer,
            profile.model,
            profile.kernel,
        )
        assert s.hu.shape == (profile.slices, profile.matrix, profile.matrix)
        # Flat region: the air outside the body along the low-x edge.
        measured[profile.name] = float(s.hu[:, :, :2].std())
        assert measured[profile.name] == pytest.approx(profile.noise_hu, rel=0.25)
    assert measured[sharp.name] > 2 * measured[smooth.name], measured


def test_scanner_profile_lookup() -> None:
    assert scanner_profile("ge-standard") is SCANNERS["ge-standard"]
    assert scanner_profile(SCANNERS["canon-thick"]) is SCANNERS["canon-thick"]
    assert len(SCANNERS) >= 4
    with pytest.raises(KeyError, match="unknown scanner profile 'hitachi'.*canon-thick"):
        scanner_profile("hitachi")


# ----------------------------------------------------------------------------- headers


def test_headers_are_valid_and_identifying(volumes: dict[str, Series]) -> None:
    study_uids = set()
    for s in volumes.values():
        first = s.datasets[0]
        for d in s.datasets:
            assert d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert d.SOPClassUID == CTImageStorage == d.file_meta.MediaStorageSOPClassUID
            assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
            assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert (d.BitsAllocated, d.PixelRepresentation) == (16, 1)
            assert float(d.RescaleSlope) == 1.0 and float(d.RescaleIntercept) == -1024.0
            for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
                assert d[key].value == first[key].value
        uids = [UID(d.SOPInstanceUID) for d in s.datasets]
        assert len(set(uids)) == len(uids) and all(u.is_valid for u in uids)
        study_uids.add(first.StudyInstanceUID)
        for key in IDENTIFYING:
            assert str(first.get(key, "")).strip(), key
        block = first.private_block(0x0009, "FEDCORE SYNTHETIC CT")
        assert str(first.PatientID) in str(block[0x02].value)  # de-id must remove this too
        # Slices are stacked along z at the slice spacing.
        z = np.array([float(d.ImagePositionPatient[2]) for d in s.datasets])
        assert np.allclose(np.diff(z), float(first.SpacingBetweenSlices), atol=1e-3)
        # File names do not sort in slice order: readers must order by position.
        assert sorted(s.names) != s.names
    assert len(study_uids) == len(volumes)


def test_files_are_what_pydicom_itself_writes(site: tuple[Path, list[Candidate]]) -> None:
    root, _ = site
    files = sorted((root / "patient_000").glob("*.dcm"))[:5]
    for path in files:
        data = path.read_bytes()
        assert data[128:132] == b"DICM"
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, pydicom.dcmread(path), enforce_file_format=True)
        assert buf.getvalue() == data, path.name


def test_write_series_round_trips_hu(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100.0, 1500.0, size=(3, 16, 20)).astype(np.float32)
    hu[0, 0, :3] = [-5000.0, 5000.0, -1024.0]  # clipped to the stored range
    profile = SCANNERS["ge-standard"]
    _, files = write_series(hu, tmp_path, scanner=profile, seed=1, patient_index=2, hospital="h")
    assert len(files) == 3
    s = read_series(tmp_path)
    expected = np.clip(np.rint(hu), -2048.0, 3071.0)
    assert np.array_equal(s.hu, expected)
    assert (int(s.datasets[0].Rows), int(s.datasets[0].Columns)) == (16, 20)
    with pytest.raises(ValueError, match=r"3-D \[z, y, x\] volume, got shape \(16, 20\)"):
        write_series(hu[0], tmp_path, scanner=profile, seed=1, patient_index=0, hospital="h")


# ----------------------------------------------------------------------------- candidates file


def test_read_candidates_round_trip(site: tuple[Path, list[Candidate]]) -> None:
    root, candidates = site
    text = (root / "candidates.csv").read_text()
    assert text.splitlines()[0] == ",".join(CANDIDATE_COLUMNS)
    assert read_candidates(root / "candidates.csv") == candidates


def test_read_candidates_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "own.csv"
    path.write_text("series_uid,x_mm,y_mm,z_mm,nodule,malignant\n1.2.3,1.5,-2,30,1,\n")
    (c,) = read_candidates(path)
    assert c == Candidate("1.2.3", 1.5, -2.0, 30.0, 1, 0, 0.0, "unknown")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "series_uid,x_mm,y_mm,nodule\n1.2,1,2,1\n",
            r"line 1: missing column\(s\) 'z_mm'",
        ),
        (
            "series_uid,x_mm,y_mm,z_mm,nodule\n1.2,1,2,3,1\n1.2,abc,2,3,0\n",
            r"line 3, column 'x_mm': expected a number, found 'abc'",
        ),
        (
            "series_uid,x_mm,y_mm,z_mm,nodule\n1.2,1,2,3,2\n",
            r"line 2, column 'nodule': expected 0 or 1, found '2'",
        ),
        (
            "series_uid,x_mm,y_mm,z_mm,nodule,malignant\n1.2,1,2,3,0,1\n",
            r"line 2, column 'malignant': found 1 for a candidate with nodule=0",
        ),
        (
            "series_uid,x_mm,y_mm,z_mm,nodule\n1.2,1,2,3\n",
            r"line 2: expected 5 fields like the header, found 4",
        ),
        ("", r"file is empty; expected a header line series_uid,x_mm"),
    ],
)
def test_read_candidates_rejects_broken_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "candidates.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_candidates(path)
    assert str(path) in str(info.value)


def test_read_candidates_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv not found"):
        read_candidates(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- arguments


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nodule_prob must be in \\[0, 1\\], got 1.5"):
        generate_scan(np.random.default_rng(0), SCANNERS["canon-thick"], nodule_prob=1.5)
    with pytest.raises(ValueError, match="scans must be >= 1, got 0"):
        generate_site(tmp_path, scans=0, scanner="canon-thick", seed=0)
    with pytest.raises(KeyError, match="unknown scanner profile"):
        generate_site(tmp_path, scans=1, scanner="nope", seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        generate_site(tmp_path, scans=1, scanner="canon-thick", seed=-1)


def test_refuses_to_mix_with_existing_series(tmp_path: Path) -> None:
    (tmp_path / "patient_000").mkdir()
    (tmp_path / "patient_000" / "old.dcm").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="patient_000 already holds DICOM files"):
        generate_site(tmp_path, scans=1, scanner="canon-thick", seed=0)


def test_generation_speed(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    started = time.perf_counter()
    candidates = generate_site(
        tmp_path, scans=3, scanner="ge-standard", seed=2, progress=lambda d, n: calls.append((d, n))
    )
    elapsed = time.perf_counter() - started
    print(f"generate_site: 3 ge-standard scans in {elapsed:.2f} s ({elapsed / 3:.2f} s/scan)")
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert len({c.series_uid for c in candidates}) == 3
