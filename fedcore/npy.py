"""Reading ``.npy`` bytes from an untrusted peer: the header is checked before anything is allocated.

``np.load`` trusts the header: a header that claims 2**60 elements makes it allocate (or
fail with ``MemoryError``) before it reads a byte of data, and a short body ends in
``EOFError``. :func:`read_npy` parses the header alone (NumPy's own header parser, which
uses ``ast.literal_eval``), checks the dtype against an allow-list, the element count
against a cap (or an expected shape) and the body length against the header, exactly,
and only then views the bytes. Pickled object arrays are never read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection

import numpy as np

__all__ = ["ALLOWED_KINDS", "MAX_ELEMENTS", "read_npy"]

MAX_ELEMENTS = 2**28
"""Most elements one array from a peer may hold (1 GiB of float32), whatever its header says."""

ALLOWED_KINDS = frozenset("biuf")
"""Dtype kinds a peer may send: booleans, signed and unsigned integers, floats."""

_MAX_HEADER = 10_000  # NumPy's own default limit for a header it parses safely


def read_npy(
    data: object,
    what: str,
    *,
    max_elements: int = MAX_ELEMENTS,
    dtypes: Collection[np.dtype] | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """The array that ``.npy`` bytes hold, checked before it is allocated.

    Args:
        data: The bytes (anything else is refused).
        what: What the bytes are, for messages (e.g. ``"array 'w'"``).
        max_elements: Most elements the array may hold.
        dtypes: The dtypes accepted (default: any of :data:`ALLOWED_KINDS`, at most 8 bytes).
        shape: The shape the array must have (default: any within ``max_elements``).

    Returns:
        A writable copy, owned by the caller.

    Raises:
        ValueError: saying which check failed, what was expected and what was found.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what}: expected .npy bytes, found {type(data).__name__}")
    raw = bytes(data)
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(buf, max_header_size=_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            header = np.lib.format.read_array_header_2_0(buf, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - any parse failure means unreadable bytes
        raise ValueError(
            f"{what}: not a readable .npy array ({type(exc).__name__}: {exc}); "
            f"found {len(raw)} byte(s)"
        ) from None
    got_shape, fortran, dtype = header
    _check_dtype(dtype, what, dtypes)
    if not all(type(d) is int and d >= 0 for d in got_shape):
        raise ValueError(f"{what}: expected non-negative dimensions, found shape {got_shape}")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise ValueError(f"{what}: expected shape {tuple(shape)}, found {tuple(got_shape)}")
    count = math.prod(got_shape)
    if count > max_elements:
        raise ValueError(
            f"{what}: header claims shape {tuple(got_shape)} ({count} elements); "
            f"expected at most {max_elements}"
        )
    offset = buf.tell()
    expected = count * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(
            f"{what}: header claims {expected} byte(s) of data ({tuple(got_shape)} of "
            f"{dtype}), found {len(raw) - offset}"
        )
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return np.array(flat.reshape(got_shape, order="F" if fortran else "C"), copy=True, order="C")


def _check_dtype(dtype: np.dtype, what: str, allowed: Collection[np.dtype] | None) -> None:
    if allowed is not None:
        if dtype not in allowed:
            names = ", ".join(sorted(str(np.dtype(d)) for d in allowed))
            raise ValueError(f"{what}: expected dtype {names}, found {dtype}")
        return
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in ALLOWED_KINDS:
        raise ValueError(
            f"{what}: expected a boolean, integer or floating dtype, found {dtype} "
            f"(kind {dtype.kind!r})"
        )
    if dtype.itemsize > 8:
        raise ValueError(f"{what}: expected at most 8 bytes per element, found {dtype}")
