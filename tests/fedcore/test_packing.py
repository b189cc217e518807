"""A model packed into one Flower Array: exact round trip, fewer wire objects, clear errors on bad packs."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedcore.packing import PACKED_KEY, pack_arrays, unpack_arrays


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "z.weight": rng.normal(size=(16, 8)).astype(np.float32),
        "a.bias": rng.normal(size=16).astype(np.float64),
        "scale": np.array(3, dtype=np.int8),  # 0-d
        "codes": rng.integers(-128, 127, size=(4, 4)).astype(np.int8),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def test_round_trip_is_exact_and_keeps_order() -> None:
    arrays = _model()
    back = unpack_arrays(pack_arrays(arrays))
    assert list(back) == list(arrays)  # safetensors alone would sort the names
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert back[name].tobytes() == value.tobytes(), name
        assert back[name].flags.writeable


def test_round_trip_through_flower_serialization(task_identity: None) -> None:
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    arrays = _model()
    packed = Message(RecordDict({"arrays": pack_arrays(arrays)}), 1, "train")
    plain = Message(
        RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()})}), 1, "train"
    )
    # fewer objects for the SuperLink to take in and hand out
    assert len(get_all_nested_objects(packed)) < len(get_all_nested_objects(plain)) / 2
    again = message_from_proto(message_to_proto(packed))
    back = unpack_arrays(again.content.array_records["arrays"])
    assert all(back[k].tobytes() == v.tobytes() for k, v in arrays.items())


def test_an_unpacked_record_still_reads() -> None:
    arrays = _model()
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    back = unpack_arrays(record)
    assert list(back) == list(arrays)
    assert all(back[k].tobytes() == v.tobytes() for k, v in arrays.items())


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "expected a safetensors header"),
        (b"\xff" * 8 + b"{}", "header of"),
        ((2).to_bytes(8, "little") + b"{}", "no readable name order"),
        (
            (60).to_bytes(8, "little")
            + b'{"__metadata__": {"fedcore.order": "[\\"w\\"]"}}'.ljust(60),
            "not readable safetensors|the header lists",
        ),
    ],
)
def test_a_garbage_pack_is_a_clear_value_error(blob: bytes, match: str) -> None:
    record = ArrayRecord({PACKED_KEY: Array(np.frombuffer(blob, dtype=np.uint8).copy())})
    with pytest.raises(ValueError, match=match):
        unpack_arrays(record)
