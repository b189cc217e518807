"""Tests of ``fed-client deid`` through the real command-line app (typer's CliRunner)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from click.testing import Result
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from fedcore.cli.client_cmd import app
from fedcore.cli.deid_cmd import EXIT_SKIPPED, EXIT_USAGE, REPORT_NAME, SECRET_ENV

SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _shipped(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"pydicom's shipped test file {name} is not installed")
    return Path(found)


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["deid", *map(str, args)])


def _text(result: Result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.secret"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A small site folder: a CT and an MR image in sub-folders."""
    root = tmp_path / "in"
    (root / "ct").mkdir(parents=True)
    (root / "mr" / "s1").mkdir(parents=True)
    shutil.copy(_shipped("CT_small.dcm"), root / "ct" / "1.dcm")
    shutil.copy(_shipped("MR_small.dcm"), root / "mr" / "s1" / "2.dcm")
    return root


def test_folder_all_done(src: Path, secret_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(src, out, "--secret-file", secret_file, "--site-id", "hospital-a")
    text = _text(result)
    assert result.exit_code == 0, result.output
    assert "de-identified 2 of 2 files" in text and "skipped" not in text
    assert "attributes changed:" in text and "private-removed" in text
    ct = pydicom.dcmread(out / "ct" / "1.dcm")
    assert ct.PatientName == "" and ct.PatientIdentityRemoved == "YES"
    assert ct.SOPInstanceUID != pydicom.dcmread(src / "ct" / "1.dcm").SOPInstanceUID
    assert (out / "mr" / "s1" / "2.dcm").is_file()
    report = json.loads((out / REPORT_NAME).read_text())
    assert (report["files_total"], report["files_written"], report["files_skipped"]) == (2, 2, 0)
    assert report["attributes"]["(0010,0010) PatientName"] == {"emptied": 2}


def test_non_dicom_file_is_skipped_and_reported(
    src: Path, secret_file: Path, tmp_path: Path
) -> None:
    (src / "notes.txt").write_text("Jane Doe, bed 4\n")
    out = tmp_path / "out"
    result = _run(src, out, "--secret-file", secret_file)
    text = _text(result)
    assert result.exit_code == EXIT_SKIPPED, result.output
    assert "de-identified 2 of 3 files" in text and "skipped 1" in text
    assert "notes.txt: not a DICOM file" in text
    assert not (out / "notes.txt").exists() and (out / "ct" / "1.dcm").is_file()
    report = json.loads((out / REPORT_NAME).read_text())
    skipped = [f for f in report["files"] if f["error"]]
    assert [Path(f["source"]).name for f in skipped] == ["notes.txt"]
    assert skipped[0]["target"] is None


def test_burned_in_annotation_is_skipped_with_reason(
    src: Path, secret_file: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(src / "ct" / "1.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.save_as(src / "ct" / "burned.dcm")
    out = tmp_path / "out"
    result = _run(src, out, "--secret-file", secret_file)
    assert result.exit_code == EXIT_SKIPPED, result.output
    assert "burned.dcm: Burned In Annotation (0028,0301) is YES" in _text(result)
    assert not (out / "ct" / "burned.dcm").exists()


def test_env_secret_single_file_and_report_path(
    secret_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = _shipped("CT_small.dcm")
    by_file = _run(ct, tmp_path / "a", "--secret-file", secret_file)
    assert by_file.exit_code == 0, by_file.output
    monkeypatch.setenv(SECRET_ENV, SECRET)
    report = tmp_path / "reports" / "r.json"
    by_env = _run(ct, tmp_path / "b", "--report", report)
    assert by_env.exit_code == 0, by_env.output
    assert "de-identified 1 of 1 files" in _text(by_env) and report.is_file()
    assert not (tmp_path / "b" / REPORT_NAME).exists()
    uid_a = pydicom.dcmread(tmp_path / "a" / ct.name).SOPInstanceUID
    uid_b = pydicom.dcmread(tmp_path / "b" / ct.name).SOPInstanceUID
    assert uid_a == uid_b  # the same secret, from a file or the environment
    monkeypatch.setenv(SECRET_ENV, "another site secret, 32 bytes ok")
    assert _run(ct, tmp_path / "c").exit_code == 0
    assert pydicom.dcmread(tmp_path / "c" / ct.name).SOPInstanceUID != uid_a


def test_missing_secret_is_refused_with_how_to(src: Path, tmp_path: Path) -> None:
    result = _run(src, tmp_path / "out")
    assert result.exit_code == EXIT_USAGE
    text = _text(result)
    assert "no site secret" in text and "secrets.token_hex(32)" in text and SECRET_ENV in text
    assert not (tmp_path / "out").exists()


def test_bad_secret_file_is_refused(src: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.secret"
    short.write_text("tooshort\n")
    result = _run(src, tmp_path / "out", "--secret-file", short)
    assert result.exit_code == EXIT_USAGE and "holds 8 bytes" in _text(result)
    missing = _run(src, tmp_path / "out", "--secret-file", tmp_path / "nope.secret")
    assert missing.exit_code == EXIT_USAGE and "does not exist" in _text(missing)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["inside", "same"])
def test_output_inside_input_is_refused(src: Path, secret_file: Path, where: str) -> None:
    out = src / "deid" if where == "inside" else src
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    result = _run(src, out, "--secret-file", secret_file)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "input folder" in _text(result)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_report_inside_input_is_refused(src: Path, secret_file: Path, tmp_path: Path) -> None:
    args = ("--secret-file", secret_file, "--report", src / "r.json")
    result = _run(src, tmp_path / "out", *args)
    assert result.exit_code == EXIT_USAGE and "inside the input folder" in _text(result)
    assert not (src / "r.json").exists() and not (tmp_path / "out").exists()


def test_single_file_into_its_own_folder_is_refused(src: Path, secret_file: Path) -> None:
    ct = src / "ct" / "1.dcm"
    before = ct.read_bytes()
    result = _run(ct, src / "ct", "--secret-file", secret_file)
    assert result.exit_code == EXIT_USAGE and "overwrite the input file" in _text(result)
    assert ct.read_bytes() == before


def test_missing_input_is_a_usage_error(secret_file: Path, tmp_path: Path) -> None:
    result = _run(tmp_path / "nothing", tmp_path / "out", "--secret-file", secret_file)
    assert result.exit_code == EXIT_USAGE and "does not exist" in _text(result)
    a_file = tmp_path / "out.txt"
    a_file.write_text("")
    to_file = _run(_shipped("MR_small.dcm"), a_file, "--secret-file", secret_file)
    assert to_file.exit_code == EXIT_USAGE and "is a file: expected a folder" in _text(to_file)


def test_jobs_option(src: Path, secret_file: Path, tmp_path: Path) -> None:
    result = _run(src, tmp_path / "out", "--secret-file", secret_file, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "de-identified 2 of 2 files" in _text(result)
    refused = _run(src, tmp_path / "out2", "--secret-file", secret_file, "--jobs", "0")
    assert refused.exit_code == 2 and "--jobs" in _text(refused)
    assert not (tmp_path / "out2").exists()
