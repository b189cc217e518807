"""The record layout of every message between coordinator and site, defined once.

``coordinator`` and ``clients`` never import each other; both build and read
messages only through the helpers here, so the two sides cannot drift apart.

Message types and their content:

=====================  =========================================  ===========================================
message type           instruction (coordinator -> site)          reply (site -> coordinator)
=====================  =========================================  ===========================================
``query.telemetry``    ``config``: round, run key, task           ``telemetry``: site id, data size, device
                                                                  readings (ConfigRecord + MetricRecord)
``train``              ``arrays``: global model, ``config``:      ``arrays``: local model, ``config``:
                       the :class:`RoundConfig`; when asked,      site, round, num_examples, loss,
                       ``carry.evaluate`` and ``carry.telemetry`` seconds; when asked, the evaluation
                       in ``config``                              of the incoming model and the next
                                                                  round's telemetry (``carried.*`` in
                                                                  ``config``)
``evaluate``           ``arrays``: global model, ``config``:      ``metrics``: num_examples, loss, metrics,
                       the :class:`RoundConfig`; when asked,      score histograms per class, flag counts;
                       ``carry.telemetry`` in ``config``           when asked, the next round's telemetry
                                                                  (``carried.*`` in ``config``)
``query.export``       ``arrays``: global model, ``config``:      ``config``: site id, export manifest
                       the :class:`RoundConfig`                    (JSON), or the error that stopped it
=====================  =========================================  ===========================================

What else a reply carries (the next round's telemetry, the evaluation of the model a train
instruction brings) is laid out in :mod:`fedcore.carry`.

Privacy modes change what travels (see ``docs/privacy.md``):

* ``ckks``: instructions carry no clear model after round 0; instead ``ckks.aggregates``
  holds the encrypted aggregates a site has not applied yet (it keeps the global model
  itself). A train reply carries ``ckks.update`` (ciphertext chunks) and no ``arrays``.
* ``secagg+``: training runs Flower's SecAgg+ protocol (legacy ``fitins``/``fitres`` keys);
  the fit config carries the same :class:`RoundConfig` record plus the array names.
* Every reply may carry a signature (``auth.signature`` in its ``config`` record, or an
  ``auth`` record when it has none): ECDSA with the site's node key over
  :func:`signing_payload`, which the coordinator checks against the registered key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from pydantic import BaseModel

from fedcore.config import ExportSpec, PrivacySpec, TaskSpec, TrainingSpec
from fedcore.npy import MAX_ELEMENTS, read_npy
from fedcore.packing import PACKED_KEY, pack_arrays, unpack_arrays
from fedcore.round_record import RoundRecord as RoundRecord  # re-exported: R.RoundRecord

# message types
TELEMETRY = "query.telemetry"
TRAIN = "train"
EVALUATE = "evaluate"
EXPORT = "query.export"

# record keys
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
TELEMETRY_INFO = "telemetry.info"
TELEMETRY_METRICS = "telemetry.metrics"
CKKS_AGGREGATES = "ckks.aggregates"
CKKS_UPDATE = "ckks.update"
AUTH = "auth"
SIGNATURE = "auth.signature"
"""Key of a reply's signature in its ``config`` record."""

HIST_BINS = 200
"""Score histogram resolution used for pooled PR-AUC / ROC-AUC across sites."""


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


# --------------------------------------------------------------------------- instructions


MAX_ROUND = 10_000
"""Largest round an instruction may name (a scenario runs at most 10,000 rounds)."""
MAX_WEIGHT = 1e9
"""Largest aggregation weight a site may be given (sums of weights: times :data:`MAX_SITES`)."""
MAX_SITES = 10_000
"""Most sites one round may sum."""
MAX_DEVICE = 1_023
"""Largest device index a schedule may name in a site's pool."""
MAX_EPOCHS = 1_000
"""Most local epochs a schedule may ask for (``training.local_epochs`` has the same bound)."""
MAX_DEADLINE_S = 1e7
"""Longest round deadline, seconds (about 4 months)."""
MAX_SPEC_CHARS = 65_536
"""Longest JSON text of one scenario section in an instruction."""
MAX_CKKS_LENGTH = 2**31 - 1
"""Most values one encrypted aggregate may hold."""
RUN_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run key names a folder in the site's state directory: no separators, no ``..``."""


