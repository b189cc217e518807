"""Hypothesis strategies for hostile site replies: what a site could put on Flower's wire.

Every strategy draws a :class:`Case`: the content of one reply (a ``RecordDict`` built only
from values Flower's records accept, so it could have crossed the wire), what kind of
damage was done, and what the coordinator must do with it (``reject``, ``accept`` or
``either``: a finite update within the sanity ceiling may enter, bounded).

The hostile bytes are built by hand where ``np.save`` would refuse to write them: ``.npy``
headers that claim 2**60 elements, empty or truncated data, pickled object arrays,
safetensors headers that lie or nest without end.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import strategies as st

from fedcore import carry
from fedcore import records as R
from fedcore.packing import PACKED_KEY, pack_arrays

SITES = ("bank-a", "bank-b", "bank-c")
RUN_KEY = "fuzz-run"
ROUND = 4
"""The round the coordinator is in; a reply signed for ``ROUND - 1`` is a replay."""

_rng = np.random.default_rng(20261207)
REF: dict[str, np.ndarray] = {
    "conv.weight": _rng.normal(0.0, 0.5, (4, 3)).astype(np.float32),
    "conv.bias": _rng.normal(0.0, 0.1, (3,)).astype(np.float32),
    "head.weight": _rng.normal(0.0, 0.5, (2, 4)).astype(np.float32),
    "bn.num_batches_tracked": np.array(12, dtype=np.int64),
}
"""The global model the coordinator sent (a 0-d int64 buffer too, as BatchNorm has)."""

FLOAT_NAMES = [k for k, v in REF.items() if np.issubdtype(v.dtype, np.floating)]

# ----------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Signer:
    """A site's node key (ECDSA P-256, as ``fedcore provision`` makes them)."""

    site_id: str
    private: ec.EllipticCurvePrivateKey

    @property
    def public_openssh(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )

    def sign(self, payload: bytes) -> bytes:
        return self.private.sign(payload, ec.ECDSA(hashes.SHA256()))


def make_signers() -> dict[str, Signer]:
    """One node key per site (deterministic: derived from a fixed scalar per site)."""
    return {
        s: Signer(s, ec.derive_private_key(10_000_019 + 7919 * i, ec.SECP256R1()))
        for i, s in enumerate(SITES)
    }


def registered(signers: Mapping[str, Signer]) -> dict[str, bytes]:
    """The coordinator kit's view: site id -> OpenSSH public key."""
    return {s: k.public_openssh for s, k in signers.items()}


# ----------------------------------------------------------------------------- a case


@dataclass
class Case:
    """One reply as a site sent it.

    Attributes:
        kind: What was done to it (``honest``, ``shape``, ``header-bomb``...).
        content: The reply's content.
        expect: ``reject``, ``accept`` or ``either``.
        node_site: The site whose node it came from (the coordinator knows the node).
        wire: Send it through Flower's wire serialisation first.
    """

    kind: str
    content: RecordDict
    expect: str
    node_site: str
    wire: bool = False


# ----------------------------------------------------------------------------- values

INT64 = st.integers(-(2**63), 2**63 - 1)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
BAD_FLOAT = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, -1e-9, -1e300])

CONFIG_VALUE: st.SearchStrategy[Any] = st.one_of(
    INT64,
    ANY_FLOAT,
    st.booleans(),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.lists(INT64, max_size=3),
    st.lists(ANY_FLOAT, max_size=3),
    st.lists(st.text(max_size=4), max_size=3),
    st.lists(st.binary(max_size=4), max_size=3),
)
"""Anything a ``ConfigRecord`` holds."""

METRIC_VALUE: st.SearchStrategy[Any] = st.one_of(
    INT64, ANY_FLOAT, st.lists(INT64, max_size=4), st.lists(ANY_FLOAT, max_size=4)
)
"""Anything a ``MetricRecord`` holds."""


def npy_bytes(descr: str, shape: tuple[int, ...], data: bytes, *, fortran: bool = False) -> bytes:
    """``.npy`` version 1.0 bytes with any header, true or not."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    pad = (64 - (10 + len(header) + 1) % 64) % 64
    header = header + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def raw_array(data: bytes, *, stype: str = "numpy.ndarray") -> Array:
    """A Flower ``Array`` whose bytes are ``data`` (its declared dtype and shape say little)."""
    return Array(dtype="uint8", shape=(len(data),), stype=stype, data=data)


def packed_blob(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes :func:`fedcore.packing.pack_arrays` writes."""
    return bytes(pack_arrays(arrays)[PACKED_KEY].numpy().tobytes())


