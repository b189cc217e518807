"""Tests of fedcore.storage: unique temporary files, fsync, and no trace of a failed write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from fedcore import storage
from fedcore.storage import (
    LockHeld,
    arrays_from_bytes,
    arrays_to_bytes,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
    load_arrays_file,
    save_arrays,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_two_writers_of_one_path_get_their_own_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        assert first.parent == second.parent == tmp_path
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    # the inner block (second) finishes first, the outer one (first) replaces it
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []


def test_failing_writer_leaves_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_failing_bytes_write_leaves_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "key.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("rename refused")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_file_and_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else "?")
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    target = tmp_path / "sub" / "data.txt"
    atomic_write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    assert len(synced) == 2  # the temporary file, then the folder after the rename
    if synced[0] != "?":
        assert Path(synced[0]).name.startswith(".data.txt.") and synced[0].endswith(".tmp")
        assert Path(synced[1]) == target.parent


def test_every_writer_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    atomic_write_bytes(tmp_path / "a.bin", b"a")
    atomic_write_json(tmp_path / "b.json", {"x": np.int64(3), "p": tmp_path})
    save_arrays(tmp_path / "c.safetensors", {"w": np.arange(3.0)})
    assert len(calls) == 6
    assert (tmp_path / "b.json").read_text() == f'{{\n  "x": 3,\n  "p": "{tmp_path}"\n}}\n'
    np.testing.assert_array_equal(load_arrays_file(tmp_path / "c.safetensors")["w"], np.arange(3.0))
    assert _leftovers(tmp_path) == []


def test_modes(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "secret", b"s")
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    atomic_write_text(tmp_path / "ro", "r", mode=0o400)
    assert stat.S_IMODE((tmp_path / "ro").stat().st_mode) == 0o400
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new" / "deeper" / "plain", "p")
        with atomic_path(tmp_path / "named") as tmp:
            tmp.unlink()  # a writer that makes the file itself (torch.save, onnx.save)
            tmp.write_text("n")
        atomic_write_text(tmp_path / "shared", "s", mode=None)
        save_arrays(tmp_path / "arrays.safetensors", {"w": np.arange(2.0)})
    finally:
        os.umask(umask)
    # private by default, whatever the umask: files 0600, the folders made for them 0700
    assert stat.S_IMODE((tmp_path / "new" / "deeper" / "plain").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "named").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "arrays.safetensors").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "deeper").stat().st_mode) == 0o700
    # mode=None: as a file opened with open(..., "w") would get: 0666 less the umask
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644
    shared = tmp_path / "existing"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    atomic_write_bytes(shared / "f", b"f")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # a folder made before keeps its mode


def test_writer_may_replace_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with atomic_path(target) as tmp:
        tmp.unlink()  # some writers create the file themselves
        tmp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"


def test_exclusive_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "run" / ".lock"
    with exclusive_lock(lock):
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(LockHeld) as info, exclusive_lock(lock):
            pass
    assert info.value.path == lock and info.value.pid == os.getpid()
    assert str(tmp_path / "run") in str(info.value) and f"process {os.getpid()}" in str(info.value)
    with exclusive_lock(lock):  # released when the block ended
        pass
    assert lock.read_text() == ""


def test_exclusive_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    import subprocess
    import sys

    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from fedcore.storage import exclusive_lock\n"
            f"with exclusive_lock(Path({str(lock)!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as info, exclusive_lock(lock):
            pass
        assert info.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with exclusive_lock(lock):  # the OS dropped the dead holder's lock
        pass


def test_arrays_round_trip_through_bytes_bit_identically() -> None:
    arrays = {
        "f32": np.array([1.0, -0.0, np.nan, np.inf, 1e-45], dtype=np.float32),
        "f64": np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not C-contiguous
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "scalar": np.array(2.5, dtype=np.float32),  # 0-d stays 0-d
    }
    back = arrays_from_bytes(arrays_to_bytes(arrays))
    assert sorted(back) == sorted(arrays)
    for name, a in arrays.items():
        assert (back[name].dtype, back[name].shape) == (a.dtype, a.shape), name
        assert back[name].tobytes() == np.ascontiguousarray(a).tobytes(), name


def test_arrays_from_bytes_refuses_garbage() -> None:
    with pytest.raises(Exception, match="header"):
        arrays_from_bytes(b"not a safetensors buffer")