def _shown(value: object) -> str:
    """A value from a peer, short enough for a message: its type and a clipped repr."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print (Python's digit limit)
        text = f"of {value.bit_length()} bits" if isinstance(value, int) else "(unprintable)"
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


_Spec = TypeVar("_Spec", bound=BaseModel)


class _Fields:
    """Reads the fields of an instruction's record, refusing what a coordinator must not send.

    Each reader names the field, what was expected and what was found; an absent field
    takes its default (``None``: required).
    """

    def __init__(self, rec: Mapping[str, Any], where: str) -> None:
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}: expected a record of fields, found {type(rec).__name__}")
        self.rec = rec
        self.where = where

    def _get(self, key: str, default: object) -> object:
        if key in self.rec:
            return self.rec[key]
        if default is None:
            raise ValueError(f"{self.where} lacks {key!r}: expected it in every instruction")
        return default

    def _bad(self, key: str, expected: str, value: object) -> ValueError:
        return ValueError(
            f"malformed {self.where}: field {key!r}: expected {expected}, found {_shown(value)}; "
            "the coordinator sent a malformed instruction"
        )

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int:
        value = self._get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            raise self._bad(key, f"an integer in {lo}..{hi}", value)
        return value

    def number(self, key: str, default: float | None, lo: float, hi: float) -> float:
        value = self._get(key, default)
        expected = f"a finite number in [{lo:g}, {hi:g}]"
        if type(value) not in (int, float):
            raise self._bad(key, expected, value)
        try:
            x = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer beyond any float
            x = math.inf
        if not (math.isfinite(x) and lo <= x <= hi):
            raise self._bad(key, expected, value)
        return x

    def run_key(self) -> str:
        value = self._get("run_key", "")
        if type(value) is not str or (value and not RUN_KEY_PATTERN.fullmatch(value)):
            raise self._bad(
                "run_key", "'' or up to 128 letters, digits, '.', '_' or '-' (a folder name)", value
            )
        return value

    def spec(self, key: str, model: type[_Spec], default: str | None = "{}") -> _Spec:
        """A scenario section sent as JSON text: it must validate and hold finite numbers only."""
        value = self._get(key, default)
        if type(value) is not str or len(value) > MAX_SPEC_CHARS:
            raise self._bad(key, f"the JSON text of a {model.__name__} section", value)
        try:
            spec = model.model_validate_json(value)
        except ValueError as exc:  # pydantic's ValidationError, with every reason
            raise ValueError(
                f"malformed {self.where}: field {key!r}: expected a valid {model.__name__} "
                f"section, found one that does not validate: {_first_lines(str(exc))}"
            ) from None
        bad = _non_finite(spec.model_dump())
        if bad:
            raise ValueError(
                f"malformed {self.where}: field {key!r}: expected finite numbers, found "
                f"{bad[1]!r} at {key}.{bad[0]}"
            )
        return spec


def _first_lines(text: str, lines: int = 4) -> str:
    """The first ``lines`` lines of ``text`` on one line (a validation error can be long)."""
    head = text.splitlines()[:lines]
    return "; ".join(line.strip() for line in head)[:400]


def _non_finite(value: object, path: str = "") -> tuple[str, float] | None:
    """The first (path, value) in a nested structure whose float is NaN or infinite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path.lstrip("."), value)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}")
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class RoundConfig:
    """Settings that travel with a train, evaluate or export instruction, typed once.

    The scenario's sections travel as JSON text in the record and are parsed into their
    pydantic models once, in :meth:`from_record`; nothing downstream re-validates them.
    """

    round: int
    seed: int
    task: TaskSpec
    training: TrainingSpec = field(default_factory=TrainingSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    """The scenario's ``privacy`` section (no secrets: parameters only)."""
    run_key: str = ""
    """Identifies the run (scenario fingerprint): a site keeps per-run state under it."""
    weight: float = 1.0
    """This site's aggregation weight (CKKS: it encrypts ``weight * update``)."""
    max_sites: int = 0
    """How many sites may be summed in one round (sizes the CKKS packing headroom)."""
    export: ExportSpec = field(default_factory=ExportSpec)
    """The scenario's ``export`` section (INT8 export settings)."""
    device: int = -1
    """Index of the device in the site's pool that the scheduler chose (-1: the site's own choice)."""
    epochs: int = 0
    """Local epochs the scheduler gave this site this round (0: ``training.local_epochs``)."""
    deadline_s: float = 0.0
    """The round deadline the scheduler sized the work for, seconds (0: none)."""
    headroom: float = 0.0
    """Share of the device the site should leave free for its own work beyond its current load."""
    site_clip: float = 0.0
    """L2 bound the site clips its update (local minus global) to before protecting it, and
    that a CKKS site holds each decrypted aggregate to (0: none; ``aggregation.site_clip``)."""
    max_weight: float = 0.0
    """SecAgg+: the largest weight (examples) a site may report; it reports at most this (0: none)."""

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "round": self.round,
                "seed": self.seed,
                "task": _spec_json(self.task),
                "training": _spec_json(self.training),
                "privacy": _spec_json(self.privacy),
                "run_key": self.run_key,
                "weight": float(self.weight),
                "max_sites": int(self.max_sites),
                "export": _spec_json(self.export),
                "device": int(self.device),
                "epochs": int(self.epochs),
                "deadline_s": float(self.deadline_s),
                "headroom": float(self.headroom),
                "site_clip": float(self.site_clip),
                "max_weight": float(self.max_weight),
            }
        )

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> RoundConfig:
        """Parse a round config record (or the same keys in a SecAgg+ fit config).

        The record may come from a hostile or broken coordinator: every field is checked for
        type and range before anything uses it (``round`` in 0..:data:`MAX_ROUND`,
        ``epochs`` in 0..:data:`MAX_EPOCHS`, ``weight`` finite in [0, :data:`MAX_WEIGHT`],
        ``headroom`` in [0, 1], ``run_key`` a folder name, ...), and each scenario section
        must validate and hold finite numbers only. Absent optional fields take their defaults.

        Raises:
            ValueError: naming the field, what was expected and what was found (never
                another exception, whatever the record holds).
        """
        f = _Fields(rec, "round config")
        try:
            cfg = cls(
                round=f.integer("round", None, 0, MAX_ROUND),
                seed=f.integer("seed", None, -(2**63), 2**63 - 1),
                task=f.spec("task", TaskSpec, None),
                training=f.spec("training", TrainingSpec),
                privacy=f.spec("privacy", PrivacySpec),
                run_key=f.run_key(),
                weight=f.number("weight", 1.0, 0.0, MAX_WEIGHT),
                max_sites=f.integer("max_sites", 0, 0, MAX_SITES),
                export=f.spec("export", ExportSpec),
                device=f.integer("device", -1, -1, MAX_DEVICE),
                epochs=f.integer("epochs", 0, 0, MAX_EPOCHS),
                deadline_s=f.number("deadline_s", 0.0, 0.0, MAX_DEADLINE_S),
                headroom=f.number("headroom", 0.0, 0.0, 1.0),
                site_clip=f.number("site_clip", 0.0, 0.0, MAX_WEIGHT),
                max_weight=f.number("max_weight", 0.0, 0.0, MAX_WEIGHT * MAX_SITES),
            )
        except (TypeError, OverflowError) as exc:  # a field read without its checker
            raise ValueError(f"malformed round config: {exc}") from exc
        bad = _non_finite({k.name: getattr(cfg, k.name) for k in fields(cfg)})
        if bad:
            raise ValueError(
                f"malformed round config: field {bad[0]!r}: expected a finite number, "
                f"found {bad[1]}"
            )
        return cfg

    @property
    def mode(self) -> str:
        """The privacy mode (``plaintext`` when unset)."""
        return self.privacy.mode


