"""What a reply's signature covers and where it travels in the reply."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedcore.records.keys import AUTH, CONFIG, SIGNATURE


def _bytes_list(value: object, what: str) -> list[bytes]:
    """``value`` as a list of bytes, or ``ValueError`` (hostile replies may hold anything)."""
    if not isinstance(value, list) or not all(isinstance(c, bytes) for c in value):
        raise ValueError(f"{what} must be a list of bytes; got {type(value).__name__}")
    return list(value)


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over names, dtypes, shapes and bytes of named arrays (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.digest()


def chunks_digest(chunks: Sequence[bytes]) -> bytes:
    """SHA-256 over a list of ciphertext chunks."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "big"))
        h.update(c)
    return h.digest()


def signing_payload(kind: str, site_id: str, round_: int, run_key: str, body: bytes) -> bytes:
    """The bytes a site signs for one reply: what it is, who sends it, for which round and run."""
    return b"fedcore-reply-v1|" + f"{kind}|{site_id}|{round_}|{run_key}|".encode() + body


def attach_signature(content: RecordDict, signature: bytes) -> RecordDict:
    """Add a reply's signature (returns ``content``).

    It goes into the reply's ``config`` record (``auth.signature``) when the reply has one:
    every record is an object on Flower's wire, pushed and pulled with a request of its
    own. A reply without one (telemetry) gets an ``auth`` record.
    """
    config = content.config_records.get(CONFIG)
    if config is not None:
        content[CONFIG] = ConfigRecord({**config, SIGNATURE: signature})
    else:
        content[AUTH] = ConfigRecord({"signature": signature})
    return content


MAX_SIGNATURE_BYTES = 1024
"""Longest signature a reply may carry (a DER ECDSA signature is under 150 bytes)."""


def read_signature(content: RecordDict) -> bytes | None:
    """The signature of a reply, or ``None`` when it carries none.

    Raises:
        ValueError: the reply carries a signature that is not bytes, or is empty or too long.
    """
    config = content.config_records.get(CONFIG)
    if config is not None and SIGNATURE in config:
        value: object = config[SIGNATURE]
    else:
        rec = content.config_records.get(AUTH)
        if rec is None or "signature" not in rec:
            return None
        value = rec["signature"]
    if type(value) is not bytes or not 0 < len(value) <= MAX_SIGNATURE_BYTES:
        found = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ValueError(f"reply signature: expected 1..{MAX_SIGNATURE_BYTES} bytes, found {found}")
    return value
