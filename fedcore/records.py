"""The record layout of every message between coordinator and site, defined once.

``coordinator`` and ``clients`` never import each other; both build and read
messages only through the helpers here, so the two sides cannot drift apart.

Message types and their content:

=====================  =========================================  ===========================================
message type           instruction (coordinator -> site)          reply (site -> coordinator)
=====================  =========================================  ===========================================
``query.telemetry``    ``config``: round                          ``telemetry``: site id, data size, device
                                                                  readings (ConfigRecord + MetricRecord)
``train``              ``arrays``: global model, ``config``:      ``arrays``: local model, ``metrics``:
                       round, task, training settings, seed        num_examples, loss, seconds
``evaluate``           ``arrays``: global model, ``config``:      ``metrics``: num_examples, loss, metrics,
                       round, task                                 score histograms per class
=====================  =========================================  ===========================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

# message types
TELEMETRY = "query.telemetry"
TRAIN = "train"
EVALUATE = "evaluate"

# record keys
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
TELEMETRY_INFO = "telemetry.info"
TELEMETRY_METRICS = "telemetry.metrics"

HIST_BINS = 200
"""Score histogram resolution used for pooled PR-AUC / ROC-AUC across sites."""


# --------------------------------------------------------------------------- arrays


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Pack named numpy arrays (e.g. a model's state dict) into an ``ArrayRecord``."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ``ArrayRecord`` into named numpy arrays (copies, owned by the caller)."""
    return {k: np.array(v.numpy(), copy=True) for k, v in record.items()}


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class RoundConfig:
    """Settings that travel with a train or evaluate instruction."""

    round: int
    seed: int
    task: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "round": self.round,
                "seed": self.seed,
                "task": json.dumps(self.task, sort_keys=True),
                "training": json.dumps(self.training, sort_keys=True),
            }
        )

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> RoundConfig:
        return cls(
            round=int(rec["round"]),  # type: ignore[arg-type]
            seed=int(rec["seed"]),  # type: ignore[arg-type]
            task=json.loads(str(rec["task"])),
            training=json.loads(str(rec.get("training", "{}"))),
        )


def train_instruction(arrays: Mapping[str, np.ndarray], cfg: RoundConfig) -> RecordDict:
    """Content of a ``train`` message."""
    return RecordDict({ARRAYS: arrays_to_record(arrays), CONFIG: cfg.to_record()})


def evaluate_instruction(arrays: Mapping[str, np.ndarray], cfg: RoundConfig) -> RecordDict:
    """Content of an ``evaluate`` message."""
    return RecordDict({ARRAYS: arrays_to_record(arrays), CONFIG: cfg.to_record()})


def telemetry_instruction(round_: int) -> RecordDict:
    """Content of a ``query.telemetry`` message."""
    return RecordDict({CONFIG: ConfigRecord({"round": round_})})