def _spec_json(spec: BaseModel) -> str:
    """A scenario section as the JSON text a round config carries (keys sorted, stable)."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def train_instruction(arrays: Mapping[str, np.ndarray], cfg: RoundConfig) -> RecordDict:
    """Content of a ``train`` message."""
    return RecordDict({ARRAYS: arrays_to_record(arrays), CONFIG: cfg.to_record()})


def evaluate_instruction(arrays: Mapping[str, np.ndarray], cfg: RoundConfig) -> RecordDict:
    """Content of an ``evaluate`` message."""
    return RecordDict({ARRAYS: arrays_to_record(arrays), CONFIG: cfg.to_record()})


def telemetry_instruction(
    round_: int, run_key: str = "", task: TaskSpec | None = None
) -> RecordDict:
    """Content of a ``query.telemetry`` message (the task lets a site size its data)."""
    return RecordDict(
        {
            CONFIG: ConfigRecord(
                {
                    "round": round_,
                    "run_key": run_key,
                    "task": json.dumps(
                        task.model_dump(mode="json") if task else {}, sort_keys=True
                    ),
                }
            )
        }
    )


def export_reply(site_id: str, manifest: Mapping[str, Any] | None, error: str = "") -> RecordDict:
    """Content of a site's reply to ``query.export``: its export manifest, or why there is none."""
    return RecordDict(
        {
            CONFIG: ConfigRecord(
                {
                    "site_id": site_id,
                    "manifest": json.dumps(dict(manifest or {}), sort_keys=True),
                    "error": error,
                }
            )
        }
    )


def read_export_reply(content: RecordDict) -> tuple[str, dict[str, Any], str]:
    """(site id, manifest, error) of an export reply.

    Raises:
        ValueError: a malformed reply, whatever it holds (never another exception).
    """
    content = _records(content, "export reply")
    rec = content.config_records.get(CONFIG)
    if rec is None:
        raise ValueError("export reply has no 'config' record")
    text = _str(rec.get("manifest", "{}"), "export reply manifest", limit=10**7)
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"export reply manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValueError("export reply manifest must be a JSON object")
    site = _str(rec.get("site_id", "?"), "export reply site_id", empty=False)
    return site, manifest, _str(rec.get("error", ""), "export reply error", limit=10**5)