def npy_of(a: np.ndarray) -> bytes:
    """The ``.npy`` bytes of a real array."""
    return bytes(Array(np.ascontiguousarray(a)).data)


def honest_arrays(seed: int) -> dict[str, np.ndarray]:
    """A site's honest local model: the global one plus a small step."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in REF.items():
        if np.issubdtype(v.dtype, np.floating):
            out[k] = (v + rng.normal(0.0, 0.05, v.shape)).astype(v.dtype)
        else:
            out[k] = v + 3
    return out


# ----------------------------------------------------------------------------- train: arrays


def _array_damage(draw: st.DrawFn, arrays: dict[str, np.ndarray]) -> tuple[str, ArrayRecord, str]:
    """(kind, the arrays record, expectation) with one kind of damage to the arrays."""
    kind = draw(
        st.sampled_from(
            [
                "reorder",
                "unpacked",
                "shape",
                "dtype",
                "nonfinite",
                "absurd",
                "scaled",
                "missing",
                "extra",
                "truncate",
                "header-bomb",
                "empty-data",
                "garbage",
                "object-npy",
                "stype",
                "npy-dtype",
                "safetensors-lie",
                "deep-json",
                "packed-not-bytes",
            ]
        )
    )
    name = draw(st.sampled_from(FLOAT_NAMES))
    a = dict(arrays)
    if kind == "reorder":  # valid arrays in another order: must be accepted
        order = draw(st.permutations(list(a)))
        return kind, pack_arrays({k: a[k] for k in order}), "accept"
    if kind == "unpacked":  # one Array per name (older sites): valid, in any order
        order = draw(st.permutations(list(a)))
        return kind, ArrayRecord({k: Array(np.asarray(a[k])) for k in order}), "accept"
    if kind == "shape":
        extra = draw(st.integers(1, 3))
        a[name] = np.zeros((a[name].size + extra,), a[name].dtype)
    elif kind == "dtype":
        dt = draw(st.sampled_from([np.float64, np.float16, np.int32, np.bool_, np.uint8]))
        a[name] = a[name].astype(dt)
    elif kind == "nonfinite":
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        flat = a[name].copy().ravel()
        flat[draw(st.integers(0, flat.size - 1))] = bad
        a[name] = flat.reshape(a[name].shape)
    elif kind == "absurd":  # finite float32 values near the top of the range
        value = draw(st.sampled_from([3.4e38, -3.4e38, 1e38, 1e30, 1e20]))
        a[name] = np.full(a[name].shape, value, a[name].dtype)
    elif kind == "scaled":  # finite, maybe within the ceiling: may enter, bounded
        factor = draw(st.sampled_from([2.0, 10.0, 100.0, 1e3, 1e4, 1e6]))
        a[name] = (REF[name] + factor * (a[name] - REF[name]) * 100).astype(a[name].dtype)
        return kind, pack_arrays(a), "either"
    elif kind == "missing":
        del a[name]
    elif kind == "extra":
        a[draw(st.sampled_from(["extra.weight", name + ".copy"]))] = np.ones(3, np.float32)
    if kind in {"shape", "dtype", "nonfinite", "absurd", "missing", "extra"}:
        packed = draw(st.booleans())
        rec = (
            pack_arrays(a)
            if packed
            else ArrayRecord({k: Array(np.asarray(v)) for k, v in a.items()})
        )
        return kind, rec, "reject"
    blob = packed_blob(a)
    if kind == "truncate":
        cut = draw(st.integers(0, len(blob) - 1))
        return kind, _packed_raw(npy_bytes("|u1", (len(blob),), blob[:cut])), "reject"
    if kind == "header-bomb":
        shape = draw(st.sampled_from([(2**60,), (2**30, 2**30), (2**40, 16), (2**29,)]))
        descr = draw(st.sampled_from(["<f4", "|u1", "<i8"]))
        body = draw(st.binary(max_size=64))
        target = draw(st.sampled_from(["packed", "named"]))
        data = npy_bytes(descr, shape, body)
        return kind, _raw_record(data, target, name), "reject"
    if kind == "empty-data":
        descr = draw(st.sampled_from(["<f4", "|u1"]))
        shape = draw(st.sampled_from([(12,), (4, 3), (len(blob),)]))
        return kind, _raw_record(npy_bytes(descr, shape, b""), "named", name), "reject"
    if kind == "garbage":
        return (
            kind,
            _raw_record(
                draw(st.binary(max_size=200)), draw(st.sampled_from(["packed", "named"])), name
            ),
            "reject",
        )
    if kind == "object-npy":  # a pickled object array: never unpickled
        payload = b"\x80\x04\x95" + draw(st.binary(max_size=40)) + b"."
        return kind, _raw_record(npy_bytes("|O", (1,), payload), "named", name), "reject"
    if kind == "stype":
        stype = draw(st.sampled_from(["torch.Tensor", "", "numpy.ndarray ", "pickle"]))
        return (
            kind,
            ArrayRecord(
                {PACKED_KEY: raw_array(npy_of(np.frombuffer(blob, np.uint8)), stype=stype)}
            ),
            "reject",
        )
    if kind == "npy-dtype":  # well-formed .npy of a dtype no model has
        descr = draw(st.sampled_from(["<c16", "<U4", "|S8", "<M8[s]", "<m8[s]", "|V8", "<f16"]))
        width = 16 if descr in ("<c16", "<U4", "<f16") else 8
        return (
            kind,
            _raw_record(npy_bytes(descr, (3,), b"\x00" * 3 * width), "named", name),
            "reject",
        )
    if kind == "safetensors-lie":
        size = int.from_bytes(blob[:8], "little")
        header = bytearray(blob[8 : 8 + size])
        how = draw(st.sampled_from(["size", "flip", "offsets"]))
        if how == "size":
            new = draw(st.sampled_from([2**63, 2**40, size + 1, 0]))
            bad = new.to_bytes(8, "little") + blob[8:]
        elif how == "flip":
            pos = draw(st.integers(0, len(header) - 1))
            header[pos] = draw(st.integers(0, 255))
            bad = blob[:8] + bytes(header) + blob[8 + size :]
        else:
            text = header.decode("utf-8", "replace").replace(
                '"data_offsets":[0,', '"data_offsets":[8,'
            )
            raw = text.encode()
            bad = len(raw).to_bytes(8, "little") + raw + blob[8 + size :]
        return kind, _packed_raw(npy_of(np.frombuffer(bad, np.uint8))), "reject"
    if kind == "deep-json":
        depth = draw(st.sampled_from([10_000, 100_000]))
        meta = {"__metadata__": {"fedcore.order": "[" * depth + "]" * depth}}
        raw = json.dumps(meta).encode()
        if draw(st.booleans()):
            raw = b'{"__metadata__": ' + b"[" * depth + b"]" * depth + b"}"
        bad = len(raw).to_bytes(8, "little") + raw
        return kind, _packed_raw(npy_of(np.frombuffer(bad, np.uint8))), "reject"
    # packed-not-bytes: the packed key holds a float array, not bytes
    return kind, ArrayRecord({PACKED_KEY: Array(np.ones(16, np.float32))}), "reject"


def _packed_raw(data: bytes) -> ArrayRecord:
    return ArrayRecord({PACKED_KEY: raw_array(data)})


def _raw_record(data: bytes, target: str, name: str) -> ArrayRecord:
    """``data`` as the packed array, or as one named array beside honest ones."""
    if target == "packed":
        return _packed_raw(data)
    rec = {k: Array(np.asarray(v)) for k, v in REF.items() if k != name}
    rec[name] = raw_array(data)
    return ArrayRecord(rec)


# ----------------------------------------------------------------------------- train: figures

_FIGURES = ("num_examples", "loss", "seconds", "site_id", "round")


def _figure_damage(draw: st.DrawFn, config: dict[str, Any]) -> str:
    """Damage one figure of a train reply's config (in place); returns the kind."""
    key = draw(st.sampled_from(_FIGURES))
    how = draw(st.sampled_from(["drop", "any", "bad-number"]))
    if how == "drop" and key in ("num_examples", "loss", "seconds"):
        del config[key]
        return f"figure-missing:{key}"
    if how == "bad-number" and key in ("num_examples", "loss", "seconds"):
        value = draw(st.one_of(BAD_FLOAT, st.sampled_from([0, -1, -(2**63), 10**11, 2**63 - 1])))
    else:
        value = draw(CONFIG_VALUE)
    valid = {
        "num_examples": lambda v: type(v) is int and 1 <= v <= 10**10,
        "loss": lambda v: type(v) in (int, float) and np.isfinite(v) and v >= 0,
        "seconds": lambda v: type(v) in (int, float) and np.isfinite(v) and 0 <= v <= 1e7,
        "site_id": lambda v: False,  # any other value names no site this node serves
        "round": lambda v: type(v) is int and 0 <= v <= 2**31,
    }[key]
    if valid(value) or (key == "site_id" and value == config["site_id"]):
        value = draw(st.sampled_from([-5.5, "x", b"\x00", [1, 2]]))
    config[key] = value
    return f"figure-{how}:{key}"