def read_instruction(
    content: RecordDict,
) -> tuple[dict[str, np.ndarray] | None, RoundConfig | None]:
    """Read the model arrays and round config of a train/evaluate instruction."""
    arrays = (
        record_to_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    )
    cfg = (
        RoundConfig.from_record(content.config_records[CONFIG])
        if CONFIG in content.config_records
        else None
    )
    return arrays, cfg


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class TrainReply:
    """What a site returns after local training."""

    arrays: dict[str, np.ndarray]
    num_examples: int
    loss: float
    seconds: float
    site_id: str

    def to_content(self) -> RecordDict:
        return RecordDict(
            {
                ARRAYS: arrays_to_record(self.arrays),
                METRICS: MetricRecord(
                    {"num_examples": self.num_examples, "loss": self.loss, "seconds": self.seconds}
                ),
                CONFIG: ConfigRecord({"site_id": self.site_id}),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReply:
        """Parse a train reply; raises ``ValueError`` saying what is missing or malformed."""
        if ARRAYS not in content.array_records:
            raise ValueError("train reply has no 'arrays' record")
        if METRICS not in content.metric_records:
            raise ValueError("train reply has no 'metrics' record")
        m = content.metric_records[METRICS]
        for key in ("num_examples", "loss", "seconds"):
            if key not in m:
                raise ValueError(f"train reply metrics lack {key!r}")
        site = content.config_records.get(CONFIG, ConfigRecord()).get("site_id", "?")
        return cls(
            arrays=record_to_arrays(content.array_records[ARRAYS]),
            num_examples=int(m["num_examples"]),  # type: ignore[arg-type]
            loss=float(m["loss"]),  # type: ignore[arg-type]
            seconds=float(m["seconds"]),  # type: ignore[arg-type]
            site_id=str(site),
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

    def to_content(self) -> RecordDict:
        m: dict[str, Any] = {
            "num_examples": self.num_examples,
            "num_positive": self.num_positive,
            "loss": self.loss,
            "hist_pos": [int(x) for x in self.hist_pos],
            "hist_neg": [int(x) for x in self.hist_neg],
        }
        m.update({f"m.{k}": float(v) for k, v in self.metrics.items()})
        return RecordDict(
            {METRICS: MetricRecord(m), CONFIG: ConfigRecord({"site_id": self.site_id})}
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> EvalReply:
        if METRICS not in content.metric_records:
            raise ValueError("evaluate reply has no 'metrics' record")
        m = content.metric_records[METRICS]
        for key in ("num_examples", "num_positive", "loss", "hist_pos", "hist_neg"):
            if key not in m:
                raise ValueError(f"evaluate reply metrics lack {key!r}")
        site = content.config_records.get(CONFIG, ConfigRecord()).get("site_id", "?")
        hist_pos = [int(x) for x in m["hist_pos"]]  # type: ignore[union-attr]
        hist_neg = [int(x) for x in m["hist_neg"]]  # type: ignore[union-attr]
        if len(hist_pos) != HIST_BINS or len(hist_neg) != HIST_BINS:
            raise ValueError(f"evaluate reply histograms must have {HIST_BINS} bins")
        return cls(
            site_id=str(site),
            num_examples=int(m["num_examples"]),  # type: ignore[arg-type]
            num_positive=int(m["num_positive"]),  # type: ignore[arg-type]
            loss=float(m["loss"]),  # type: ignore[arg-type]
            metrics={k[2:]: float(v) for k, v in m.items() if k.startswith("m.")},  # type: ignore[arg-type]
            hist_pos=hist_pos,
            hist_neg=hist_neg,
        )


@dataclass(frozen=True)
class Telemetry:
    """A site's answer to ``query.telemetry``."""

    site_id: str
    num_train_examples: int
    device: str
    vendor: str
    readings: dict[str, float] = field(default_factory=dict)

    def to_content(self) -> RecordDict:
        return RecordDict(
            {
                TELEMETRY_INFO: ConfigRecord(
                    {"site_id": self.site_id, "device": self.device, "vendor": self.vendor}
                ),
                TELEMETRY_METRICS: MetricRecord(
                    {
                        "num_train_examples": self.num_train_examples,
                        **{k: float(v) for k, v in self.readings.items()},
                    }
                ),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> Telemetry:
        if (
            TELEMETRY_INFO not in content.config_records
            or TELEMETRY_METRICS not in content.metric_records
        ):
            raise ValueError("telemetry reply lacks its info or metrics record")
        info = content.config_records[TELEMETRY_INFO]
        m = dict(content.metric_records[TELEMETRY_METRICS])
        n = int(m.pop("num_train_examples", 0))  # type: ignore[arg-type]
        return cls(
            site_id=str(info.get("site_id", "?")),
            num_train_examples=n,
            device=str(info.get("device", "?")),
            vendor=str(info.get("vendor", "?")),
            readings={k: float(v) for k, v in m.items()},  # type: ignore[arg-type]
        )


def message_nbytes(msg: Any) -> int:
    """Bytes a message occupies on the wire (Flower's serialized objects, all of them)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())