def read_telemetry_instruction(content: RecordDict) -> tuple[int, str, TaskSpec]:
    """(round, run key, task) of a ``query.telemetry`` instruction.

    ``round`` an integer in 0..:data:`MAX_ROUND`, ``run_key`` a folder name (see
    :data:`RUN_KEY_PATTERN`), ``task`` a valid task section with finite numbers.

    Raises:
        ValueError: the instruction has no ``config`` record, or a field is malformed (the
            message names it, what was expected and what was found).
    """
    rec = content.config_records.get(CONFIG) if isinstance(content, RecordDict) else None
    if rec is None:
        found = sorted(content.keys()) if isinstance(content, RecordDict) else type(content)
        raise ValueError(
            f"telemetry instruction: expected a {CONFIG!r} record (round, run key, task), "
            f"found {found}"
        )
    f = _Fields(rec, "telemetry instruction")
    task = f.spec("task", TaskSpec)
    return f.integer("round", 0, 0, MAX_ROUND), f.run_key(), task


def ckks_instruction(
    cfg: RoundConfig,
    aggregates: CkksAggregates,
    base: Mapping[str, np.ndarray] | None,
) -> RecordDict:
    """Content of a ``train``/``evaluate`` message in ``ckks`` mode.

    Args:
        cfg: The round settings.
        aggregates: Encrypted aggregates the site has not applied yet.
        base: The round-0 model (public, seeded initial weights) for a site that holds no model.
    """
    content = RecordDict({CONFIG: cfg.to_record(), CKKS_AGGREGATES: aggregates.to_record()})
    if base is not None:
        content[ARRAYS] = arrays_to_record(base)
    return content


def read_instruction(
    content: RecordDict,
) -> tuple[dict[str, np.ndarray] | None, RoundConfig | None]:
    """Read the model arrays and round config of a train/evaluate/export instruction.

    Either is ``None`` when its record is absent. The arrays are decoded as
    :func:`record_to_arrays` does (``.npy`` headers checked before anything is allocated);
    the config as :meth:`RoundConfig.from_record` reads it.

    Raises:
        ValueError: a malformed record (the message names the field, what was expected and
            what was found), never another exception.
    """
    if not isinstance(content, RecordDict):
        raise ValueError(f"instruction: expected a RecordDict, found {type(content).__name__}")
    arrays = (
        record_to_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    )
    cfg = (
        RoundConfig.from_record(content.config_records[CONFIG])
        if CONFIG in content.config_records
        else None
    )
    return arrays, cfg


@dataclass(frozen=True)
class CkksRound:
    """One round's encrypted aggregate: sum over ``count`` sites of ``weight_i * update_i``."""

    round: int
    chunks: list[bytes]
    weight: float
    """Sum of the contributing sites' weights (divide the decrypted sum by it)."""
    count: int
    """How many sites were summed (the packed codec's offset correction needs it)."""


