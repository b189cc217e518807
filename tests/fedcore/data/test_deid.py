"""Tests of fedcore.data.deid on pydicom's shipped test files (nothing is downloaded)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from fedcore.data.deid import (
    BASIC_PROFILE,
    COMPOUND_RESOLUTION,
    MIN_SECRET_BYTES,
    PROFILE_NAME,
    Change,
    DeidentificationError,
    Deidentifier,
    FileReport,
    dummy_value,
    load_site_secret,
    report_dict,
    resolve_action,
    write_report,
)

SECRET = b"site-A secret for tests, 32 byte"
OTHER_SECRET = b"site-B secret for tests, 32 byte"
UID_PATTERN = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")

# Real files shipped with pydicom: CT, MR (plain, RLE), JPEG 2000, RT plan/dose/structure set,
# structured reports, enhanced multi-frame, overlay, waveform, and images of the DICOMDIR set.
SHIPPED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "rtstruct.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "liver_1frame.dcm",
    "examples_overlay.dcm",
    "examples_ybr_color.dcm",
    "waveform_ecg.dcm",
    "dicomdirtests/77654033/CR1/6154",
    "dicomdirtests/98892001/CT5N/2062",
    "dicomdirtests/98892003/MR700/4467",
    "dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM000000",
]
# What each code of Table E.1-1 must leave, written out here rather than taken from the module:
# compound codes resolve to the strictest choice (X/... removes, Z/D empties).
EXPECTED_OUTCOME = {
    "X": "absent",
    "X/Z": "absent",
    "X/D": "absent",
    "X/Z/D": "absent",
    "X/Z/U*": "absent",
    "Z": "empty",
    "Z/D": "empty",
    "D": "dummy",
    "U": "remapped",
}
GEOMETRY = [
    "Modality",
    "SOPClassUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
]

Path_ = tuple[int, ...]


def _data_dir() -> Path:
    found = get_testdata_file("CT_small.dcm", download=False)
    if found is None:
        pytest.skip("pydicom's shipped test files are not installed (CT_small.dcm missing)")
    return Path(found).parent


def _shipped(name: str) -> Path:
    path = _data_dir() / name
    if not path.is_file():
        pytest.skip(f"{name} is not shipped with this pydicom version")
    return path


def _read(path: Path) -> Dataset:
    """Read a shipped file; a few (rtstruct.dcm) are bare datasets without the Part 10 header."""
    try:
        ds: Dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
    return ds


def _walk(ds: Dataset, prefix: Path_ = ()) -> Iterator[tuple[Path_, DataElement]]:
    """Every element with its path (tag, item index, tag, ...), recursing into sequences."""
    for elem in ds:
        path = (*prefix, int(elem.tag))
        yield path, elem
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                yield from _walk(item, (*path, index))


def _profile_occurrences(ds: Dataset) -> list[tuple[Path_, DataElement, str]]:
    """Profile attributes in ``ds`` and its file meta whose ancestors are neither private nor
    themselves in the profile (those go with their ancestor, which is checked on its own)."""
    found = []
    sources: list[tuple[Path_, Dataset]] = [((), ds)]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        sources.append(((-1,), meta))
    for prefix, root in sources:
        for path, elem in _walk(root, prefix):
            ancestors = path[len(prefix) : -1 : 2]
            if any(BASIC_PROFILE.get(t) or (t >> 16) % 2 for t in ancestors):
                continue
            code = BASIC_PROFILE.get(int(elem.tag))
            if code is not None:
                found.append((path, elem, code))
    return found


def _lookup(ds: Dataset, path: Path_) -> DataElement | None:
    node: Any = ds
    if path[0] == -1:
        node, path = ds.file_meta, path[1:]
    for depth, step in enumerate(path):
        if depth % 2 == 0:
            if step not in node:
                return None
            node = node[step]
            if depth == len(path) - 1:
                return node  # type: ignore[no-any-return]
            node = node.value
        else:
            node = node[step]
    raise AssertionError(f"bad path {path}")


def _is_empty(elem: DataElement) -> bool:
    return elem.VM == 0 or elem.value in ("", None, b"") or (elem.VR == "SQ" and not elem.value)


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(SECRET, site_id="hospital-a")


@pytest.fixture(scope="module")
def dicomdir_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[FileReport]]:
    """The DICOMDIR test set (images, DICOMDIRs, README files) de-identified once."""
    src = _data_dir() / "dicomdirtests"
    if not src.is_dir():
        pytest.skip("pydicom's dicomdirtests folder is not shipped")
    dst = tmp_path_factory.mktemp("deid") / "out"
    calls: list[tuple[int, int]] = []
    reports = Deidentifier(SECRET).tree(src, dst, progress=lambda d, t: calls.append((d, t)))
    total = len(reports)
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) == total + 1
    return src, dst, reports


# --- the profile table -------------------------------------------------------------------


def test_table_is_the_basic_profile_with_known_tags_and_codes() -> None:
    assert len(BASIC_PROFILE) > 600
    assert set(BASIC_PROFILE.values()) == set(EXPECTED_OUTCOME)
    for tag in BASIC_PROFILE:
        dictionary_VR(tag)  # raises KeyError for a tag pydicom does not know: a typo
    for code in BASIC_PROFILE.values():
        assert resolve_action(code) in {"X", "Z", "D", "U"}
    assert dict(COMPOUND_RESOLUTION) == {
        "X/Z": "X",
        "X/D": "X",
        "X/Z/D": "X",
        "X/Z/U*": "X",
        "Z/D": "Z",
    }
    with pytest.raises(ValueError, match="'Q'"):
        resolve_action("Q")


@pytest.mark.parametrize(
    ("keyword", "code"),
    [
        ("PatientName", "Z"),
        ("PatientBirthDate", "Z"),
        ("PatientSex", "Z"),
        ("PatientAge", "X"),
        ("PatientSize", "X"),
        ("PatientWeight", "X"),
        ("PatientAddress", "X"),
        ("OtherPatientIDs", "X"),
        ("AccessionNumber", "Z"),
        ("StudyDate", "Z"),
        ("SeriesDate", "X/D"),
        ("AcquisitionDate", "X/Z"),
        ("ContentDate", "Z/D"),
        ("ReferringPhysicianName", "Z"),
        ("PerformingPhysicianName", "X"),
        ("OperatorsName", "X/Z/D"),
        ("InstitutionName", "X/Z/D"),
        ("InstitutionAddress", "X"),
        ("InstitutionalDepartmentName", "X"),
        ("StationName", "X/Z/D"),
        ("DeviceSerialNumber", "X/Z/D"),
        ("StudyDescription", "X"),
        ("ImageComments", "X"),
        ("RequestingService", "X"),
        ("StudyInstanceUID", "U"),
        ("SeriesInstanceUID", "U"),
        ("SOPInstanceUID", "U"),
        ("FrameOfReferenceUID", "U"),
        ("ReferencedSOPInstanceUID", "U"),
        ("MediaStorageSOPInstanceUID", "U"),
        ("ReferencedImageSequence", "X/Z/U*"),
    ],
)
def test_table_codes_of_key_attributes(keyword: str, code: str) -> None:
    assert BASIC_PROFILE[tag_for_keyword(keyword)] == code  # type: ignore[index]


@pytest.mark.parametrize(
    "keyword",
    [*GEOMETRY, "PixelData", "TransferSyntaxUID", "MediaStorageSOPClassUID", "BitsStored"],
)
def test_table_keeps_what_images_need(keyword: str) -> None:
    assert tag_for_keyword(keyword) not in BASIC_PROFILE


def test_dummy_values_by_vr() -> None:
    assert dummy_value("PN") == "ANONYMOUS"
    assert dummy_value("LO") == dummy_value("SH") == "ANONYMIZED"
    assert [dummy_value(vr) for vr in ("DA", "TM", "AS")] == ["19000101", "000000", "000D"]
    assert dummy_value("US or SS") == 0
    assert dummy_value("OB") == bytes(8)
    for vr in ("SQ", "UI", "XX"):
        with pytest.raises(ValueError, match=repr(vr)):
            dummy_value(vr)


# --- every profile attribute of every shipped file ---------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_every_profile_attribute_in_shipped_file_is_handled(name: str, deid: Deidentifier) -> None:
    ds = _read(_shipped(name))
    occurrences = _profile_occurrences(ds)
    assert occurrences, f"{name} holds no attribute of the profile"
    out, changes = deid.dataset(ds)
    for path, before, code in occurrences:
        after = _lookup(out, path)
        where = f"{name} {before.tag} {before.keyword} ({code})"
        expected = EXPECTED_OUTCOME[code]
        if expected == "absent":
            assert after is None, where
            continue
        assert after is not None, where
        if expected == "empty":
            assert _is_empty(after), where
        elif expected == "remapped":
            if _is_empty(before):
                continue
            olds = before.value if before.VM > 1 else [before.value]
            news = after.value if after.VM > 1 else [after.value]
            assert [str(u) for u in news] == [deid.uid(str(u)) for u in olds], where
            assert all(str(new) != str(old) for old, new in zip(olds, news, strict=True)), where
        else:  # dummy
            if after.VR == "SQ":
                assert len(after.value) == 0, where
            elif after.VR == "UI":
                assert str(after.value) == deid.uid(str(before.value)), where
            else:
                assert after.value == dummy_value(after.VR), where
                assert after.value != before.value or before.value == dummy_value(before.VR)
    changed = {(c.tag, c.action) for c in changes}
    for _, before, code in occurrences:
        if EXPECTED_OUTCOME[code] == "absent":
            assert (f"({before.tag.group:04X},{before.tag.element:04X})", "removed") in changed


def test_dummy_on_a_sequence_leaves_no_item(deid: Deidentifier) -> None:
    """An SR's Content Sequence (D) holds the report text: no item of it may survive."""
    ds = _read(_shipped("test-SR.dcm"))
    assert len(ds.ContentSequence) > 0 and len(ds.VerifyingObserverSequence) > 0
    out, changes = deid.dataset(ds)
    assert len(out.ContentSequence) == 0 and len(out.VerifyingObserverSequence) == 0
    assert Change("(0040,A730)", "ContentSequence", "replaced") in changes


