"""fedcore.npy: .npy bytes from a peer are checked before anything is allocated."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from flwr.app import Array

from fedcore.npy import MAX_ELEMENTS, read_npy


def npy(descr: str, shape: tuple[int, ...], data: bytes, *, fortran: bool = False) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def test_reads_what_np_save_writes_and_returns_a_writable_copy() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = read_npy(bytes(Array(a).data), "w")
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.float32 and got.flags.writeable and got.flags.c_contiguous
    f = np.asfortranarray(a)
    np.testing.assert_array_equal(
        read_npy(npy("<f4", (3, 4), f.tobytes(order="F"), fortran=True), "w"), a
    )
    assert read_npy(bytes(Array(np.array(7, np.int64)).data), "n").shape == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # 2**60 elements claimed: refused before np.load would allocate (MemoryError)
        (npy("<f4", (2**60,), b"\0" * 16), f"expected at most {MAX_ELEMENTS}"),
        (npy("<f4", (2**30, 2**30), b""), f"expected at most {MAX_ELEMENTS}"),
        # empty data (np.load: EOFError) and short or long data
        (npy("<f4", (3,), b""), "header claims 12 byte(s) of data ((3,) of float32), found 0"),
        (npy("<f4", (3,), b"\0" * 11), "found 11"),
        (npy("<f4", (3,), b"\0" * 13), "found 13"),
        # a pickled object array is never unpickled
        (
            npy("|O", (1,), b"\x80\x04."),
            "expected a boolean, integer or floating dtype, found object",
        ),
        (npy("<c16", (1,), b"\0" * 16), "found complex128"),
        (npy("<U4", (1,), b"\0" * 16), "found <U4"),
        (npy("<f16", (1,), b"\0" * 16), "at most 8 bytes per element"),
        (b"\x93NUMPY\x09\x00garbage", "not a readable .npy array"),
        (b"", "not a readable .npy array"),
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100, "not a readable .npy array"),
        ("not bytes", "expected .npy bytes, found str"),
        (None, "expected .npy bytes, found NoneType"),
    ],
)
def test_refuses_with_a_value_error_that_names_the_array(data: object, message: str) -> None:
    with pytest.raises(ValueError, match="^w: ") as err:
        read_npy(data, "w")
    assert message in str(err.value)


def test_dtype_and_shape_can_be_required() -> None:
    data = bytes(Array(np.zeros((2, 2), np.int64)).data)
    assert read_npy(data, "m", dtypes=[np.dtype("<i8")], shape=(2, 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="expected shape \\(4,\\), found \\(2, 2\\)"):
        read_npy(data, "m", shape=(4,))
    with pytest.raises(ValueError, match="expected dtype float32, found int64"):
        read_npy(data, "m", dtypes=[np.dtype("<f4")])
    with pytest.raises(ValueError, match="expected at most 3"):
        read_npy(data, "m", max_elements=3)