# ----------------------------------------------------------------------------- signing


def sign_reply(
    content: RecordDict, kind: str, site: str, round_: int, digest: bytes, signer: Signer
) -> RecordDict:
    payload = R.signing_payload(kind, site, round_, RUN_KEY, digest)
    return R.attach_signature(content, signer.sign(payload))


def _signature_damage(
    draw: st.DrawFn,
    content: RecordDict,
    kind: str,
    site: str,
    digest: bytes,
    signers: Mapping[str, Signer],
) -> str:
    """Sign ``content`` wrongly (or not at all); returns the kind of damage."""
    how = draw(
        st.sampled_from(
            ["unsigned", "replay", "other-key", "not-bytes", "random-bytes", "empty", "other-run"]
        )
    )
    if how == "unsigned":
        return "sig-unsigned"
    if how == "replay":  # a valid reply of the round before, sent again
        sign_reply(content, kind, site, ROUND - 1, digest, signers[site])
        return "sig-replay"
    if how == "other-key":
        other = draw(st.sampled_from([s for s in SITES if s != site]))
        sign_reply(content, kind, site, ROUND, digest, signers[other])
        return "sig-other-key"
    if how == "other-run":
        payload = R.signing_payload(kind, site, ROUND, "another-run", digest)
        R.attach_signature(content, signers[site].sign(payload))
        return "sig-other-run"
    value: Any = {
        "not-bytes": draw(
            st.one_of(INT64, st.text(max_size=8), ANY_FLOAT, st.lists(INT64, max_size=2))
        ),
        "random-bytes": draw(st.binary(min_size=1, max_size=120)),
        "empty": b"",
    }[how]
    config = content.config_records.get(R.CONFIG)
    if config is not None:
        content[R.CONFIG] = ConfigRecord({**config, R.SIGNATURE: value})
    else:
        content[R.AUTH] = ConfigRecord({"signature": value})
    return f"sig-{how}"