def test_actions_inside_a_kept_sequence(deid: Deidentifier) -> None:
    """Every action is carried out in the items of a sequence that the profile keeps."""
    ds = _read(_shipped("MR_small.dcm"))
    item = Dataset()
    item.PersonName = "Doe^Jane"  # D, PN
    item.Date = "20240102"  # D, DA
    item.VerifyingOrganization = "St. Elsewhere"  # D, LO
    item.AnnotationGroupUID = "1.2.3.4.5"  # D on a UID
    item.SeriesInstanceUID = "1.2.3.4.6"  # U
    item.PatientName = "Doe^John"  # Z
    item.PatientAge = "042Y"  # X
    inner = Dataset()
    inner.TextValue = "free text about Jane Doe"
    item.ContentSequence = DicomSequence([inner])  # D on a sequence
    item.add_new(0x00091001, "LO", "private")  # private, needs no creator to be removed
    assert tag_for_keyword("ReferencedSeriesSequence") not in BASIC_PROFILE
    ds.ReferencedSeriesSequence = DicomSequence([item])
    out, _ = deid.dataset(ds)
    got = out.ReferencedSeriesSequence[0]
    assert (got.PersonName, got.Date, got.VerifyingOrganization) == (
        "ANONYMOUS",
        "19000101",
        "ANONYMIZED",
    )
    assert got.AnnotationGroupUID == deid.uid("1.2.3.4.5")
    assert got.SeriesInstanceUID == deid.uid("1.2.3.4.6")
    assert got.PatientName == "" and "PatientAge" not in got
    assert len(got.ContentSequence) == 0 and 0x00091001 not in got


