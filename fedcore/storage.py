"""Crash-safe file writes shared by the coordinator and the sites (unique temporary file, fsync, rename, owner-only modes), and an exclusive lock on a folder."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load, load_file, save, save_file

_TEMP_TRIES = 100

PRIVATE_FILE = 0o600
"""Mode of every file the atomic writers make unless told otherwise: owner only."""
PRIVATE_DIR = 0o700
"""Mode of every folder the atomic writers make: owner only."""


def private_dir(path: Path) -> Path:
    """Make folder ``path`` and its missing parents with mode :data:`PRIVATE_DIR`.

    Folders that exist already keep their mode (the caller's working directory, a shared
    ``runs/``); only the ones made here are private.

    Returns:
        ``path``.
    """
    path = Path(path)
    missing: list[Path] = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise
        else:
            os.chmod(folder, PRIVATE_DIR)  # whatever the umask
    return path


class LockHeld(RuntimeError):
    """Another process holds the lock that :func:`exclusive_lock` asked for.

    Attributes:
        path: The lock file.
        pid: The process id written in the lock file by its holder, ``None`` if unreadable.
    """

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"{str(path.parent)!r} is in use by {holder} (lock {path.name}): expected no other "
            f"run writing there. Fix: wait for that run to end, or choose another directory"
        )


@contextmanager
def exclusive_lock(path: Path) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``path`` for the duration of the block.

    The holder's PID is written into the file so a refused process can name it. The lock
    goes when the block ends, and also when the process dies (the OS drops it with the
    file descriptor), so a crashed run never leaves a stale lock behind.

    Args:
        path: The lock file (e.g. ``OUT/.lock``); it and its parent folders are made.

    Yields:
        ``path``, locked.

    Raises:
        LockHeld: another process (or another open of the same file) holds the lock.
    """
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(path, _read_pid(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def atomic_path(path: Path, *, mode: int | None = PRIVATE_FILE) -> Iterator[Path]:
    """A fresh temporary path beside ``path``, moved onto ``path`` once the block succeeds.

    For writers that want a file name (safetensors' ``save_file``, ``torch.save``, pydicom's
    ``dcmwrite``): write the whole file to the yielded path. When the block ends normally the
    file is fsynced and renamed over ``path`` (readers see the old or the new file, never half of
    one), then the folder is fsynced where the platform allows it; when it raises, the
    temporary file is removed and ``path`` is left as it was. Every call gets its own temporary
    name, so two writers of the same path never write into each other's file.

    Args:
        path: The file to write; its missing parent folders are made with mode
            :data:`PRIVATE_DIR`.
        mode: Permissions the file gets, set before any byte is written and again before
            the rename (a writer may have replaced the temporary file): default
            :data:`PRIVATE_FILE` (0600, owner only); ``None`` gives what a newly created
            file gets: 0666 less the umask (for files meant to be shared).

    Yields:
        The temporary path, an empty file that the writer may open or replace.
    """
    private_dir(path.parent)
    tmp = _create_temp(path, 0o600 if mode is not None else 0o666)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = PRIVATE_FILE) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never half.

    The file gets permissions ``mode`` (default 0600, owner only) before any byte is written.
    """
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(
    path: Path, text: str, *, encoding: str = "utf-8", mode: int | None = PRIVATE_FILE
) -> None:
    """Write ``text`` to ``path`` atomically, as :func:`atomic_path` does.

    Args:
        path: The file to write; its parent folders are made.
        text: The whole content.
        encoding: Text encoding (default UTF-8).
        mode: Permissions of the file: default 0600 (owner only); ``None`` gives 0666 less
            the umask.
    """
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n").encode()
    )


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically save named arrays as safetensors."""
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def load_arrays_file(path: Path) -> dict[str, np.ndarray]:
    """Load named arrays saved by :func:`save_arrays`."""
    return dict(load_file(str(path)))


def arrays_to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays as safetensors bytes (the format :func:`save_arrays` writes to a file).

    Values, shapes (0-d included) and dtypes round-trip bit-identically through
    :func:`arrays_from_bytes`.
    """
    return bytes(save(_contiguous(arrays)))


def arrays_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Named arrays from safetensors bytes made by :func:`arrays_to_bytes`.

    Raises:
        Exception: safetensors' own error when ``data`` is not a safetensors buffer.
    """
    return dict(load(data))


def _contiguous(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """C-contiguous copies where needed; unlike ``np.ascontiguousarray`` alone, 0-d stays 0-d."""
    return {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}


def _create_temp(path: Path, mode: int) -> Path:
    """Create an empty file with a new random name beside ``path`` (``mode`` less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(
        f"no free temporary name beside {str(path)!r} after {_TEMP_TRIES} tries: expected "
        f"few files named '.{path.name}.*.tmp' there. Fix: remove stale ones"
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
