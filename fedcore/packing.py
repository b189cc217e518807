"""Named arrays as one Flower ``Array``: a model crosses the wire as one object, not two per tensor.

Flower sends every ``Array`` of an ``ArrayRecord`` as separate objects (the array and its
chunks), and every object is one request to the SuperLink and one from it, signed and
checked under node authentication. A ``bank-fraud`` model of 8 tensors made a message of 20
objects; packed, it is 6. The pack is the tensors' safetensors bytes, which keep names,
dtypes, shapes (0-d included) and bits exactly; the tensors' order rides in the safetensors
header's metadata, so unpacking gives back the same mapping in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["PACKED_KEY", "pack_arrays", "unpack_arrays"]

#: The one key of a packed ``ArrayRecord``.
PACKED_KEY = "fedcore.packed-safetensors"

_ORDER = "fedcore.order"
_MAX_HEADER = 16 * 1024 * 1024  # safetensors' own limit is 100 MB; a model's header is KBs


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """One ``Array`` of bytes holding every named array (see the module docstring)."""
    from safetensors.numpy import save

    names = list(arrays)
    tensors = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}
    blob = save(tensors, metadata={_ORDER: json.dumps(names)})
    return ArrayRecord({PACKED_KEY: Array(np.frombuffer(blob, dtype=np.uint8))})


def unpack_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The named arrays of a record, packed by :func:`pack_arrays` or one ``Array`` per name.

    Returns:
        Writable copies, in the order they were packed.

    Raises:
        ValueError: a packed record whose bytes are not what :func:`pack_arrays` writes
            (says what was expected and what was found).
    """
    if list(record.keys()) != [PACKED_KEY]:
        return {k: np.array(v.numpy(), copy=True) for k, v in record.items()}
    blob = record[PACKED_KEY].numpy().tobytes()
    names = _packed_order(blob)
    from safetensors.numpy import load

    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ValueError(f"packed arrays: not readable safetensors bytes ({exc})") from None
    if sorted(tensors) != sorted(names):
        raise ValueError(
            f"packed arrays: the header lists {len(names)} name(s) but the data holds "
            f"{len(tensors)}; expected the same names"
        )
    return {k: np.array(tensors[k], copy=True) for k in names}


def _packed_order(blob: bytes) -> list[str]:
    """The names' order from the safetensors header's metadata."""
    if len(blob) < 8:
        raise ValueError(f"packed arrays: {len(blob)} bytes, expected a safetensors header")
    size = int.from_bytes(blob[:8], "little")
    if size > min(_MAX_HEADER, len(blob) - 8):
        raise ValueError(f"packed arrays: header of {size} bytes in a {len(blob)}-byte pack")
    try:
        header = json.loads(blob[8 : 8 + size])
        names = json.loads(header["__metadata__"][_ORDER])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"packed arrays: no readable name order in the header ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("packed arrays: the name order is not a list of names")
    return names