def test_known_phi_of_ct_small(deid: Deidentifier) -> None:
    """Spot checks, written out by hand, against a transcription slip in the table."""
    ds = _read(_shipped("CT_small.dcm"))
    emptied = ("PatientName", "PatientID", "PatientSex", "StudyDate", "StudyTime", "ContentDate")
    removed = ("PatientAge", "PatientWeight", "InstitutionName", "StationName", "SeriesDate")
    for keyword in emptied + removed + ("DataSetTrailingPadding",):
        assert keyword in ds and not _is_empty(ds[keyword]), keyword
    out, _ = deid.dataset(ds)
    for keyword in (*emptied, "PatientBirthDate"):
        assert keyword in out and _is_empty(out[keyword]), keyword
    for keyword in (*removed, "DataSetTrailingPadding", "OtherPatientIDsSequence"):
        assert keyword not in out, keyword
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == PROFILE_NAME
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert code.CodeMeaning == "Basic Application Confidentiality Profile"


def test_marking_twice_does_not_duplicate(deid: Deidentifier) -> None:
    once, _ = deid.dataset(_read(_shipped("MR_small.dcm")))
    twice, _ = deid.dataset(once)
    assert twice.DeidentificationMethod == PROFILE_NAME
    assert len(twice.DeidentificationMethodCodeSequence) == 1