# ----------------------------------------------------------------------------- strategies


@st.composite
def plaintext_train_cases(draw: st.DrawFn, signers: Mapping[str, Signer]) -> Case:
    """A clear train reply from the node of a site: honest, or damaged in one way."""
    site = draw(st.sampled_from(SITES))
    arrays = honest_arrays(draw(st.integers(0, 2**16)))
    n = draw(st.integers(1, 5000))
    group = draw(
        st.sampled_from(["honest", "arrays", "arrays", "arrays", "figures", "signature", "claim"])
    )
    reply = R.TrainReply(arrays, n, 0.25, 1.5, site, round=ROUND)
    content = reply.to_content()
    kind, expect = "honest", "accept"
    if group == "arrays":
        kind, record, expect = _array_damage(draw, arrays)
        content[R.ARRAYS] = record
        # signed over what it sends, so only the arrays decide
        try:
            digest = R.TrainReply.from_content(content).digest()
        except ValueError:
            digest = reply.digest()
        sign_reply(content, R.TRAIN, site, ROUND, digest, signers[site])
    elif group == "figures":
        config = dict(content.config_records[R.CONFIG])
        kind = _figure_damage(draw, config)
        content[R.CONFIG] = ConfigRecord(config)
        sign_reply(content, R.TRAIN, site, ROUND, reply.digest(), signers[site])
        expect = "reject"
    elif group == "signature":
        kind = _signature_damage(draw, content, R.TRAIN, site, reply.digest(), signers)
        expect = "reject"
    elif group == "claim":  # names (and signs as) another site, from this node
        other = draw(st.sampled_from([s for s in SITES if s != site]))
        forged = R.TrainReply(arrays, n, 0.25, 1.5, other, round=ROUND)
        content = forged.to_content()
        sign_reply(
            content, R.TRAIN, other, ROUND, forged.digest(), signers[draw(st.sampled_from(SITES))]
        )
        kind, expect = "claim-other-site", "reject"
    else:
        sign_reply(content, R.TRAIN, site, ROUND, reply.digest(), signers[site])
    return Case(kind, content, expect, site, wire=draw(st.booleans()))


