"""Runs a real Orthanc PACS in a private network namespace and pulls studies back with fedcore.

The test starts this script as ONE child process inside ``unshare --net`` (see
:func:`namespace_command`): the namespace has only a loopback interface, so Orthanc, which binds
all interfaces, cannot be reached from outside the machine. The script brings ``lo`` up, starts
Orthanc with its own config in the work folder, stores DICOM files into it with dcmtk's
``storescu``, queries and retrieves them through :mod:`fedcore.data.pacs` (C-FIND, C-GET,
C-MOVE, error cases), writes ``result.json`` and stops Orthanc by its PID, also on failure.

Usage: ``python orthanc_harness.py WORKDIR FILE...``
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

ORTHANC_AE = "ORTHANC"
FEDCORE_AE = "FEDCORE"
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_PR_SET_PDEATHSIG = 1


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable (Debian puts it in /usr/sbin, often not on PATH)."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def dcmtk_storescu() -> str | None:
    """Path of dcmtk's ``storescu``; pynetdicom installs a ``storescu`` of its own, skipped here."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for folder in dict.fromkeys(dirs):
        candidate = shutil.which("storescu", path=folder)
        if candidate is None:
            continue
        with open(candidate, "rb") as fh:
            if fh.read(2) == b"#!":  # a script (pynetdicom's app), not dcmtk's binary
                continue
        try:
            version = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in version.lower():
            return candidate
    return None


def namespace_command() -> list[str]:
    """``unshare`` prefix for a new network namespace (a user namespace too when not root)."""
    cmd = ["unshare", "--net"]
    if os.geteuid() != 0:
        cmd.append("--map-root-user")
    return cmd + ["--"]


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (no orphans)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _bring_loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCSIFFLAGS on ``lo``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_config(work: Path, dicom_port: int, store_port: int) -> dict[str, Any]:
    """Orthanc config: DICOM only (no HTTP server), no plugins, storage in ``work``."""
    return {
        "Name": "fedcore-test",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": False,
        "RemoteAccessAllowed": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {"fedcore": [FEDCORE_AE, "127.0.0.1", store_port]},
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StorageCompression": False,
        "SyncStorageArea": False,  # a throw-away test store: no fsync per instance
    }


def _wait_for_echo(proc: subprocess.Popen[bytes], port: int, log: Path, limit: float) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=FEDCORE_AE)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification SOP class
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = 2
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {log.read_text()[-3000:]}")
        assoc = ae.associate("127.0.0.1", port, ae_title=ORTHANC_AE)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer C-ECHO within {limit} s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Stop Orthanc by its PID: SIGTERM, wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def _error(call: Any) -> dict[str, str]:
    """Run ``call`` expecting it to raise; the exception's type and message."""
    try:
        call()
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "", "message": "no exception raised"}


def _exercise(work: Path, dicom_port: int, store_port: int, files: list[str]) -> dict[str, Any]:
    from fedcore.data import pacs

    storescu = dcmtk_storescu()
    if storescu is None:
        raise RuntimeError("dcmtk's storescu not found on PATH nor in /usr/bin")
    began = time.monotonic()
    stored = subprocess.run(
        [
            storescu,
            "--required",  # one context per SOP class of the files
            "--propose-j2k-lossless",  # JPEG 2000 lossless (+ uncompressed): the MR file is J2K
            "-aet",
            "STORESCU",
            "-aec",
            ORTHANC_AE,
            "127.0.0.1",
            str(dicom_port),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if stored.returncode != 0:
        raise RuntimeError(f"storescu failed ({stored.returncode}): {stored.stderr[-3000:]}")
    logging.info("stored %d files with storescu in %.1f s", len(files), time.monotonic() - began)

    get_spec = pacs.PacsSpec(port=dicom_port, called_ae=ORTHANC_AE, timeout_s=10)
    out: dict[str, Any] = {}
    found = pacs.find_studies(get_spec)
    out["find_all"] = [asdict(s) for s in found]
    out["find_patient"] = [asdict(s) for s in pacs.find_studies(get_spec, PatientID="77654033")]
    out["get"] = {
        s.study_uid: [str(p) for p in pacs.retrieve_study(get_spec, s.study_uid, work / "get")]
        for s in found
    }
    move_spec = get_spec.model_copy(
        update={"method": "c-move", "store_port": store_port, "query": {"ModalitiesInStudy": "CT"}}
    )
    calls: list[list[int]] = []
    moved = pacs.pull(move_spec, work / "move", progress=lambda d, t: calls.append([d, t]))
    out["move"] = [str(p) for p in moved]
    out["move_progress"] = calls

    wrong_port = get_spec.model_copy(update={"port": _free_port()})
    wrong_ae = get_spec.model_copy(update={"called_ae": "NOT_THE_PACS"})
    unknown = "1.2.826.0.1.3680043.8.498.999999999"
    out["errors"] = {
        "unknown_study_get": _error(
            lambda: pacs.retrieve_study(get_spec, unknown, work / "unknown-get")
        ),
        "unknown_study_move": _error(
            lambda: pacs.retrieve_study(move_spec, unknown, work / "unknown-move")
        ),
        "no_match": _error(
            lambda: pacs.pull(
                get_spec.model_copy(update={"query": {"PatientID": "nobody"}}), work / "none"
            )
        ),
        "wrong_port": _error(lambda: pacs.find_studies(wrong_port)),
        "wrong_ae": _error(lambda: pacs.find_studies(wrong_ae)),
    }
    return out


def main(work: Path, files: list[str]) -> int:
    """Run the whole round trip; always writes ``work/result.json`` and stops Orthanc."""
    _die_with_parent()

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(
        filename=work / "harness.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    result: dict[str, Any] = {"pid": os.getpid()}
    proc: subprocess.Popen[bytes] | None = None
    try:
        _bring_loopback_up()
        result["interfaces"] = sorted(name for _, name in socket.if_nameindex())
        dicom_port, store_port = _free_port(), _free_port()
        result["ports"] = {"dicom": dicom_port, "store": store_port}
        config = work / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(work, dicom_port, store_port), indent=2))
        log = work / "orthanc.log"
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc not found on PATH nor in /usr/sbin")
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [binary, str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=work,
                preexec_fn=_die_with_parent,
            )
        result["orthanc_pid"] = proc.pid
        _wait_for_echo(proc, dicom_port, log, limit=30)
        logging.info("Orthanc (PID %d) answers C-ECHO on port %d", proc.pid, dicom_port)
        result.update(_exercise(work, dicom_port, store_port, files))
        return_code = 0
    except BaseException:
        result["fatal"] = traceback.format_exc()
        return_code = 1
    finally:
        if proc is not None:
            result["orthanc_exit"] = _stop(proc)
            result["orthanc_alive_after_stop"] = proc.poll() is None
        (work / "result.json").write_text(json.dumps(result, indent=2))
    return return_code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