# --- private tags, curves and overlays -----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "examples_overlay.dcm", "waveform_ecg.dcm", "nested_priv_SQ.dcm"]
)
def test_private_tags_removed_everywhere(name: str, deid: Deidentifier) -> None:
    ds = _read(_shipped(name))
    private = [p for p, e in _walk(ds) if e.tag.is_private]
    assert private, f"{name} was expected to hold private tags"
    out, changes = deid.dataset(ds)
    assert not [p for p, e in _walk(out) if e.tag.is_private]
    top_level = {p[0] for p in private if len(p) == 1}
    assert {c.tag for c in changes if c.action == "private-removed"} == {
        f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in top_level
    }


def test_overlay_groups_removed(deid: Deidentifier) -> None:
    ds = _read(_shipped("examples_overlay.dcm"))
    assert any(0x6000 <= e.tag.group <= 0x60FF for e in ds)
    out, _ = deid.dataset(ds)
    assert not any(0x6000 <= e.tag.group <= 0x60FF for e in out)


# --- UIDs -----------------------------------------------------------------------------------


def test_uid_is_deterministic_valid_and_secret_dependent() -> None:
    a1, a2 = Deidentifier(SECRET), Deidentifier(SECRET.decode())
    b = Deidentifier(OTHER_SECRET)
    olds = [f"1.2.826.0.1.3680043.8.498.{i}.{i * 7919}" for i in range(500)]
    news = [a1.uid(u) for u in olds]
    assert news == [a2.uid(u) for u in olds]  # same secret, another instance: same UIDs
    assert len(set(news)) == len(olds)
    assert all(x != y for x, y in zip(news, [b.uid(u) for u in olds], strict=True))
    assert all(UID_PATTERN.match(u) and len(u) <= 64 for u in news)
    assert a1.uid("1.2.3\x00") == a1.uid("1.2.3")
    with pytest.raises(ValueError, match="empty UID"):
        a1.uid("")


def test_well_known_uids_kept_and_meta_consistent(deid: Deidentifier) -> None:
    ds = _read(_shipped("CT_small.dcm"))
    out, _ = deid.dataset(ds)
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPInstanceUID == deid.uid(ds.SOPInstanceUID) != ds.SOPInstanceUID
    for uid in (out.StudyInstanceUID, out.SeriesInstanceUID, out.FrameOfReferenceUID):
        assert UID_PATTERN.match(uid) and len(uid) <= 64


def test_references_inside_sequences_are_remapped(deid: Deidentifier) -> None:
    ds = _read(_shipped("rtplan.dcm"))
    ref = ds.ReferencedStructureSetSequence[0]
    out, _ = deid.dataset(ds)
    out_ref = out.ReferencedStructureSetSequence[0]
    assert out_ref.ReferencedSOPInstanceUID == deid.uid(ref.ReferencedSOPInstanceUID)
    assert out_ref.ReferencedSOPClassUID == ref.ReferencedSOPClassUID  # a well-known UID


