"""The coordinator's encrypted transcript on disk: framing, damage detection."""

from __future__ import annotations

import pytest

from coordinator.protection.ckks import pack_chunks, unpack_chunks


def test_pack_round_trip() -> None:
    chunks = [b"", b"a", b"\x00" * 1000]
    assert unpack_chunks(pack_chunks(chunks)) == chunks


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_file_is_refused(cut: int) -> None:
    blob = pack_chunks([b"abc" * 10, b"def"])
    with pytest.raises(ValueError, match="truncated"):
        unpack_chunks(blob[:-cut])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="trailing"):
        unpack_chunks(pack_chunks([b"x"]) + b"!")
