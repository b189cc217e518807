"""What a site keeps survives a hostile instruction or a failed write: model copy, exports."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict

from clients.model_store import GlobalModelStore
from clients.protection.ckks import bring_up_to_date
from clients.runtime import model_mismatch, staged_directory
from fedcore import records as R
from fedcore.config import PrivacySpec, TaskSpec

BASE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
LAYOUT = {k: (v.shape, v.dtype) for k, v in BASE.items()}


def test_model_and_round_are_one_atomic_write(tmp_path: Path) -> None:
    store = GlobalModelStore(tmp_path / "run")
    assert store.load() is None and store.round() == 0
    store.save(3, BASE)
    held = store.load()
    assert held is not None and held[0] == 3 and store.round() == 3
    assert all(np.array_equal(held[1][k], BASE[k]) for k in BASE)
    # state.json is for people: a stale one (a crash after the model was written) is ignored
    (store.directory / "state.json").write_text('{"round": 1, "digest": "0"}')
    assert store.round() == 3 and store.load() is not None


def test_a_damaged_model_copy_reads_as_none_held(tmp_path: Path) -> None:
    store = GlobalModelStore(tmp_path / "run")
    store.save(2, BASE)
    blob = bytearray(store.model_path.read_bytes())
    blob[-1] ^= 0xFF  # a value changed on disk: the digest in the header no longer matches
    store.model_path.write_bytes(bytes(blob))
    assert store.load() is None and store.round() == 0
    store.model_path.write_bytes(b"\xff" * 16)  # not even a header
    assert store.load() is None and store.round() == 0  # telemetry says: send round 0 again


def test_a_failed_export_leaves_the_previous_one(tmp_path: Path) -> None:
    final = tmp_path / "export" / "run"
    with staged_directory(final) as staging:
        (staging / "model.onnx").write_bytes(b"v1")
    assert (final / "model.onnx").read_bytes() == b"v1"
    with pytest.raises(RuntimeError, match="half-way"), staged_directory(final) as staging:
        (staging / "model.onnx").write_bytes(b"v2, half")
        raise RuntimeError("export failed half-way")
    assert (final / "model.onnx").read_bytes() == b"v1"
    assert sorted(p.name for p in final.parent.iterdir()) == ["run"]  # no leftovers
    with staged_directory(final) as staging:
        (staging / "model.onnx").write_bytes(b"v3")
    assert [p.name for p in final.iterdir()] == ["model.onnx"]
    assert (final / "model.onnx").read_bytes() == b"v3"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"w": BASE["w"]}, "1 missing"),
        ({**BASE, "x": BASE["b"]}, "1 extra"),
        ({**BASE, "w": BASE["w"].T.copy()}, r"expected float32 of shape \(2, 3\), found float32"),
        ({**BASE, "b": BASE["b"].astype(np.float64)}, "found float64"),
        ({**BASE, "b": np.array([1, np.nan, 1], np.float32)}, "1 NaN or infinite"),
    ],
)
def test_a_model_that_is_not_the_sites_is_named(
    arrays: dict[str, np.ndarray], message: str
) -> None:
    assert model_mismatch(BASE, LAYOUT) == ""
    assert model_mismatch(arrays, LAYOUT)
    assert re.search(message, model_mismatch(arrays, LAYOUT))


class _ClearCodec:
    """Stands in for the CKKS codec: a chunk holds the float64 sum in clear."""

    def decrypt(self, chunks: list[bytes], length: int, count: int) -> np.ndarray:
        return np.frombuffer(chunks[0], dtype=np.float64).copy()


def _instruction(round_: int, aggregates: list[R.CkksRound], base: bool) -> RecordDict:
    cfg = R.RoundConfig(round_, 7, TaskSpec(), privacy=PrivacySpec(mode="ckks"))
    n = sum(v.size for v in BASE.values())
    return R.ckks_instruction(cfg, R.CkksAggregates(n, aggregates), BASE if base else None)


@pytest.mark.parametrize(
    ("values", "weight", "message"),
    [
        (np.full(9, np.nan), 1.0, "decrypts to non-finite values"),
        (np.full(8, 0.5), 1.0, "decrypts to 8 values; expected 9"),
        (np.full(9, 1e300), 1e-300, "would make the model non-finite"),
    ],
)
def test_an_aggregate_that_does_not_decrypt_to_a_finite_update_is_not_applied(
    tmp_path: Path, values: np.ndarray, weight: float, message: str
) -> None:
    store = GlobalModelStore(tmp_path / "run")
    bring_up_to_date(store, _instruction(1, [], True), _ClearCodec())
    before = store.model_path.read_bytes()
    bad = R.CkksRound(1, [values.astype(np.float64).tobytes()], weight, 1)
    with pytest.raises(ValueError, match=message):
        bring_up_to_date(store, _instruction(1, [bad], False), _ClearCodec(), latest_round=1)
    assert store.model_path.read_bytes() == before and store.round() == 0


def test_aggregates_from_the_future_or_a_foreign_base_are_refused_before_any_write(
    tmp_path: Path,
) -> None:
    store = GlobalModelStore(tmp_path / "run")
    good = R.CkksRound(1, [np.full(9, 0.5).tobytes()], 1.0, 1)
    with pytest.raises(ValueError, match=r"rounds in 1\.\.1"):
        bring_up_to_date(
            store,
            _instruction(1, [good, R.CkksRound(2, good.chunks, 1.0, 1)], True),
            _ClearCodec(),
            latest_round=1,
        )
    assert not store.directory.exists()

    def refuse(arrays: dict[str, np.ndarray]) -> None:
        raise ValueError("not this site's model")

    with pytest.raises(ValueError, match="not this site's model"):
        bring_up_to_date(store, _instruction(1, [good], True), _ClearCodec(), check=refuse)
    assert not store.directory.exists()
    round_, model = bring_up_to_date(store, _instruction(1, [good], True), _ClearCodec())
    assert round_ == 1 and np.allclose(model["b"], 1.5)