def test_series_still_group_after_deid(
    dicomdir_run: tuple[Path, Path, list[FileReport]],
) -> None:
    _, _, reports = dicomdir_run
    written = [r for r in reports if r.ok]
    assert len(written) >= 20
    pairs = []
    for r in written:
        before = _read(Path(r.source))
        assert r.target is not None
        after = pydicom.dcmread(r.target, force=True)
        pairs.append((str(before.SeriesInstanceUID), str(after.SeriesInstanceUID)))
        assert str(after.StudyInstanceUID) != str(before.StudyInstanceUID)
    sizes_before = sorted(Counter(b for b, _ in pairs).values())
    sizes_after = sorted(Counter(a for _, a in pairs).values())
    assert sizes_before == sizes_after and max(sizes_before) > 1
    mapping = dict(pairs)
    assert len(set(mapping.values())) == len(mapping)  # distinct series stay distinct
    assert all(mapping[b] == a for b, a in pairs)


# --- pixels, geometry, input untouched -------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_pixels_and_geometry_unchanged_on_disk(
    name: str, deid: Deidentifier, tmp_path: Path
) -> None:
    src = _shipped(name)
    before_bytes = src.read_bytes()
    report = deid.file(src, tmp_path / "out.dcm")
    assert report.ok, report.error
    assert report.target == str(tmp_path / "out.dcm")
    assert src.read_bytes() == before_bytes
    ds = _read(src)
    out = pydicom.dcmread(tmp_path / "out.dcm", force=True)
    if "PixelData" in ds:
        assert out.PixelData == ds.PixelData
    for keyword in GEOMETRY:
        if keyword in ds:
            assert out[keyword].value == ds[keyword].value, keyword
    if getattr(out, "preamble", None):
        assert out.preamble == bytes(128)
    if "file_meta" in dir(ds) and "TransferSyntaxUID" in ds.file_meta:
        assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "test-SR.dcm"])
def test_input_dataset_not_mutated(name: str, deid: Deidentifier) -> None:
    ds = _read(_shipped(name))
    snapshot = copy.deepcopy(ds)
    out, _ = deid.dataset(ds)
    assert ds == snapshot
    assert ds.file_meta == snapshot.file_meta
    assert out is not ds and out.file_meta is not ds.file_meta
    assert ds.SOPInstanceUID != out.SOPInstanceUID


# --- refusals and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "needle"),
    [("BurnedInAnnotation", "Burned In Annotation"), ("RecognizableVisualFeatures", "deface")],
)
def test_identifying_pixels_refused(
    keyword: str, needle: str, deid: Deidentifier, tmp_path: Path
) -> None:
    ds = _read(_shipped("MR_small.dcm"))
    setattr(ds, keyword, "YES")
    src = tmp_path / "in.dcm"
    ds.save_as(src)
    with pytest.raises(DeidentificationError, match=needle):
        deid.dataset(ds)
    report = deid.file(src, tmp_path / "out" / "x.dcm")
    assert not report.ok and report.target is None and needle in (report.error or "")
    assert not (tmp_path / "out" / "x.dcm").exists()


def test_secret_must_be_long_enough(tmp_path: Path) -> None:
    for bad in (b"", "", b"x" * (MIN_SECRET_BYTES - 1)):
        with pytest.raises(ValueError, match=f"at least {MIN_SECRET_BYTES}"):
            Deidentifier(bad)
    assert "secret" not in repr(Deidentifier(SECRET, site_id="h")).lower()
    missing = tmp_path / "none.secret"
    with pytest.raises(DeidentificationError, match="secrets.token_hex"):
        load_site_secret(missing)
    short = tmp_path / "short.secret"
    short.write_text("abc\n")
    with pytest.raises(DeidentificationError, match="holds 3 bytes"):
        load_site_secret(short)
    good = tmp_path / "site.secret"
    good.write_text("  " + "ab" * 16 + "\n")
    assert load_site_secret(good) == b"ab" * 16


def test_file_refuses_to_overwrite_its_input(deid: Deidentifier, tmp_path: Path) -> None:
    src = tmp_path / "ct.dcm"
    shutil.copy(_shipped("CT_small.dcm"), src)
    before = src.read_bytes()
    report = deid.file(src, tmp_path / "." / "ct.dcm")
    assert not report.ok and "input file itself" in (report.error or "")
    assert src.read_bytes() == before


