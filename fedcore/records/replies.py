"""Replies from site to coordinator: a train reply, an evaluation, telemetry; decoded whatever they hold."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedcore.metrics import METRIC_KEYS
from fedcore.npy import MAX_ELEMENTS
from fedcore.records.arrays import arrays_to_record, record_to_arrays
from fedcore.records.fields import (
    MAX_EXAMPLES,
    MAX_SECONDS,
    _counts,
    _field,
    _float,
    _int,
    _records,
    _str,
    reading_range,
)
from fedcore.records.keys import (
    ARRAYS,
    CKKS_UPDATE,
    CONFIG,
    HIST_BINS,
    METRICS,
    TELEMETRY_INFO,
    TELEMETRY_METRICS,
)
from fedcore.records.signing import _bytes_list, arrays_digest, chunks_digest

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
    quality: dict[str, float] = field(default_factory=dict)
    """Table data: the site's data-quality summary (counts, shares, rates, drift; never a
    value of a row), as ``fedcore.data.quality.QualityReport.summary`` gives it."""
    serving: dict[str, float] = field(default_factory=dict)
    """The site's scoring service: its drift monitor's summary (counts, PSI, PR-AUC and its
    reference, flagged rates, alarm flags; never a transaction, a score or an id), as
    ``fedcore.serving.monitor.MonitorStatus.summary`` gives it, plus ``status_age_s``;
    empty when the site serves no model."""

    def to_content(self) -> RecordDict:
        info: dict[str, Any] = {
            "site_id": self.site_id,
            "device": self.device,
            "vendor": self.vendor,
            "model_round": self.model_round,
        }
        if self.data_problem:
            info["data_problem"] = self.data_problem
        content = RecordDict(
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
        if self.quality:
            content[TELEMETRY_QUALITY] = MetricRecord(
                {k: float(v) for k, v in self.quality.items()}
            )
        if self.serving:
            content[TELEMETRY_SERVING] = MetricRecord(
                {k: float(v) for k, v in self.serving.items()}
            )
        return content

    def digest(self) -> bytes:
        """What the site signs: identity, data size, model round, readings (and the data
        problem, quality summary and serving summary, when there are)."""
        blob = json.dumps(
            [
                self.site_id,
                self.num_train_examples,
                self.device,
                self.vendor,
                self.model_round,
                sorted(self.readings.items()),
                *([self.data_problem] if self.data_problem else []),
                *(
                    [["quality", sorted((k, repr(float(v))) for k, v in self.quality.items())]]
                    if self.quality
                    else []
                ),
                *(
                    [["serving", sorted((k, repr(float(v))) for k, v in self.serving.items())]]
                    if self.serving
                    else []
                ),
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
        physical range of its unit (:func:`reading_range`); ``model_round`` >= 0; the
        quality summary, when present, as :func:`_quality` checks it, the serving summary
        as :func:`_serving` does.

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
            quality=_quality(content.metric_records.get(TELEMETRY_QUALITY)),
            serving=_serving(content.metric_records.get(TELEMETRY_SERVING)),
        )


TELEMETRY_QUALITY = "telemetry.quality"
"""Record key of a telemetry reply's data-quality summary (absent when there is none)."""
MAX_QUALITY_ENTRIES = 512
"""Most numbers a quality summary may hold."""
_QUALITY_KEY = re.compile(r"[a-z_]{1,32}(?::[A-Za-z_][A-Za-z0-9_]{0,63})?")
_QUALITY_MAX = 1e15


def _quality(record: Mapping[str, Any] | None) -> dict[str, float]:
    """A telemetry quality summary, checked: at most :data:`MAX_QUALITY_ENTRIES` keys, each
    ``measure`` or ``measure:role`` (lower-case measure, identifier role), every value a
    finite number >= 0, shares and rates (``*_share``, ``*_rate``) within [0, 1]."""
    if record is None:
        return {}
    if len(record) > MAX_QUALITY_ENTRIES:
        raise ValueError(
            f"telemetry quality: expected at most {MAX_QUALITY_ENTRIES} entries, found "
            f"{len(record)}"
        )
    out: dict[str, float] = {}
    for k, v in record.items():
        if type(k) is not str or not _QUALITY_KEY.fullmatch(k):
            raise ValueError(
                f"telemetry quality: expected keys like 'missing_share' or 'psi:amount' "
                f"(a lower-case measure, then optionally ':' and a role name), found {k!r:.60}"
            )
        hi = 1.0 if k.endswith(("_share", "_rate")) else _QUALITY_MAX
        out[k] = _float(v, f"telemetry quality {k!r}", 0.0, hi)
    return out


TELEMETRY_SERVING = "telemetry.serving"
"""Record key of a telemetry reply's serving summary (absent when the site serves no model)."""

_COUNTS = ("n_scored", "n_labelled", "n_positive", "window_scores", "window_labels")
_FLAGS = ("alarm_psi", "alarm_metric", "retrain")
_WHOLE = frozenset({*_COUNTS, "window_positives", *_FLAGS})
_UNIT = (0.0, 1.0)
SERVING_KEYS: dict[str, tuple[float, float]] = {
    **{k: (0.0, 1e15) for k in (*_COUNTS, "window_positives")},
    "psi": (0.0, 1e3),
    "psi_bound": (0.0, 10.0),
    **{k: _UNIT for k in ("max_drop", "threshold", "flagged_rate", "reference_flagged_rate")},
    **{k: _UNIT for m in METRIC_KEYS for k in (m, f"reference_{m}")},
    **{k: (0.0, 1.0) for k in _FLAGS},
    "status_age_s": (0.0, 1e10),
}
"""Every number a serving summary may hold -> its range. Counts (``n_*``, ``window_*``)
are whole numbers and ``alarm_*`` and ``retrain`` 0 or 1; nothing else (no id, no
score) has a key here."""


def _serving(record: Mapping[str, Any] | None) -> dict[str, float]:
    """A telemetry serving summary, checked: only :data:`SERVING_KEYS`, each value a finite
    number in its range (whole counts, flags 0 or 1)."""
    if record is None:
        return {}
    if len(record) > len(SERVING_KEYS):
        raise ValueError(
            f"telemetry serving: expected at most {len(SERVING_KEYS)} entries, found {len(record)}"
        )
    out: dict[str, float] = {}
    for k, v in record.items():
        if type(k) is not str or k not in SERVING_KEYS:
            raise ValueError(
                f"telemetry serving: expected keys among {', '.join(sorted(SERVING_KEYS)[:6])}, "
                f"... (fedcore.records.replies.SERVING_KEYS), found {k!r:.60}"
            )
        lo, hi = SERVING_KEYS[k]
        value = _float(v, f"telemetry serving {k!r}", lo, hi)
        if k in _WHOLE and not value.is_integer():
            raise ValueError(f"telemetry serving {k!r}: expected a whole number, found {value!r}")
        out[k] = value
    return out


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