@dataclass(frozen=True)
class CkksAggregates:
    """The encrypted aggregates a site has not applied yet (in round order), and their length."""

    length: int
    rounds: list[CkksRound] = field(default_factory=list)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "length": int(self.length),
                "rounds": [r.round for r in self.rounds],
                "weights": [float(r.weight) for r in self.rounds],
                "counts": [r.count for r in self.rounds],
                "chunk_counts": [len(r.chunks) for r in self.rounds],
                "chunks": [c for r in self.rounds for c in r.chunks],
            }
        )

    @classmethod
    def from_content(
        cls, content: RecordDict, *, latest_round: int | None = None
    ) -> CkksAggregates:
        """Parse ``ckks.aggregates``, refusing anything a site must not apply.

        ``length`` in 0..:data:`MAX_CKKS_LENGTH`; per aggregate a round in
        1..:data:`MAX_ROUND` (strictly increasing, and at most ``latest_round``: no aggregate
        from the future), a finite positive weight, a count of sites in 1..:data:`MAX_SITES`
        and at least one chunk (the chunk counts add up to the chunks sent).

        Args:
            content: The instruction's content.
            latest_round: The instruction's round; an aggregate of a later round is refused.

        Raises:
            ValueError: the record is missing or malformed (the message names the field,
                what was expected and what was found).
        """
        where = f"{CKKS_AGGREGATES!r} record"
        rec = (
            content.config_records.get(CKKS_AGGREGATES) if isinstance(content, RecordDict) else None
        )
        if rec is None:
            raise ValueError(f"ckks instruction: expected a {where}, found none")
        f = _Fields(rec, where)
        length = f.integer("length", None, 0, MAX_CKKS_LENGTH)  # 0: no aggregate yet

        def items(key: str, ok: Any, expected: str) -> list[Any]:
            values = rec.get(key, [])
            if not isinstance(values, list):
                raise f._bad(key, f"a list of {expected}", values)
            bad = next((v for v in values if not ok(v)), _NONE)
            if bad is not _NONE:
                raise f._bad(key, f"a list of {expected}", bad)
            return list(values)

        def is_int(lo: int, hi: int) -> Any:
            return lambda v: type(v) is int and lo <= v <= hi

        top = MAX_ROUND if latest_round is None else min(MAX_ROUND, latest_round)
        rounds = items(
            "rounds", is_int(1, top), f"rounds in 1..{top} (none after this instruction's)"
        )
        weights = items(
            "weights",
            lambda v: type(v) in (int, float) and 0 < v <= MAX_WEIGHT * MAX_SITES,
            f"finite weights in (0, {MAX_WEIGHT * MAX_SITES:g}]",
        )
        counts = items("counts", is_int(1, MAX_SITES), f"site counts in 1..{MAX_SITES}")
        sizes = items("chunk_counts", is_int(1, length), f"chunk counts in 1..{length}")
        chunks = items("chunks", lambda v: type(v) is bytes, "ciphertext chunks (bytes)")
        if not len(rounds) == len(weights) == len(counts) == len(sizes):
            raise ValueError(
                f"malformed {where}: expected as many weights, counts and chunk counts as rounds "
                f"({len(rounds)}), found {len(weights)}, {len(counts)} and {len(sizes)}"
            )
        if sum(sizes) != len(chunks):
            raise ValueError(
                f"malformed {where}: expected {sum(sizes)} chunks (the sum of chunk_counts), found "
                f"{len(chunks)}"
            )
        if any(b <= a for a, b in zip(rounds, rounds[1:], strict=False)):
            raise ValueError(
                f"malformed {where}: field 'rounds': expected strictly increasing rounds, "
                f"found {rounds[:20]}"
            )
        out: list[CkksRound] = []
        pos = 0
        for r, w, c, n in zip(rounds, weights, counts, sizes, strict=True):
            out.append(CkksRound(r, chunks[pos : pos + n], float(w), c))
            pos += n
        return cls(length=length, rounds=out)


_NONE = object()
"""Stands for "no such value" where ``None`` could be one."""


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


# --------------------------------------------------------------------------- reply fields
#
# Everything a site reports is read through these: a hostile reply may hold any type
# in any field, and decoding must end in a ValueError that says which field, what was
# expected and what was found, never in another exception.

MAX_EXAMPLES = 10**10
"""Most examples a site may report (training or evaluation)."""

MAX_SECONDS = 10.0**7
"""Longest a site may say its round took, seconds (about 4 months)."""


