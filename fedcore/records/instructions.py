"""Instructions from coordinator to site: the typed round config, the instructions of each kind, CKKS aggregates."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from pydantic import BaseModel

from fedcore.config import ExportSpec, PrivacySpec, TaskSpec, TrainingSpec
from fedcore.records.arrays import arrays_to_record, record_to_arrays
from fedcore.records.fields import (
    MAX_CKKS_LENGTH,
    MAX_DEADLINE_S,
    MAX_DEVICE,
    MAX_EPOCHS,
    MAX_ROUND,
    MAX_SITES,
    MAX_WEIGHT,
    _Fields,
    _non_finite,
    _records,
    _str,
)
from fedcore.records.keys import ARRAYS, CKKS_AGGREGATES, CONFIG

_NONE = object()
"""Stands for "no such value" where ``None`` could be one."""


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
