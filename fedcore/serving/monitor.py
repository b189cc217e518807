"""Watch a served model: score drift as the population stability index against its export's reference (Siddiqi 2006, *Credit Risk Scorecards*), and its accuracy on the labels that arrive later.

The scoring service feeds a :class:`Monitor` the scores it serves and, as outcomes become
known, each labelled transaction's served score; :meth:`Monitor.status` compares them with
the served model on the site's test split at export (:class:`Reference`, from the export
manifest) and raises an :class:`Alarm` for what moved too far (:class:`MonitorSpec`). The
site's telemetry sends :meth:`MonitorStatus.summary` (aggregate numbers only) upward. All
arithmetic, except the status file (:func:`write_status`, :func:`read_status`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from fedcore.config.monitor import MonitorSpec
from fedcore.metrics import METRIC_KEYS, binary_metrics

if TYPE_CHECKING:
    from fedcore.export.manifest import ExportManifest

__all__ = [
    "PSI_EPSILON",
    "RETRAIN",
    "STATUS_FILE",
    "Alarm",
    "AlarmKind",
    "Monitor",
    "MonitorSpec",
    "MonitorStatus",
    "Reference",
    "bin_shares",
    "psi",
    "quantile_edges",
    "read_status",
    "write_status",
]

PSI_EPSILON: Final[float] = 1e-4
"""Least share a bin counts with in :func:`psi` (on both sides): an empty bin stands for
0.01 % of the scores instead of making ``ln(0)`` infinite. It caps one bin's term near
``ln(1 / PSI_EPSILON) = 9.2``."""

STATUS_FILE: Final[Path] = Path("serving") / "monitor.json"
"""The monitor status file, under the site's state directory (``STATE/serving/monitor.json``)."""

RETRAIN: Final[str] = (
    "retrain the model on the site's recent transactions: start a new federated run (the "
    "consortium operator runs `fedcore run SCENARIO.yaml`, or the coordinator's next run with "
    "`fed-coordinator start`); each site exports and serves the new model when it finishes"
)
"""What every alarm suggests."""

AlarmKind = Literal["psi", "metric"]
"""``psi``: the score distribution moved; ``metric``: accuracy on late labels dropped."""


# --------------------------------------------------------------------------- bins and PSI


def _scores(scores: ArrayLike, what: str, *, empty: bool = True) -> np.ndarray:
    """``scores`` as a flat float array, checked finite (and not empty unless ``empty``)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)) or not (empty or len(s)):
        bad = [str(x) for x in s[~np.isfinite(s)][:3]]
        raise ValueError(f"{what}: expected one or more finite scores, found {len(s)} {bad}")
    return s


def quantile_edges(scores: ArrayLike, bins: int = 10) -> tuple[float, ...]:
    """Bin edges at the quantiles of ``scores`` (clipped to [0, 1]): ``0.0``, inner edges, ``1.0``.

    Bin ``i`` holds the scores ``s`` with ``edges[i] <= s < edges[i + 1]``; the first bin
    also holds scores below 0, the last scores of 1 and above. Inner edges that tie (many
    equal scores) or fall on 0 or 1 are dropped, so there may be fewer than ``bins`` bins
    (one when every score is 0, or every score 1: then the PSI is always 0).

    Raises:
        ValueError: no scores, a non-finite score, or ``bins`` < 1.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1; found {bins}")
    s = _scores(scores, "quantile_edges", empty=False)
    inner = np.quantile(np.clip(s, 0.0, 1.0), np.arange(1, bins) / bins)
    inner = np.unique(inner[(inner > 0.0) & (inner < 1.0)])
    return (0.0, *(float(e) for e in inner), 1.0)