# --- folders -----------------------------------------------------------------------------------


def test_tree_reports_non_dicom_and_dicomdir(
    dicomdir_run: tuple[Path, Path, list[FileReport]],
) -> None:
    src, dst, reports = dicomdir_run
    by_name = {Path(r.source).relative_to(src.resolve()).as_posix(): r for r in reports}
    readme = by_name["README.txt"]
    assert readme.target is None and "not a DICOM file" in (readme.error or "")
    assert not (dst / "README.txt").exists()
    dicomdir = by_name["DICOMDIR"]
    assert "DICOMDIR" in (dicomdir.error or "") and not (dst / "DICOMDIR").exists()
    image = by_name["98892001/CT5N/2062"]
    assert image.ok and Path(image.target or "") == dst.resolve() / "98892001/CT5N/2062"
    assert {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()} == {
        k for k, r in by_name.items() if r.ok
    }


def test_tree_refuses_overlapping_folders(deid: Deidentifier, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    shutil.copy(_shipped("MR_small.dcm"), src / "a" / "mr.dcm")
    for dst, needle in (
        (src, "is the input folder"),
        (src / "a" / "out", "is inside the input folder"),
        (tmp_path, "contains the input folder"),
    ):
        with pytest.raises(DeidentificationError, match=needle):
            deid.tree(src, dst)
    assert sorted(p.name for p in src.rglob("*")) == ["a", "mr.dcm"]
    with pytest.raises(DeidentificationError, match="not a folder"):
        deid.tree(src / "a" / "mr.dcm", tmp_path / "out")


# --- report -------------------------------------------------------------------------------------


def test_report_counts_match_changes(
    dicomdir_run: tuple[Path, Path, list[FileReport]], tmp_path: Path
) -> None:
    _, _, reports = dicomdir_run
    path = tmp_path / "sub" / "report.json"
    write_report(reports, path)
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(report_dict(reports)))
    assert data["profile"] == PROFILE_NAME
    assert data["files_total"] == len(reports) == data["files_written"] + data["files_skipped"]
    assert data["files_skipped"] == sum(1 for r in reports if r.error)
    every = [c for r in reports for c in r.changes]
    assert sum(data["actions"].values()) == len(every)
    assert data["actions"]["emptied"] == sum(c.action == "emptied" for c in every) > 0
    assert data["attributes"]["(0010,0010) PatientName"]["emptied"] == sum(
        1 for c in every if c.keyword == "PatientName"
    )
    entry = next(f for f in data["files"] if f["error"] is None)
    assert {"tag", "keyword", "action"} == set(entry["changes"][0])
    first = _read(Path(reports[0].source if reports[0].ok else entry["source"]))
    assert str(first.PatientName) not in path.read_text()  # a report holds no values


def test_tree_in_worker_processes_writes_the_same_files_and_reports(
    deid: Deidentifier, tmp_path: Path
) -> None:
    from dataclasses import replace

    from fedcore.data.synthetic_ct import generate_site, scanner_profile

    src = tmp_path / "in"
    profile = replace(scanner_profile("canon-thick"), matrix=96, slices=40)
    generate_site(src, scans=1, scanner=profile, seed=5)  # 40 slices and candidates.csv
    (src / "notes.txt").write_text("not an image")
    one = deid.tree(src, tmp_path / "one")
    seen: list[tuple[int, int]] = []
    two = deid.tree(
        src, tmp_path / "two", jobs=2, progress=lambda done, total: seen.append((done, total))
    )
    assert len(one) == 42 and sum(r.ok for r in one) == 40
    # same reports in the same (sorted) order, apart from where they were written
    for a, b in zip(one, two, strict=True):
        assert (a.source, a.error, a.changes) == (b.source, b.error, b.changes)
        assert (a.target is None) == (b.target is None)
    for a in one:
        if a.target is not None:
            rel = Path(a.target).relative_to((tmp_path / "one").resolve())
            assert Path(a.target).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    assert seen[0] == (0, 42) and seen[-1] == (42, 42) and len(seen) == 43
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        deid.tree(src, tmp_path / "three", jobs=0)
