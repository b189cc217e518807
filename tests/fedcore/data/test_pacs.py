"""Tests for fedcore.data.pacs: the site's PACS spec, and a round trip through a real Orthanc PACS.

The round trip runs Orthanc inside a private network namespace (only ``lo``), stores pydicom's
shipped DICOM files into it with dcmtk's ``storescu`` and pulls them back through fedcore with
C-FIND, C-GET and C-MOVE (see ``orthanc_harness.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from fedcore.data.pacs import (
    PacsError,
    PacsSpec,
    find_studies,
    get_storage_contexts,
    instance_path,
    retrieve_study,
)
from tests.fedcore.data.orthanc_harness import dcmtk_storescu, namespace_command, orthanc_binary

HARNESS = Path(__file__).with_name("orthanc_harness.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- spec


def test_spec_defaults_and_destination() -> None:
    spec = PacsSpec(port=4242, called_ae=" ORTHANC ")
    assert spec.called_ae == "ORTHANC"  # leading/trailing spaces are not significant in AE titles
    assert (spec.host, spec.calling_ae, spec.method, spec.query) == (
        "127.0.0.1",
        "FEDCORE",
        "c-get",
        {},
    )
    assert spec.destination_ae == "FEDCORE"
    moved = PacsSpec(
        port=4242, called_ae="PACS", method="c-move", store_port=11112, move_destination_ae="SITE_A"
    )
    assert moved.destination_ae == "SITE_A"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"called_ae": "A" * 17}, "1 to 16"),
        ({"called_ae": "BAD\\AE"}, "without a backslash"),
        ({"calling_ae": "   "}, "calling_ae"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"method": "c-move"}, "needs store_port"),
        ({"query": {"Modalty": "CT"}}, "'Modalty' is not a DICOM attribute keyword"),
        ({"query": {"QueryRetrieveLevel": "SERIES"}}, "QueryRetrieveLevel"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"aet": "X"}, "Extra inputs are not permitted"),
    ],
)
def test_spec_rejects_bad_values(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        PacsSpec(**{"port": 104, "called_ae": "PACS", **fields})
    assert expected in str(info.value)


def test_storage_contexts_fit_one_association() -> None:
    contexts = get_storage_contexts()
    # one Query/Retrieve context plus these: PS3.8 allows at most 128 per association
    assert len(contexts) + 1 <= 128
    pairs = [(sop, ts) for sop, syntaxes in contexts for ts in syntaxes]
    assert len(pairs) == len(set(pairs)), "a (SOP class, transfer syntax) pair is proposed twice"
    ct = [syntaxes for sop, syntaxes in contexts if sop == CTImageStorage]
    # uncompressed in one context; each compressed syntax alone, so the PACS never transcodes
    assert ExplicitVRLittleEndian in ct[0]
    assert [JPEG2000Lossless] in ct and [RLELossless] in ct


def test_instance_path_layout_and_traversal(tmp_path: Path) -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    assert instance_path(tmp_path, ds) == tmp_path / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    with warnings.catch_warnings():  # pydicom warns on the invalid UI value, as a PACS might send
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = "../../../etc/cron.d/x"
    with pytest.raises(ValueError, match=r"SOPInstanceUID must be a DICOM UID.*\.\./\.\./"):
        instance_path(tmp_path, ds)
    del ds.SeriesInstanceUID
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        instance_path(tmp_path, ds)


def test_bad_arguments_fail_before_any_network(tmp_path: Path) -> None:
    spec = PacsSpec(port=_free_port(), called_ae="PACS", timeout_s=2)
    with pytest.raises(ValueError, match="'StudyUID' is not a DICOM attribute keyword"):
        find_studies(spec, StudyUID="1.2.3")
    with pytest.raises(ValueError, match=r"study_uid must be a DICOM UID.*'1\.2/\.\./3'"):
        retrieve_study(spec, "1.2/../3", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_names_host_and_port(tmp_path: Path) -> None:
    port = _free_port()  # closed again: nothing listens there
    spec = PacsSpec(port=port, called_ae="PACS", timeout_s=3)
    with pytest.raises(PacsError, match=rf"cannot connect to PACS 'PACS' at 127\.0\.0\.1:{port}"):
        find_studies(spec)
    with pytest.raises(PacsError, match="Connection refused") as info:
        retrieve_study(spec, "1.2.3", tmp_path)
    assert info.value.received == []


def test_c_move_store_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        store_port = busy.getsockname()[1]
        spec = PacsSpec(port=_free_port(), called_ae="PACS", method="c-move", store_port=store_port)
        with pytest.raises(
            PacsError, match=rf"storage SCP for C-MOVE on 127\.0\.0\.1:{store_port}"
        ):
            retrieve_study(spec, "1.2.3", tmp_path)


# --------------------------------------------------------------------------- Orthanc


def _shipped_files() -> list[Path]:
    """pydicom's shipped test files: 4 studies, 4 patients, one JPEG 2000 compressed."""
    singles = [
        get_testdata_file(n, download=False) for n in ("CT_small.dcm", "MR_small_jp2klossless.dcm")
    ]
    dicomdir = get_testdata_file("DICOMDIR", download=False)
    if dicomdir is None or None in singles:
        pytest.skip(
            "pydicom's shipped test files (CT_small, MR_small_jp2klossless, DICOMDIR) are absent"
        )
    base = Path(str(dicomdir)).parent
    series = sorted((base / "77654033" / "CT2").iterdir()) + sorted((base / "98892001").glob("*/*"))
    return [Path(str(p)) for p in singles] + [p for p in series if p.is_file()]