def bin_shares(edges: tuple[float, ...] | list[float], scores: ArrayLike) -> np.ndarray:
    """Share of ``scores`` in each bin of ``edges`` (as :func:`quantile_edges` bins); zeros
    when there are no scores."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    k = len(edges) - 1
    if k < 1:
        raise ValueError(f"expected at least 2 bin edges; found {len(edges)}")
    index = np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), s, side="right")
    counts = np.bincount(index, minlength=k)
    return counts / len(s) if len(s) else np.zeros(k)


def psi(
    reference_shares: ArrayLike, edges: tuple[float, ...] | list[float], scores: ArrayLike
) -> float:
    """Population stability index of ``scores`` against a reference distribution.

    ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins of ``edges``, where ``a_i``
    is the share of ``scores`` in bin ``i`` and ``e_i`` the reference share, both raised
    to at least :data:`PSI_EPSILON` (an empty bin would make the term infinite). Usual
    reading: below 0.1 no shift, 0.1 to 0.2 moderate, above 0.2 significant.

    Args:
        reference_shares: Share of the reference scores per bin, ``k`` values.
        edges: The ``k + 1`` bin edges (see :func:`quantile_edges`).
        scores: The scores to compare (finite).

    Raises:
        ValueError: shares and edges disagree, no scores, or a non-finite score.
    """
    e = np.asarray(reference_shares, dtype=np.float64).reshape(-1)
    if len(e) != len(edges) - 1 or len(e) < 1:
        raise ValueError(
            f"expected k reference shares for k + 1 edges; found {len(e)} shares and "
            f"{len(edges)} edges"
        )
    s = _scores(scores, "psi", empty=False)
    a = np.maximum(bin_shares(edges, s), PSI_EPSILON)
    e = np.maximum(e, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Reference:
    """What the monitor compares with: the served model at export, on the site's test split.

    Attributes:
        edges: Bin edges of the reference scores (:func:`quantile_edges`).
        shares: Share of the reference scores per bin.
        metric: Name of the metric (a key of ``fedcore.metrics.METRIC_KEYS``).
        metric_value: Its value at export (``None``: undefined; no metric alarm).
        threshold: Operating threshold: scores at or above it are flagged.
        flagged_rate: Share of the reference scores flagged (``None``: unknown).
        scores: Reference scores the shares come from (0: unknown).
    """

    edges: tuple[float, ...]
    shares: tuple[float, ...]
    metric: str = "pr_auc"
    metric_value: float | None = None
    threshold: float = 0.5
    flagged_rate: float | None = None
    scores: int = 0

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or len(self.shares) != len(self.edges) - 1:
            raise ValueError(
                f"a reference needs k + 1 edges and k shares (k >= 1); found {len(self.edges)} "
                f"edges and {len(self.shares)} shares"
            )
        if self.metric not in METRIC_KEYS:
            raise ValueError(
                f"reference metric must be one of {', '.join(METRIC_KEYS)}; found {self.metric!r}"
            )
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be a score in [0, 1]; found {self.threshold!r}")

    @classmethod
    def from_manifest(cls, manifest: ExportManifest) -> Reference:
        """The reference an export manifest records (``manifest.reference``, ``threshold``).

        Raises:
            ValueError: the manifest has no reference (written by an earlier fedcore).
        """
        ref = manifest.reference
        if ref is None:
            raise ValueError(
                f"the export manifest of {manifest.file} holds no score reference (it was "
                "written by an earlier fedcore), so drift cannot be measured; serve a model "
                "exported by this fedcore (every federated run ends with each site's export)"
            )
        return cls(
            edges=tuple(ref.edges),
            shares=tuple(ref.shares),
            metric=ref.metric,
            metric_value=ref.value,
            threshold=manifest.threshold,
            flagged_rate=ref.flagged_rate,
            scores=ref.scores,
        )


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Alarm:
    """One reason to retrain: what moved, by how much, and what to do.

    Attributes:
        kind: ``psi`` or ``metric`` (:data:`AlarmKind`).
        value: The PSI, or the metric on the label window.
        bound: What it crossed: ``psi_bound``, or ``reference * (1 - max_drop)``.
        message: What happened, with the numbers.
        suggestion: What to do (:data:`RETRAIN`).
    """

    kind: AlarmKind
    value: float
    bound: float
    message: str
    suggestion: str = RETRAIN

    @property
    def name(self) -> str:
        """The alarm's name, for logs and metric labels (its kind)."""
        return self.kind


