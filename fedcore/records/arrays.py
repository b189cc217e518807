"""Named arrays in a message record (packed, with checked ``.npy`` headers), and a message's size on the wire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedcore.npy import MAX_ELEMENTS, read_npy
from fedcore.packing import PACKED_KEY, pack_arrays, unpack_arrays

# --------------------------------------------------------------------------- arrays


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays (e.g. a model's state dict) as an ``ArrayRecord`` of one packed
    ``Array`` (:mod:`fedcore.packing`: a few wire objects instead of two per tensor)."""
    return pack_arrays(arrays)


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of an ``ArrayRecord``, packed or one ``Array`` per name (copies,
    owned by the caller, in the order they were packed).

    The record may come from a hostile peer: every ``Array``'s ``.npy`` header is checked
    before anything is allocated (:func:`fedcore.npy.read_npy`: dtype allow-list, at most
    :data:`~fedcore.npy.MAX_ELEMENTS` elements, data length exact, no pickle), and so is
    every unpacked array's dtype.

    Raises:
        ValueError: anything malformed (the message names the array, what was expected
            and what was found); never another exception, whatever the record holds.
    """
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"expected an ArrayRecord, found {type(record).__name__}")
    decoded: dict[str, np.ndarray] = {}
    for name, array in record.items():
        stype = getattr(array, "stype", None)
        if stype != "numpy.ndarray":
            raise ValueError(
                f"array {name!r}: expected serialization 'numpy.ndarray', found {stype!r:.60}"
            )
        decoded[name] = read_npy(getattr(array, "data", None), f"array {name!r}")
    if list(decoded) != [PACKED_KEY]:
        return decoded
    blob = decoded[PACKED_KEY]
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(
            f"packed arrays: expected one row of bytes (uint8), found {blob.dtype} of shape "
            f"{blob.shape}"
        )
    try:  # the .npy header was checked: np.load reads exactly what was checked
        arrays = unpack_arrays(record)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError from a deeply nested header
        raise ValueError(f"packed arrays: not readable ({type(exc).__name__}: {exc})") from None
    for name, a in arrays.items():
        dt = a.dtype
        if dt.fields is not None or dt.kind not in "biuf" or dt.itemsize > 8:
            raise ValueError(
                f"array {name!r}: expected a boolean, integer or floating dtype, found {dt}"
            )
        if a.size > MAX_ELEMENTS:
            raise ValueError(f"array {name!r}: {a.size} elements; expected at most {MAX_ELEMENTS}")
    return arrays


def message_nbytes(msg: Any) -> int:
    """Bytes a message occupies on the wire (Flower's serialized objects, all of them)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())
