"""The wire format of CKKS chunks: header with parameters, counts and CRC-32, and its errors."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_MAGIC = b"FCKS"
_VERSION = 1
_KIND_FLOAT = 1
_KIND_PACKED = 2
_KIND_NAMES = {_KIND_FLOAT: "unpacked CKKS", _KIND_PACKED: "packed CKKS"}
# magic, version, kind, noise vectors added, description length, sites summed,
# chunk index, chunk count, vector length, payload length, CRC-32
_HEADER = struct.Struct("<4sBBBBIIIQII")


class CiphertextError(ValueError):
    """A chunk that is malformed, damaged, truncated, misplaced or made for other parameters.

    Attributes:
        chunk: index of the offending chunk, or ``None`` for the list as a whole.
        update: index of the offending update in :meth:`CkksCodec.add`, or ``None``.
        reason: what is wrong, without the location.
    """

    def __init__(self, reason: str, *, chunk: int | None = None, update: int | None = None):
        self.chunk = chunk
        self.update = update
        self.reason = reason
        where = []
        if update is not None:
            where.append(f"update {update}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


@dataclass(frozen=True)
class _Chunk:
    kind: int
    noise: int
    sites: int
    index: int
    count: int
    length: int
    description: str
    payload: bytes


def _frame(
    kind: int,
    description: str,
    *,
    noise: int,
    sites: int,
    index: int,
    count: int,
    length: int,
    payload: bytes,
) -> bytes:
    desc = description.encode("ascii")
    head = _HEADER.pack(
        _MAGIC, _VERSION, kind, noise, len(desc), sites, index, count, length, len(payload), 0
    )[:-4]
    crc = zlib.crc32(payload, zlib.crc32(desc, zlib.crc32(head)))
    return head + struct.pack("<I", crc) + desc + payload


def _unframe(chunk: object, index: int, update: int | None) -> _Chunk:
    def fail(reason: str) -> CiphertextError:
        return CiphertextError(reason, chunk=index, update=update)

    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise fail(f"expected bytes, found {type(chunk).__name__}")
    data = bytes(chunk)
    if len(data) < _HEADER.size:
        raise fail(f"truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, kind, noise, desc_len, sites, idx, count, length, payload_len, crc = (
        _HEADER.unpack_from(data)
    )
    if magic != _MAGIC:
        raise fail(
            f"does not start with the ciphertext marker {_MAGIC!r} (found {magic!r}): "
            "these are not bytes written by CkksCodec or PackedCodec"
        )
    if version != _VERSION:
        raise fail(
            f"wire format version {version}, this code reads version {_VERSION}; update fedcore"
        )
    expected_len = _HEADER.size + desc_len + payload_len
    if len(data) != expected_len:
        what = "truncated" if len(data) < expected_len else "has trailing bytes"
        raise fail(f"{what}: the header announces {expected_len} bytes, found {len(data)}")
    desc = data[_HEADER.size : _HEADER.size + desc_len]
    payload = data[_HEADER.size + desc_len :]
    computed = zlib.crc32(payload, zlib.crc32(desc, zlib.crc32(data[: _HEADER.size - 4])))
    if computed != crc:
        raise fail(
            f"failed its CRC-32 check (stored {crc:08x}, computed {computed:08x}): the bytes "
            "were altered or damaged on the way; ask the sender to send them again"
        )
    try:
        description = desc.decode("ascii")
    except UnicodeDecodeError as exc:
        raise fail(f"its parameter description is not ASCII ({exc})") from exc
    return _Chunk(kind, noise, sites, idx, count, length, description, payload)