@st.composite
def ckks_train_cases(
    draw: st.DrawFn,
    honest_chunks: Callable[[int], list[bytes]],
    length: int,
    signers: Mapping[str, Signer],
) -> Case:
    """An encrypted train reply (``ckks.update``): honest, or damaged in one way."""
    site = draw(st.sampled_from(SITES))
    chunks = honest_chunks(draw(st.integers(0, 3)))
    reply = R.TrainReply({}, draw(st.integers(1, 5000)), 0.3, 2.0, site, chunks, length, ROUND)
    content = reply.to_content()
    kind = draw(
        st.sampled_from(
            [
                "honest",
                "chunks-not-list",
                "chunks-not-bytes",
                "chunk-truncated",
                "chunk-flipped",
                "chunk-garbage",
                "chunks-dropped",
                "chunks-extra",
                "chunks-empty",
                "length-wrong",
                "length-type",
                "clear-model",
                "figures",
                "signature",
            ]
        )
    )
    rec = dict(content.config_records[R.CKKS_UPDATE])
    expect = "reject"
    if kind == "honest":
        expect = "accept"
    elif kind == "chunks-not-list":
        rec["chunks"] = draw(st.one_of(st.binary(max_size=30), INT64, st.text(max_size=5)))
    elif kind == "chunks-not-bytes":
        rec["chunks"] = draw(
            st.one_of(
                st.lists(INT64, min_size=1, max_size=3),
                st.lists(st.text(max_size=3), min_size=1, max_size=3),
            )
        )
    elif kind == "chunk-truncated":
        i = draw(st.integers(0, len(chunks) - 1))
        c = list(chunks)
        c[i] = c[i][: draw(st.integers(0, len(c[i]) - 1))]
        rec["chunks"] = c
    elif kind == "chunk-flipped":
        i = draw(st.integers(0, len(chunks) - 1))
        c = [bytearray(x) for x in chunks]
        pos = draw(st.integers(0, len(c[i]) - 1))
        c[i][pos] ^= draw(st.integers(1, 255))
        rec["chunks"] = [bytes(x) for x in c]
        expect = "either"  # a flipped bit deep inside a coefficient is not detectable
    elif kind == "chunk-garbage":
        rec["chunks"] = [draw(st.binary(max_size=300)) for _ in chunks]
    elif kind == "chunks-dropped":
        rec["chunks"] = list(chunks)[:-1] or [b""]
    elif kind == "chunks-extra":
        rec["chunks"] = [*chunks, chunks[0]]
    elif kind == "chunks-empty":
        rec["chunks"] = []
    elif kind == "length-wrong":
        rec["length"] = draw(st.sampled_from([0, -1, length - 1, length + 1, 2**62, 2**40]))
    elif kind == "length-type":
        rec["length"] = draw(st.one_of(ANY_FLOAT, st.text(max_size=5), st.binary(max_size=5)))
    content[R.CKKS_UPDATE] = ConfigRecord(rec)
    if kind == "clear-model":
        del content[R.CKKS_UPDATE]
        content[R.ARRAYS] = pack_arrays(honest_arrays(1))
    if kind == "figures":
        config = dict(content.config_records[R.CONFIG])
        kind = _figure_damage(draw, config)
        content[R.CONFIG] = ConfigRecord(config)
    if kind == "signature":
        kind = _signature_damage(draw, content, R.TRAIN, site, reply.digest(), signers)
    else:
        try:
            digest = R.TrainReply.from_content(content).digest()
        except ValueError:
            digest = reply.digest()
        sign_reply(content, R.TRAIN, site, ROUND, digest, signers[site])
    return Case(kind, content, expect, site, wire=draw(st.booleans()))


def honest_evaluation(site: str, seed: int) -> R.EvalReply:
    rng = np.random.default_rng(seed)
    hp = rng.multinomial(20, np.ones(R.HIST_BINS) / R.HIST_BINS).tolist()
    hn = rng.multinomial(180, np.ones(R.HIST_BINS) / R.HIST_BINS).tolist()
    return R.EvalReply(
        site,
        200,
        20,
        0.31,
        {"pr_auc": 0.5, "threshold": 0.5, "recall": float("nan")},
        hp,
        hn,
        "ab" * 32,
        7,
        12,
    )