def _opt(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class MonitorStatus:
    """What a monitor sees now. Counts ``n_*`` run since it started; ``window_*`` count the
    recent scores and labels it judges on.

    Attributes:
        n_scored: Scores observed.
        n_labelled: Labels observed.
        n_positive: Fraud labels observed.
        window_scores: Scores in the PSI window.
        window_labels: Labelled transactions in the metric window.
        window_positives: Fraud among them.
        psi: PSI of the window's scores (``None``: no scores yet).
        metric: The metric's name (``pr_auc``).
        metric_value: The metric on the label window (``None``: undefined, no fraud label yet).
        reference_metric: The metric at export (``None``: unknown).
        flagged_rate: Share of the window's scores at or above the threshold (``None``: none).
        reference_flagged_rate: The same on the test split at export (``None``: unknown).
        threshold: Operating threshold.
        psi_bound: ``MonitorSpec.psi_bound``.
        max_drop: ``MonitorSpec.max_drop``.
        alarms: Alarms raised now (PSI and metric only past their minimum counts).
    """

    n_scored: int
    n_labelled: int
    n_positive: int
    window_scores: int
    window_labels: int
    window_positives: int
    psi: float | None
    metric: str
    metric_value: float | None
    reference_metric: float | None
    flagged_rate: float | None
    reference_flagged_rate: float | None
    threshold: float
    psi_bound: float
    max_drop: float
    alarms: tuple[Alarm, ...] = ()

    @property
    def retrain(self) -> bool:
        """Whether the monitor suggests retraining (an alarm is raised)."""
        return bool(self.alarms)

    def summary(self) -> dict[str, float]:
        """Aggregate numbers only, for the coordinator: counts, PSI, metric and its reference
        (keyed by the metric's name: ``pr_auc``, ``reference_pr_auc``), flagged rates, bounds,
        threshold, and ``alarm_psi``, ``alarm_metric``, ``retrain`` as 0 or 1. A number not
        measured yet is left out. Never a transaction, a score, a label or an id."""
        kinds = {a.kind for a in self.alarms}
        out: dict[str, float] = {
            "n_scored": float(self.n_scored),
            "n_labelled": float(self.n_labelled),
            "n_positive": float(self.n_positive),
            "window_scores": float(self.window_scores),
            "window_labels": float(self.window_labels),
            "window_positives": float(self.window_positives),
            "psi_bound": float(self.psi_bound),
            "max_drop": float(self.max_drop),
            "threshold": float(self.threshold),
            "alarm_psi": 1.0 if "psi" in kinds else 0.0,
            "alarm_metric": 1.0 if "metric" in kinds else 0.0,
            "retrain": 1.0 if self.retrain else 0.0,
        }
        optional = {
            "psi": self.psi,
            self.metric: self.metric_value,
            f"reference_{self.metric}": self.reference_metric,
            "flagged_rate": self.flagged_rate,
            "reference_flagged_rate": self.reference_flagged_rate,
        }
        out.update({k: v for k, v in ((k, _opt(v)) for k, v in optional.items()) if v is not None})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field (the metric's value under its name, e.g. ``pr_auc``),
        ``retrain``, and the alarms as dicts (with ``name``); unknown numbers are ``None``."""
        out = asdict(self)
        out[self.metric] = _opt(out.pop("metric_value"))
        out["alarms"] = [{**asdict(a), "name": a.name} for a in self.alarms]
        out["retrain"] = self.retrain
        for key in ("psi", "reference_metric", "flagged_rate", "reference_flagged_rate"):
            out[key] = _opt(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Any) -> MonitorStatus:
        """Parse :meth:`to_dict` output.

        Raises:
            ValueError: a field is missing or malformed (what was expected, what was found).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a monitor status is a JSON object; found {type(data).__name__}")
        metric = data.get("metric")
        if metric not in METRIC_KEYS:
            raise ValueError(
                f"monitor status metric: expected one of {', '.join(METRIC_KEYS)}, found "
                f"{metric!r:.40}"
            )
        values: dict[str, Any] = {"metric": metric, "metric_value": data.get(metric)}
        missing = [f.name for f in fields(cls) if f.name not in (*values, "alarms", *data)]
        if missing:
            raise ValueError(f"monitor status lacks {missing}; rewrite it (restart the service)")
        try:
            for f in fields(cls):
                raw: Any = values.get(f.name, data.get(f.name))
                if f.name.startswith(("n_", "window_")):
                    values[f.name] = int(raw)
                elif f.name in ("threshold", "psi_bound", "max_drop"):
                    values[f.name] = float(raw)
                elif f.name not in ("metric", "alarms"):  # optional numbers
                    values[f.name] = None if raw is None else float(raw)
            values["alarms"] = tuple(
                Alarm(
                    a["kind"] if a["kind"] in get_args(AlarmKind) else _bad_kind(a["kind"]),
                    float(a["value"]),
                    float(a["bound"]),
                    str(a["message"]),
                    str(a["suggestion"]),
                )
                for a in data.get("alarms", [])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed monitor status: {exc!r:.120}") from None
        return cls(**values)


def _bad_kind(value: Any) -> AlarmKind:
    raise ValueError(f"alarm kind: expected psi or metric, found {value!r:.40}")


# --------------------------------------------------------------------------- the monitor


class _Ring:
    """The last ``capacity`` values of a stream, in a fixed array (the oldest overwritten)."""

    def __init__(self, capacity: int, dtype: type) -> None:
        self._data: np.ndarray = np.zeros(capacity, dtype=dtype)
        self._next = 0
        self._size = 0

    def extend(self, values: np.ndarray) -> None:
        cap = len(self._data)
        values = values[-cap:]
        self._data[(self._next + np.arange(len(values))) % cap] = values
        self._next = (self._next + len(values)) % cap
        self._size = min(cap, self._size + len(values))

    def values(self) -> np.ndarray:
        """The values held, oldest first (a copy)."""
        if self._size < len(self._data):
            return self._data[: self._size].copy()
        return np.roll(self._data, -self._next)

    def __len__(self) -> int:
        return self._size


class Monitor:
    """Drift and accuracy of one served model, in bounded memory.

    Keeps the last ``spec.score_window`` scores and the last ``spec.label_window`` labelled
    (score, label) pairs in ring buffers, plus counters: memory does not grow with
    traffic. Not thread-safe: the scoring service calls it from one worker thread.

    Args:
        spec: Windows, minimum counts and bounds.
        reference: The served model at export (:meth:`Reference.from_manifest`).
    """

    def __init__(self, spec: MonitorSpec, reference: Reference) -> None:
        self.spec = spec
        self.reference = reference
        self._scores = _Ring(spec.score_window, np.float64)
        self._label_scores = _Ring(spec.label_window, np.float64)
        self._labels = _Ring(spec.label_window, np.int8)
        self.n_scored = 0
        self.n_labelled = 0
        self.n_positive = 0

    def __repr__(self) -> str:
        return (
            f"Monitor(scored={self.n_scored}, labelled={self.n_labelled}, "
            f"psi_bound={self.spec.psi_bound}, max_drop={self.spec.max_drop})"
        )

    def observe_scores(self, scores: ArrayLike) -> None:
        """Take the scores just served (probabilities in [0, 1]).

        Raises:
            ValueError: a score is not finite (nothing is taken).
        """
        s = _scores(scores, "observe_scores")
        self._scores.extend(s)
        self.n_scored += len(s)

    def observe_labels(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Take labels that arrived, each with the score its transaction was served.

        Raises:
            ValueError: lengths differ, a score is not finite, or a label is not 0 or 1
                (nothing is taken).
        """
        s = _scores(scores, "observe_labels")
        y = np.asarray(labels).reshape(-1)
        if len(y) != len(s):
            raise ValueError(
                f"observe_labels: expected one label per score, found {len(s)} scores and "
                f"{len(y)} labels"
            )
        if len(y) and not np.isin(y, (0, 1)).all():
            raise ValueError(
                f"observe_labels: expected labels 0 (legitimate) and 1 (fraud), found "
                f"{sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}"
            )
        self._label_scores.extend(s)
        self._labels.extend(y.astype(np.int8))
        self.n_labelled += len(y)
        self.n_positive += int(np.sum(y == 1))

    def status(self) -> MonitorStatus:
        """PSI, metric and flagged rate on the windows, and the alarms raised."""
        spec, ref = self.spec, self.reference
        recent = self._scores.values()
        value_psi = psi(ref.shares, ref.edges, recent) if len(recent) else None
        flagged = float(np.mean(recent >= ref.threshold)) if len(recent) else None
        labels = self._labels.values()
        positives = int(labels.sum())
        metric = None
        if positives:
            got = binary_metrics(labels, self._label_scores.values(), ref.threshold)[ref.metric]
            metric = _opt(got)
        alarms: list[Alarm] = []
        if value_psi is not None and len(recent) >= spec.min_scores and value_psi > spec.psi_bound:
            alarms.append(
                Alarm(
                    "psi",
                    value_psi,
                    spec.psi_bound,
                    f"the served model's scores have shifted: PSI {value_psi:.3f} of the last "
                    f"{len(recent)} scores against its {ref.scores or 'held-out'} test scores "
                    f"at export, above psi_bound {spec.psi_bound:g}; the site's transactions "
                    "no longer look like those it was trained and checked on",
                )
            )
        bound = None if ref.metric_value is None else ref.metric_value * (1.0 - spec.max_drop)
        enough = len(labels) >= spec.min_labels and positives >= spec.min_positives
        if metric is not None and bound is not None and enough and metric < bound:
            assert ref.metric_value is not None
            drop = 1.0 - metric / ref.metric_value
            alarms.append(
                Alarm(
                    "metric",
                    metric,
                    bound,
                    f"the served model's {ref.metric} fell to {metric:.4f} on the last "
                    f"{len(labels)} labelled transactions ({positives} fraud) from "
                    f"{ref.metric_value:.4f} at export, a drop of {drop:.1%} > max_drop "
                    f"{spec.max_drop:.1%}",
                )
            )
        return MonitorStatus(
            n_scored=self.n_scored,
            n_labelled=self.n_labelled,
            n_positive=self.n_positive,
            window_scores=len(recent),
            window_labels=len(labels),
            window_positives=positives,
            psi=value_psi,
            metric=ref.metric,
            metric_value=metric,
            reference_metric=ref.metric_value,
            flagged_rate=flagged,
            reference_flagged_rate=ref.flagged_rate,
            threshold=ref.threshold,
            psi_bound=spec.psi_bound,
            max_drop=spec.max_drop,
            alarms=tuple(alarms),
        )


# --------------------------------------------------------------------------- status file


def write_status(path: Path | str, status: MonitorStatus) -> None:
    """Write ``status`` as JSON to ``path`` atomically (readers never see half a file)."""
    from fedcore.storage import atomic_write_text

    text = json.dumps(status.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(Path(path), text + "\n")


def read_status(path: Path | str) -> MonitorStatus:
    """Read a status :func:`write_status` wrote.

    Raises:
        FileNotFoundError: there is no such file (no service has written one).
        ValueError: the file is not a monitor status (naming the file).
    """
    p = Path(path)
    try:
        return MonitorStatus.from_dict(json.loads(p.read_text()))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"{p}: not a monitor status ({exc}); the scoring service rewrites it within "
            "seconds, or delete it"
        ) from None