def _skip_without_pacs_tools() -> None:
    missing = [
        name
        for name, found in [
            ("Orthanc", orthanc_binary()),
            ("storescu (dcmtk)", dcmtk_storescu()),
            ("unshare (util-linux)", shutil.which("unshare")),
        ]
        if not found
    ]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: apt-get install orthanc dcmtk util-linux (.ci/run does)"
        )
    probe = subprocess.run(
        [*namespace_command(), "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(
            f"network namespaces are not permitted here ({' '.join(namespace_command())} true: {probe.stderr.strip()!r})"
        )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the harness and everything in its process group (Orthanc), by PID."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Runs the harness once for the module; its result.json, plus the files it stored."""
    _skip_without_pacs_tools()
    files = _shipped_files()
    work = tmp_path_factory.mktemp("orthanc")
    with (work / "harness.out").open("wb") as out:
        proc = subprocess.Popen(
            [*namespace_command(), sys.executable, str(HARNESS), str(work), *map(str, files)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as a whole below
        )
    result: dict[str, Any] = {}
    try:
        proc.wait(timeout=120)
        result = json.loads((work / "result.json").read_text())
        assert "fatal" not in result, f"{result['fatal']}\n{_tail(work / 'orthanc.log')}"
        assert proc.returncode == 0, _tail(work / "harness.out")
        yield {**result, "work": work, "files": files}
    finally:
        _stop_group(proc)
        _kill_leftover_orthanc(result.get("orthanc_pid"), work)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else f"({path} absent)"


def _kill_leftover_orthanc(pid: int | None, work: Path) -> None:
    """Kill the Orthanc this test started if it outlived the harness (matched by PID and config)."""
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        if str(work / "orthanc.json") in proc.cmdline():
            proc.kill()
    except psutil.Error:
        pass


def _by_sop(paths: list[Path]) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}


def _assert_same_instances(received: list[Path], originals: list[Path], root: Path) -> None:
    got, want = _by_sop(received), _by_sop(originals)
    assert sorted(got) == sorted(want)
    for sop, ds in got.items():
        orig = want[sop]
        path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{sop}.dcm"
        assert path in received
        assert ds.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID, sop
        assert ds.PixelData == orig.PixelData, f"{sop}: pixel data bytes differ"
        # every other element as stored (Orthanc drops trailing padding, FFFC,FFFC)
        for elem in orig:
            if elem.tag not in (0xFFFCFFFC, 0x7FE00010):
                assert ds[elem.tag].value == elem.value, f"{sop} {elem.tag}"


def test_orthanc_ran_isolated_and_was_stopped(orthanc: dict[str, Any]) -> None:
    assert orthanc["interfaces"] == ["lo"], "Orthanc's network namespace must hold only loopback"
    # stopped by its PID with SIGTERM, and exited cleanly
    assert orthanc["orthanc_exit"] == 0 and orthanc["orthanc_alive_after_stop"] is False
    config = str(orthanc["work"] / "orthanc.json")
    assert not [
        p.pid for p in psutil.process_iter(["cmdline"]) if config in (p.info["cmdline"] or [])
    ]


def test_c_find_lists_studies_with_patients(orthanc: dict[str, Any]) -> None:
    found = {s["patient_id"]: s for s in orthanc["find_all"]}
    assert sorted(found) == ["1CT1", "4MR1", "77654033", "98890234"]
    originals = _by_sop(orthanc["files"])
    for info in found.values():
        study = [d for d in originals.values() if d.StudyInstanceUID == info["study_uid"]]
        assert study and all(d.PatientID == info["patient_id"] for d in study)
        assert info["study_date"] == study[0].StudyDate
        assert info["modalities"] == sorted({d.Modality for d in study})
        assert info["series_count"] == len({d.SeriesInstanceUID for d in study})
    assert found["98890234"]["series_count"] == 2
    assert [s["patient_id"] for s in orthanc["find_patient"]] == ["77654033"]


def test_c_get_returns_identical_instances(orthanc: dict[str, Any]) -> None:
    received = [Path(p) for paths in orthanc["get"].values() for p in paths]
    _assert_same_instances(received, orthanc["files"], orthanc["work"] / "get")
    mr = [p for p in received if pydicom.dcmread(p).Modality == "MR"]
    assert len(mr) == 1 and pydicom.dcmread(mr[0]).file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_c_move_pull_with_query(orthanc: dict[str, Any]) -> None:
    received = [Path(p) for p in orthanc["move"]]
    ct_only = [p for p in orthanc["files"] if pydicom.dcmread(p).Modality == "CT"]
    assert len(ct_only) == len(orthanc["files"]) - 1  # the query ModalitiesInStudy=CT leaves out MR
    _assert_same_instances(received, ct_only, orthanc["work"] / "move")
    assert orthanc["move_progress"] == [[1, 3], [2, 3], [3, 3]]


def test_errors_are_clear(orthanc: dict[str, Any]) -> None:
    errors = orthanc["errors"]
    assert {e["type"] for e in errors.values()} == {"PacsError"}, errors
    port = orthanc["ports"]["dicom"]
    for method in ("get", "move"):
        message = errors[f"unknown_study_{method}"]["message"]
        assert f"C-{method.upper()} of study 1.2.826.0.1.3680043.8.498.999999999" in message
        assert f"127.0.0.1:{port}" in message and "Failure" in message
        assert "check the StudyInstanceUID" in message
    assert "matches the query {'PatientID': 'nobody'}" in errors["no_match"]["message"]
    wrong = errors["wrong_port"]["message"]
    assert (
        "cannot connect to PACS 'ORTHANC' at 127.0.0.1:" in wrong and "Connection refused" in wrong
    )
    rejected = errors["wrong_ae"]["message"]
    assert "'NOT_THE_PACS'" in rejected and "rejected the association" in rejected
    assert "Called AE title not recognised" in rejected