def _eval_valid(key: str, v: Any) -> bool:
    """Whether ``v`` in field ``key`` of :func:`honest_evaluation`'s reply would still be valid."""
    number = type(v) in (int, float)
    if key == "loss":
        return number and bool(np.isfinite(v)) and v >= 0
    if key == "m.pr_auc":
        return number and (bool(np.isnan(v)) or abs(v) <= 1e15)
    if key == "num_examples":
        return type(v) is int and v == 200
    if key == "num_positive":
        return type(v) is int and v == 20
    if key in ("flagged_pos", "flagged_neg"):
        return type(v) is int and 0 <= v <= (20 if key == "flagged_pos" else 180)
    return False  # a histogram of the wrong length or sum


_EVAL_FIELDS = (
    "num_examples",
    "num_positive",
    "loss",
    "hist_pos",
    "hist_neg",
    "flagged_pos",
    "flagged_neg",
    "m.pr_auc",
)


@st.composite
def evaluation_cases(draw: st.DrawFn, signers: Mapping[str, Signer]) -> Case:
    """An evaluate reply (or one carried on a train reply): honest, or damaged in one way."""
    site = draw(st.sampled_from(SITES))
    ev = honest_evaluation(site, draw(st.integers(0, 2**16)))
    content = ev.to_content()
    group = draw(
        st.sampled_from(
            ["honest", "field", "field", "field", "drop", "claim", "signature", "records"]
        )
    )
    kind, expect = "honest", "accept"
    m = dict(content.metric_records[R.METRICS])
    if group == "field":
        key = draw(st.sampled_from(_EVAL_FIELDS))
        how = draw(st.sampled_from(["any", "negative-counts", "short", "inflated", "bad-number"]))
        if how == "negative-counts":
            hist = list(m["hist_pos"])
            hist[draw(st.integers(0, R.HIST_BINS - 1))] = -draw(st.integers(1, 10**6))
            m["hist_pos"] = hist
        elif how == "short":
            m[draw(st.sampled_from(["hist_pos", "hist_neg"]))] = [1] * draw(
                st.integers(0, R.HIST_BINS - 1)
            )
        elif how == "inflated":  # more counts than examples: would sway the pooled AUC
            hist = list(m["hist_neg"])
            hist[0] += draw(st.integers(1, 10**9))
            m["hist_neg"] = hist
        elif how == "bad-number":
            m[key] = draw(st.one_of(BAD_FLOAT, st.sampled_from([-1, -(2**63), 10**11])))
        else:
            m[key] = draw(METRIC_VALUE)
        if how in ("any", "bad-number") and _eval_valid(key, m[key]):
            m[key] = draw(st.sampled_from([float("inf"), float("-inf"), [0.5]]))
        content[R.METRICS] = MetricRecord(m)
        kind, expect = f"field:{key}:{how}", "reject"
    elif group == "drop":
        key = draw(st.sampled_from(_EVAL_FIELDS[:5] + ("flagged_pos",)))
        del m[key]
        content[R.METRICS] = MetricRecord(m)
        kind, expect = f"missing:{key}", "reject"
    elif group == "records":
        how = draw(st.sampled_from(["no-metrics", "site-type", "digest-type"]))
        if how == "no-metrics":
            del content[R.METRICS]
        else:
            config = dict(content.config_records[R.CONFIG])
            key = "site_id" if how == "site-type" else "model_digest"
            config[key] = draw(st.one_of(INT64, st.binary(max_size=4), st.lists(INT64, max_size=2)))
            content[R.CONFIG] = ConfigRecord(config)
        kind, expect = f"records:{how}", "reject"
    if group in ("honest", "field", "drop", "records"):
        sign_reply(content, R.EVALUATE, site, ROUND, ev.digest(), signers[site])
    elif group == "claim":  # another site's evaluation, signed by that site, sent from this node
        other = draw(st.sampled_from([s for s in SITES if s != site]))
        forged = honest_evaluation(other, 1)
        content = forged.to_content()
        sign_reply(content, R.EVALUATE, other, ROUND, forged.digest(), signers[other])
        kind, expect = "claim-other-site", "reject"
    else:
        kind = _signature_damage(draw, content, R.EVALUATE, site, ev.digest(), signers)
        expect = "reject"
    if draw(st.booleans()):  # carried on a train reply, as the train batch brings it
        train = R.TrainReply(honest_arrays(0), 10, 0.2, 1.0, site).to_content()
        carry.attach_evaluation(train, content)
        content = train
        kind = f"carried:{kind}"
    return Case(kind, content, expect, site, wire=draw(st.booleans()))


