"""The coordinator's Prometheus metrics: round records (``OUT/rounds.jsonl`` rows) in, a registry out.

:class:`CoordinatorMetrics` owns its own :class:`prometheus_client.CollectorRegistry` (never
the process-wide default) and is fed one round record at a time with
:meth:`CoordinatorMetrics.observe`; the service phase (starting, waiting for sites, run
submitted, ...) is set with :meth:`CoordinatorMetrics.set_phase` and decides readiness. Nothing
here does I/O: :mod:`.health` serves the registry over HTTP.

Label values come from small fixed sets only: a rejection's free-text reason is reduced to
one of :data:`REJECT_REASONS` by :func:`reason_label`, and site ids never become labels.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "PHASES",
    "READY_PHASES",
    "REJECT_REASONS",
    "ROUND_SECONDS_BUCKETS",
    "CoordinatorMetrics",
    "Phase",
    "reason_label",
]

Phase = Literal["starting", "waiting_sites", "submitting", "running", "completed", "failed"]
"""Where the coordinator service is: its SuperLink is starting, it waits for the sites, it
submits the run, the run is running, or it ended (completed or failed; the service may go on
serving)."""

PHASES: Final[tuple[Phase, ...]] = (
    "starting",
    "waiting_sites",
    "submitting",
    "running",
    "completed",
    "failed",
)

READY_PHASES: Final[frozenset[Phase]] = frozenset({"running", "completed", "failed"})
"""Phases in which ``/readyz`` answers 200: the SuperLink serves and the run was submitted."""

_NOT_READY: Final[Mapping[Phase, str]] = {
    "starting": "the SuperLink is starting",
    "waiting_sites": "waiting for the sites to connect",
    "submitting": "submitting the run",
}

REJECT_REASONS: Final[tuple[str, ...]] = (
    "site_error",
    "no_reply",
    "not_connected",
    "malformed",
    "signature",
    "telemetry",
    "invalid_update",
    "other",
)
"""The ``reason`` label values of ``fedcore_rejected_replies_total``."""

#: Round wall times, seconds: a tiny test round takes seconds, a hospital round up to an hour.
ROUND_SECONDS_BUCKETS: Final[tuple[float, ...]] = (
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    math.inf,
)

# Text a reason starts with -> its label (first match wins; compared in lower case).
_PREFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("not connected", "not_connected"),  # a scenario site that answered no telemetry at all
    ("telemetry: not connected", "not_connected"),
    ("telemetry:", "telemetry"),
    ("site error", "site_error"),
    ("no reply", "no_reply"),
    ("malformed", "malformed"),
    ("missing arrays", "invalid_update"),
    ("unexpected arrays", "invalid_update"),
    ("array ", "invalid_update"),
    ("num_examples", "invalid_update"),
    ("training loss", "invalid_update"),
    ("sites disagree", "invalid_update"),
)
# Text a reason contains -> its label (the reply's authenticity: coordinator/auth.py).
_CONTAINS: Final[tuple[tuple[str, str], ...]] = (
    ("signature", "signature"),
    ("not signed", "signature"),
    ("node key", "signature"),
    ("reply names site", "signature"),
)


def reason_label(reason: str) -> str:
    """The ``reason`` label for a rejection's free text: one of :data:`REJECT_REASONS`.

    Examples: ``"no reply within 120s"`` -> ``no_reply``; ``"site error: CUDA OOM"`` ->
    ``site_error``; ``"not connected: no telemetry this round"`` -> ``not_connected``;
    ``"telemetry: malformed telemetry: ..."`` -> ``telemetry``;
    ``"reply is not signed (...)"`` -> ``signature``; anything unknown -> ``other``.
    """
    text = reason.strip().lower()
    for prefix, label in _PREFIXES:
        if text.startswith(prefix):
            return label
    for part, label in _CONTAINS:
        if part in text:
            return label
    return "other"


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class CoordinatorMetrics:
    """The metrics of one ``fed-coordinator start`` service, in a registry of their own.

    Exposed (``/metrics``): ``fedcore_up``, ``fedcore_run_status{phase}`` (1 for the current
    phase), ``fedcore_rounds_completed_total``, ``fedcore_last_round``,
    ``fedcore_round_seconds`` (histogram, :data:`ROUND_SECONDS_BUCKETS`),
    ``fedcore_round_loss``, ``fedcore_round_pr_auc``, ``fedcore_sites_connected``,
    ``fedcore_sites_candidates``, ``fedcore_sites_chosen``, ``fedcore_sites_aggregated``,
    ``fedcore_rejected_replies_total{reason}``, ``fedcore_bytes_up_total``,
    ``fedcore_bytes_down_total``, ``fedcore_deadline_misses_total`` and, once a round
    reports one (differential privacy), ``fedcore_privacy_epsilon``.

    Thread-safe: the service feeds it while the HTTP server reads it.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lock = threading.Lock()
        self._phase: Phase = "starting"
        self._up = Gauge("fedcore_up", "1 while the coordinator service runs.", registry=r)
        self._status = Gauge(
            "fedcore_run_status",
            "1 for the coordinator's current phase, 0 for the others.",
            ["phase"],
            registry=r,
        )
        self._rounds = Counter(
            "fedcore_rounds_completed", "Rounds the run has completed.", registry=r
        )
        self._last_round = Gauge(
            "fedcore_last_round", "Number of the last completed round.", registry=r
        )
        self._seconds = Histogram(
            "fedcore_round_seconds",
            "Wall seconds a round took at the coordinator.",
            buckets=ROUND_SECONDS_BUCKETS,
            registry=r,
        )
        self._loss = Gauge(
            "fedcore_round_loss",
            "Mean training loss of the last round's contributing sites (NaN: none).",
            registry=r,
        )
        self._pr_auc = Gauge(
            "fedcore_round_pr_auc",
            "Pooled PR-AUC of the global model after the last round (NaN: not evaluated).",
            registry=r,
        )
        self._connected = Gauge(
            "fedcore_sites_connected",
            "Sites connected: while waiting, the scenario sites online; then the sites that "
            "answered the last round's telemetry.",
            registry=r,
        )
        self._candidates = Gauge(
            "fedcore_sites_candidates",
            "Sites that answered the last round's telemetry (candidates for training).",
            registry=r,
        )
        self._chosen = Gauge(
            "fedcore_sites_chosen", "Sites the scheduler chose for the last round.", registry=r
        )
        self._aggregated = Gauge(
            "fedcore_sites_aggregated",
            "Sites whose update entered the last round's aggregate.",
            registry=r,
        )
        self._rejected = Counter(
            "fedcore_rejected_replies",
            "Sites left out of a round, by kind of reason (a site refused for reasons of two "
            "kinds counts once under each).",
            ["reason"],
            registry=r,
        )
        self._bytes_up = Counter(
            "fedcore_bytes_up", "Bytes the sites sent to the coordinator.", registry=r
        )
        self._bytes_down = Counter(
            "fedcore_bytes_down", "Bytes the coordinator sent to the sites.", registry=r
        )
        self._deadline_misses = Counter(
            "fedcore_deadline_misses",
            "Rounds whose slowest chosen site took longer than the scheduler's deadline.",
            registry=r,
        )
        self._epsilon: Gauge | None = None
        for reason in REJECT_REASONS:
            self._rejected.labels(reason=reason)
        self._up.set(1)
        self._show_phase()

    # ------------------------------------------------------------------ phase and readiness

    @property
    def phase(self) -> Phase:
        """The service's current phase."""
        return self._phase

    def set_phase(self, phase: Phase) -> None:
        """Record where the service is; ``/readyz`` follows (see :data:`READY_PHASES`).

        Raises:
            ValueError: ``phase`` is not one of :data:`PHASES`.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}; found {phase!r}")
        with self._lock:
            self._phase = phase
            self._show_phase()

    def readiness(self) -> tuple[bool, str]:
        """``(ready, why)``: ready once the SuperLink serves and the run was submitted."""
        phase = self._phase
        if phase in READY_PHASES:
            return True, f"run {phase}"
        return False, _NOT_READY.get(phase, phase)

    def _show_phase(self) -> None:
        for phase in PHASES:
            self._status.labels(phase=phase).set(1 if phase == self._phase else 0)

    def set_down(self) -> None:
        """The service is stopping: ``fedcore_up`` 0."""
        self._up.set(0)

    def set_connected(self, sites: int) -> None:
        """The number of sites connected (while the service waits for them)."""
        self._connected.set(max(0, sites))

    # ------------------------------------------------------------------ round records

    def observe(self, record: Mapping[str, Any]) -> None:
        """Account one round record (a row of ``OUT/rounds.jsonl``, :class:`~fedcore.records.RoundRecord`).

        Missing or malformed fields are skipped (a row from an older run must not stop the
        service); counters never go down.
        """
        with self._lock:
            self._rounds.inc()
            round_no = _number(record.get("round"))
            if round_no is not None:
                self._last_round.set(round_no)
            seconds = _number(record.get("seconds"))
            if seconds is not None and seconds >= 0:
                self._seconds.observe(seconds)
            for key, gauge in (("loss", self._loss), ("pr_auc", self._pr_auc)):
                value = _number(record.get(key))
                gauge.set(math.nan if value is None else value)
            sites = record.get("sites")
            if isinstance(sites, list):
                self._aggregated.set(len(sites))
            for key, counter in (("bytes_up", self._bytes_up), ("bytes_down", self._bytes_down)):
                amount = _number(record.get(key))
                if amount is not None and amount > 0:
                    counter.inc(amount)
            rejected = record.get("rejected")
            if isinstance(rejected, Mapping):
                for reasons in rejected.values():
                    texts = [reasons] if isinstance(reasons, str) else reasons
                    if not isinstance(texts, list):
                        continue
                    for label in sorted({reason_label(str(t)) for t in texts} or {"other"}):
                        self._rejected.labels(reason=label).inc()
            schedule = record.get("schedule")
            if isinstance(schedule, Mapping):
                self._observe_schedule(schedule)
            epsilon = _number(record.get("epsilon"))
            if epsilon is not None:
                if self._epsilon is None:
                    self._epsilon = Gauge(
                        "fedcore_privacy_epsilon",
                        "Differential privacy budget spent so far (epsilon).",
                        registry=self.registry,
                    )
                self._epsilon.set(epsilon)

    def _observe_schedule(self, schedule: Mapping[str, Any]) -> None:
        chosen = _number(schedule.get("chosen"))
        if chosen is not None:
            self._chosen.set(chosen)
        candidates = _number(schedule.get("candidates"))
        if candidates is not None:
            self._candidates.set(candidates)
            self._connected.set(candidates)
        deadline = _number(schedule.get("deadline_s"))
        measured = _number(schedule.get("measured_max_s"))
        if deadline is not None and deadline > 0 and measured is not None and measured > deadline:
            self._deadline_misses.inc()