def _field(m: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in m:
        raise ValueError(f"{where} lacks {key!r}")
    return m[key]


def _int(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in ``lo..hi`` (bools and floats refused)."""
    if type(value) is not int:
        raise ValueError(
            f"{name}: expected an integer in {lo}..{hi}, found {type(value).__name__} {value!r:.60}"
        )
    if not lo <= value <= hi:
        raise ValueError(f"{name}: expected an integer in {lo}..{hi}, found {value}")
    return value


def _float(
    value: object, name: str, lo: float = -math.inf, hi: float = math.inf, *, nan: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (NaN only where ``nan``)."""
    if type(value) not in (int, float):
        raise ValueError(
            f"{name}: expected a finite number in [{lo:g}, {hi:g}], found "
            f"{type(value).__name__} {value!r:.60}"
        )
    try:
        x = float(value)  # type: ignore[arg-type]
    except OverflowError:
        x = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    if math.isnan(x) and nan:
        return x
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ValueError(f"{name}: expected a finite number in [{lo:g}, {hi:g}], found {x!r}")
    return x


def _str(value: object, name: str, *, empty: bool = True, limit: int = 256) -> str:
    if type(value) is not str or len(value) > limit or (not empty and not value):
        what = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        size = f"0..{limit}" if empty else f"1..{limit}"
        raise ValueError(f"{name}: expected a string of {size} characters, found {what}")
    return value


def _counts(value: object, name: str, length: int) -> list[int]:
    """A histogram: ``length`` non-negative integers."""
    if not isinstance(value, list) or len(value) != length:
        found = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{name}: expected {length} counts, found {found}")
    bad = next((v for v in value if type(v) is not int or not 0 <= v <= MAX_EXAMPLES), None)
    if bad is not None:
        raise ValueError(
            f"{name}: expected non-negative integer counts, found {type(bad).__name__} {bad!r:.60}"
        )
    return list(value)


def _records(content: object, where: str) -> RecordDict:
    if not isinstance(content, RecordDict):
        raise ValueError(f"{where}: expected a RecordDict, found {type(content).__name__}")
    return content


# Physical range of a telemetry reading by the unit its name ends with (names carry units:
# ``cpu_util_percent``, ``device_temperature_c``...); any other reading: finite, |x| <= 1e15.
READING_RANGES: tuple[tuple[str, float, float], ...] = (
    ("_percent", 0.0, 100.0),
    ("_c", -273.15, 1000.0),
    ("_mib", 0.0, 2.0**40),
    ("_w", 0.0, 10.0**7),
    ("_seconds", 0.0, MAX_SECONDS),
    ("_s", 0.0, MAX_SECONDS),
    ("_bytes", 0.0, 2.0**63),
    ("_count", 0.0, 10.0**9),
    ("num_devices", 0.0, 10.0**6),
)
_ANY_READING = 10.0**15


def reading_range(name: str) -> tuple[float, float]:
    """The range a telemetry reading called ``name`` must lie in (see :data:`READING_RANGES`)."""
    for suffix, lo, hi in READING_RANGES:
        if name.endswith(suffix):
            return lo, hi
    return -_ANY_READING, _ANY_READING


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class TrainReply:
    """What a site returns after local training: its model in clear, or an encrypted update."""

    arrays: dict[str, np.ndarray]
    num_examples: int
    loss: float
    seconds: float
    site_id: str
    encrypted: list[bytes] | None = None
    """``ckks`` mode: ciphertext chunks of ``weight * update`` (then ``arrays`` is empty)."""
    length: int = 0
    """``ckks`` mode: number of values encrypted."""
    round: int = 0

    def to_content(self) -> RecordDict:
        # one config record for every figure: each record is an object on the wire
        content = RecordDict(
            {
                CONFIG: ConfigRecord(
                    {
                        "site_id": self.site_id,
                        "round": self.round,
                        "num_examples": self.num_examples,
                        "loss": self.loss,
                        "seconds": self.seconds,
                    }
                ),
            }
        )
        if self.encrypted is not None:
            content[CKKS_UPDATE] = ConfigRecord(
                {"chunks": list(self.encrypted), "length": int(self.length)}
            )
        else:
            content[ARRAYS] = arrays_to_record(self.arrays)
        return content

    def digest(self) -> bytes:
        """What the site signs: the update (clear or encrypted) and its reported figures."""
        body = (
            chunks_digest(self.encrypted)
            if self.encrypted is not None
            else arrays_digest(self.arrays)
        )
        return body + f"|{self.num_examples}|{self.loss!r}|{self.length}".encode()

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReply:
        """Parse a train reply, whatever it holds.

        The figures are checked for type and range: ``num_examples`` an integer in
        1..:data:`MAX_EXAMPLES`, ``loss`` finite and >= 0, ``seconds`` in 0..:data:`MAX_SECONDS`,
        ``round`` >= 0; arrays as :func:`record_to_arrays` checks them.

        Raises:
            ValueError: saying which field is missing or malformed, what was expected and
                what was found (never another exception).
        """
        content = _records(content, "train reply")
        encrypted: list[bytes] | None = None
        length = 0
        if CKKS_UPDATE in content.config_records:
            rec = content.config_records[CKKS_UPDATE]
            encrypted = _bytes_list(_field(rec, "chunks", "'ckks.update'"), "ckks.update chunks")
            length = _int(
                _field(rec, "length", "'ckks.update'"), "ckks.update length", 1, MAX_ELEMENTS
            )
            arrays: dict[str, np.ndarray] = {}
        elif ARRAYS in content.array_records:
            arrays = record_to_arrays(content.array_records[ARRAYS])
        else:
            raise ValueError("train reply has neither an 'arrays' nor a 'ckks.update' record")
        info = content.config_records.get(CONFIG, ConfigRecord())
        # the figures are in the config record (a 'metrics' record in earlier versions)
        m: Mapping[str, Any] = content.metric_records.get(METRICS) or info
        where = "train reply (its 'config' record)"
        return cls(
            arrays=arrays,
            num_examples=_int(
                _field(m, "num_examples", where), "train reply num_examples", 1, MAX_EXAMPLES
            ),
            loss=_float(_field(m, "loss", where), "train reply loss", 0.0),
            seconds=_float(_field(m, "seconds", where), "train reply seconds", 0.0, MAX_SECONDS),
            site_id=_str(info.get("site_id", "?"), "train reply site_id", empty=False),
            encrypted=encrypted,
            length=length,
            round=_int(info.get("round", 0), "train reply round", 0, 2**31),
        )


@dataclass(frozen=True)
class EvalReply:
    """What a site returns after evaluating the global model on its held-out data."""

    site_id: str
    num_examples: int
    num_positive: int
    loss: float
    metrics: dict[str, float]
    hist_pos: list[int]
    hist_neg: list[int]
    model_digest: str = ""
    """Hex digest of the model the site evaluated (``ckks``: every site must hold the same)."""
    flagged_pos: int | None = None
    """Positives flagged at the site's operating threshold (``metrics["threshold"]``)."""
    flagged_neg: int | None = None
    """Negatives flagged there; with ``flagged_pos``, what pooled F1/recall/FPR are summed from."""

    def to_content(self) -> RecordDict:
        m: dict[str, Any] = {
            "num_examples": self.num_examples,
            "num_positive": self.num_positive,
            "loss": self.loss,
            "hist_pos": [int(x) for x in self.hist_pos],
            "hist_neg": [int(x) for x in self.hist_neg],
        }
        if self.flagged_pos is not None and self.flagged_neg is not None:
            m["flagged_pos"] = int(self.flagged_pos)
            m["flagged_neg"] = int(self.flagged_neg)
        m.update({f"m.{k}": float(v) for k, v in self.metrics.items()})
        return RecordDict(
            {
                METRICS: MetricRecord(m),
                CONFIG: ConfigRecord({"site_id": self.site_id, "model_digest": self.model_digest}),
            }
        )

    def digest(self) -> bytes:
        """What the site signs: identity, counts, loss, metrics, histograms and model digest.

        Numbers are normalized as they travel (ints, and floats by their exact ``repr``),
        so the site's object and the coordinator's parsed copy give the same digest.
        """
        flagged = (
            None
            if self.flagged_pos is None or self.flagged_neg is None
            else [int(self.flagged_pos), int(self.flagged_neg)]
        )
        blob = json.dumps(
            [
                self.site_id,
                int(self.num_examples),
                int(self.num_positive),
                repr(float(self.loss)),
                sorted((str(k), repr(float(v))) for k, v in self.metrics.items()),
                [int(x) for x in self.hist_pos],
                [int(x) for x in self.hist_neg],
                self.model_digest,
                flagged,
            ]
        )
        return hashlib.sha256(blob.encode()).digest()

    @classmethod
    def from_content(cls, content: RecordDict) -> EvalReply:
        """Parse an evaluate reply, whatever it holds.

        ``num_examples`` in 1..:data:`MAX_EXAMPLES`, ``num_positive`` in 0..``num_examples``,
        ``loss`` finite and >= 0, two histograms of :data:`HIST_BINS` non-negative counts that
        sum to the positives and the negatives, flag counts within them, metrics finite (or
        NaN: a metric a site cannot compute, e.g. PR-AUC without positives).

        Raises:
            ValueError: saying which field is missing or malformed, what was expected and
                what was found (never another exception).
        """
        content = _records(content, "evaluate reply")
        if METRICS not in content.metric_records:
            raise ValueError("evaluate reply has no 'metrics' record")
        m = content.metric_records[METRICS]
        where = "evaluate reply metrics"
        config = content.config_records.get(CONFIG, ConfigRecord())
        num_examples = _int(
            _field(m, "num_examples", where), "evaluate reply num_examples", 1, MAX_EXAMPLES
        )
        num_positive = _int(
            _field(m, "num_positive", where), "evaluate reply num_positive", 0, num_examples
        )
        loss = _float(_field(m, "loss", where), "evaluate reply loss", 0.0)
        hist_pos = _counts(
            _field(m, "hist_pos", where), "evaluate reply histograms (hist_pos)", HIST_BINS
        )
        hist_neg = _counts(
            _field(m, "hist_neg", where), "evaluate reply histograms (hist_neg)", HIST_BINS
        )
        num_negative = num_examples - num_positive
        if sum(hist_pos) != num_positive or sum(hist_neg) != num_negative:
            raise ValueError(
                f"evaluate reply histograms: expected {num_positive} positive and {num_negative} "
                f"negative score(s) (num_positive, num_examples), found {sum(hist_pos)} and "
                f"{sum(hist_neg)}"
            )
        flagged_pos: int | None = None
        flagged_neg: int | None = None
        if "flagged_pos" in m or "flagged_neg" in m:
            if "flagged_pos" not in m or "flagged_neg" not in m:
                raise ValueError("evaluate reply has only one of flagged_pos and flagged_neg")
            tp = _int(m["flagged_pos"], "evaluate reply flagged_pos", 0, MAX_EXAMPLES)
            fp = _int(m["flagged_neg"], "evaluate reply flagged_neg", 0, MAX_EXAMPLES)
            if not (tp <= num_positive and fp <= num_negative):
                raise ValueError(
                    f"evaluate reply flags {tp} positive(s) and {fp} negative(s) of "
                    f"{num_positive} and {num_negative}: impossible counts"
                )
            flagged_pos, flagged_neg = tp, fp
        metrics = {
            k[2:]: _float(v, f"evaluate reply metric {k[2:]!r:.60}", -1e15, 1e15, nan=True)
            for k, v in m.items()
            if k.startswith("m.")
        }
        return cls(
            site_id=_str(config.get("site_id", "?"), "evaluate reply site_id", empty=False),
            num_examples=num_examples,
            num_positive=num_positive,
            loss=loss,
            metrics=metrics,
            hist_pos=hist_pos,
            hist_neg=hist_neg,
            model_digest=_str(config.get("model_digest", ""), "evaluate reply model_digest"),
            flagged_pos=flagged_pos,
            flagged_neg=flagged_neg,
        )


@dataclass(frozen=True)
class Telemetry:
    """A site's answer to ``query.telemetry``."""

    site_id: str
    num_train_examples: int
    device: str
    vendor: str
    readings: dict[str, float] = field(default_factory=dict)
    model_round: int = 0
    """``ckks``: the last round whose aggregate the site has applied (0: none)."""
    data_problem: str = ""
    """With ``num_train_examples`` 0: why the data do not load, as one of
    :data:`DATA_PROBLEMS` (a category, never the error's text, which may quote a value of
    the site's data)."""

    def to_content(self) -> RecordDict:
        info: dict[str, Any] = {
            "site_id": self.site_id,
            "device": self.device,
            "vendor": self.vendor,
            "model_round": self.model_round,
        }
        if self.data_problem:
            info["data_problem"] = self.data_problem
        return RecordDict(
            {
                TELEMETRY_INFO: ConfigRecord(info),
                TELEMETRY_METRICS: MetricRecord(
                    {
                        "num_train_examples": self.num_train_examples,
                        **{k: float(v) for k, v in self.readings.items()},
                    }
                ),
            }
        )

    def digest(self) -> bytes:
        """What the site signs: identity, data size, model round and readings."""
        blob = json.dumps(
            [
                self.site_id,
                self.num_train_examples,
                self.device,
                self.vendor,
                self.model_round,
                sorted(self.readings.items()),
                *([self.data_problem] if self.data_problem else []),
            ]
        )
        return hashlib.sha256(blob.encode()).digest()

    @classmethod
    def from_content(cls, content: RecordDict) -> Telemetry:
        """Parse a telemetry reply, whatever it holds.

        ``num_train_examples`` (the data size the coordinator weights the site by) must be
        an integer in 0..:data:`MAX_EXAMPLES` (0: the site's data do not load; the
        coordinator leaves such a site out, naming it, see
        ``coordinator.driver.read_telemetry``); every reading finite and within the
        physical range of its unit (:func:`reading_range`); ``model_round`` >= 0.

        Raises:
            ValueError: saying which field is missing or malformed, what was expected and
                what was found (never another exception).
        """
        content = _records(content, "telemetry reply")
        if (
            TELEMETRY_INFO not in content.config_records
            or TELEMETRY_METRICS not in content.metric_records
        ):
            raise ValueError("telemetry reply lacks its info or metrics record")
        info = content.config_records[TELEMETRY_INFO]
        m = dict(content.metric_records[TELEMETRY_METRICS])
        n = m.pop("num_train_examples", None)
        if n is None:
            raise ValueError("telemetry reply lacks 'num_train_examples' (its data size)")
        readings: dict[str, float] = {}
        for k, v in m.items():
            lo, hi = reading_range(k)
            readings[k] = _float(v, f"telemetry reading {k!r:.60}", lo, hi)
        return cls(
            site_id=_str(info.get("site_id", "?"), "telemetry site_id", empty=False),
            num_train_examples=_int(n, "telemetry num_train_examples", 0, MAX_EXAMPLES),
            device=_str(info.get("device", "?"), "telemetry device"),
            vendor=_str(info.get("vendor", "?"), "telemetry vendor"),
            readings=readings,
            model_round=_int(info.get("model_round", 0), "telemetry model_round", 0, 2**31),
            data_problem=_data_problem(info.get("data_problem", "")),
        )


DATA_PROBLEMS: dict[str, str] = {
    "missing": "its data file is missing",
    "invalid": "its data fail the data checks (`fedcore validate` on the site's file lists them)",
    "config": "its site file is not valid (`fedcore validate` on it says why)",
    "unloadable": "its data do not load (the site's log says why)",
}
"""Why a site's data do not load, as its telemetry may say it -> what the coordinator reports."""


def _data_problem(value: object) -> str:
    if value == "" or (type(value) is str and value in DATA_PROBLEMS):
        return str(value)
    raise ValueError(
        f"telemetry data_problem: expected one of {', '.join(sorted(DATA_PROBLEMS))} or "
        f"nothing, found {value!r:.60}"
    )


def message_nbytes(msg: Any) -> int:
    """Bytes a message occupies on the wire (Flower's serialized objects, all of them)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())