def honest_telemetry(site: str, seed: int) -> R.Telemetry:
    rng = np.random.default_rng(seed)
    return R.Telemetry(
        site,
        int(rng.integers(1, 10**6)),
        "cpu",
        "cpu",
        {
            "cpu_util_percent": float(rng.uniform(0, 100)),
            "mem_used_mib": float(rng.uniform(0, 64000)),
            "mem_total_mib": 65536.0,
            "cpu_count": 16.0,
            "device_temperature_c": float(rng.uniform(20, 90)),
            "device_power_w": float(rng.uniform(0, 400)),
        },
        int(rng.integers(0, 5)),
    )


_READINGS = (
    "cpu_util_percent",
    "mem_used_mib",
    "device_temperature_c",
    "device_power_w",
    "cpu_count",
)


@st.composite
def telemetry_cases(draw: st.DrawFn, signers: Mapping[str, Signer]) -> Case:
    """A telemetry reply (or one carried on a train reply): honest, or damaged in one way."""
    site = draw(st.sampled_from(SITES))
    tel = honest_telemetry(site, draw(st.integers(0, 2**16)))
    content = tel.to_content()
    group = draw(
        st.sampled_from(["honest", "reading", "reading", "size", "info", "signature", "records"])
    )
    kind, expect = "honest", "accept"
    m = dict(content.metric_records[R.TELEMETRY_METRICS])
    if group == "reading":
        key = draw(st.sampled_from(_READINGS))
        value = draw(
            st.one_of(
                st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e30, -1e30]),
                st.lists(ANY_FLOAT, max_size=3),
            )
        )
        if key == "cpu_util_percent" and draw(st.booleans()):
            value = draw(st.sampled_from([100.5, 250.0, -0.1]))
        m[key] = value
        content[R.TELEMETRY_METRICS] = MetricRecord(m)
        kind, expect = f"reading:{key}", "reject"
    elif group == "size":
        how = draw(st.sampled_from(["drop", "value"]))
        if how == "drop":
            del m["num_train_examples"]
        else:
            m["num_train_examples"] = draw(
                st.one_of(
                    st.sampled_from([0, -1, -(2**63), 10**11]),
                    BAD_FLOAT,
                    st.floats(1, 1e6),
                    st.lists(INT64, max_size=2),
                )
            )
        content[R.TELEMETRY_METRICS] = MetricRecord(m)
        kind, expect = f"size:{how}", "reject"
    elif group == "info":
        info = dict(content.config_records[R.TELEMETRY_INFO])
        key = draw(st.sampled_from(["site_id", "device", "vendor", "model_round"]))
        value = draw(CONFIG_VALUE)
        ok = {
            "site_id": lambda v: False,
            "device": lambda v: type(v) is str and len(v) <= 256,
            "vendor": lambda v: type(v) is str and len(v) <= 256,
            "model_round": lambda v: type(v) is int and 0 <= v <= 2**31,
        }[key]
        if ok(value) or (key == "site_id" and value in SITES):
            value = draw(st.sampled_from([-1, 2.5, b"\x01", [1]]))
        info[key] = value
        content[R.TELEMETRY_INFO] = ConfigRecord(info)
        kind, expect = f"info:{key}", "reject"
    elif group == "records":
        del content[draw(st.sampled_from([R.TELEMETRY_INFO, R.TELEMETRY_METRICS]))]
        kind, expect = "records:missing", "reject"
    if group == "signature":
        kind = _signature_damage(draw, content, R.TELEMETRY, site, tel.digest(), signers)
        expect = "reject"
    else:
        sign_reply(content, R.TELEMETRY, site, ROUND, tel.digest(), signers[site])
    if draw(st.booleans()):  # carried on a train reply
        train = R.TrainReply(honest_arrays(0), 10, 0.2, 1.0, site).to_content()
        carry.attach_telemetry(train, content)
        content = train
        kind = f"carried:{kind}"
    return Case(kind, content, expect, site, wire=draw(st.booleans()))
