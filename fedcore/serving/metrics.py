"""The scoring service's Prometheus metrics: requests, latency, scores, drift and model, in a registry of its own.

:class:`ServiceMetrics` owns a :class:`prometheus_client.CollectorRegistry` (never the
process-wide default), so that two services in one process (tests) do not share counters.
Label values come from small fixed sets only: the endpoint label is one of :data:`ENDPOINTS`
(``other`` for any other path), the status code is a number, and transaction ids, accounts or
alarm messages never become labels. Nothing here does I/O: ``fedcore.serving.service`` serves
the registry at ``/metrics``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "ENDPOINTS",
    "LATENCY_BUCKETS",
    "FLAGGED_WINDOW",
    "ServiceMetrics",
    "endpoint_label",
]

ENDPOINTS: Final[frozenset[str]] = frozenset(
    {
        "/v1/score",
        "/v1/feedback",
        "/v1/status",
        "/v1/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    }
)
"""Paths counted under their own ``endpoint`` label; every other path is ``other``."""

#: Request latency, seconds: fine between 1 and 100 ms, where a scoring call lands.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    math.inf,
)

FLAGGED_WINDOW: Final[int] = 10_000
"""Transactions over which ``fedcore_serving_flagged_rate`` is taken (the most recent ones)."""


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path: the path itself if known, else ``other``."""
    return path if path in ENDPOINTS else "other"


class ServiceMetrics:
    """Counters and gauges of one scoring service.

    Metric names (all prefixed ``fedcore_serving_``): ``requests_total{endpoint,code}``,
    ``request_seconds{endpoint}`` (histogram, :data:`LATENCY_BUCKETS`),
    ``transactions_scored_total``, ``transactions_flagged_total``, ``flagged_rate`` (over the
    last :data:`FLAGGED_WINDOW` scored), ``labels_total{label}``, ``unknown_labels_total``,
    ``psi``, ``pr_auc``, ``alarm{alarm}`` (1 while raised), ``alarms`` (how many are raised),
    ``retrain_suggested``, ``model_info{sha256,run,path_taken,provider}``, ``threshold``,
    ``history_rows``, ``reloads_total{result}`` (``ok`` or ``refused``), ``up``.

    Args:
        registry: Registry to register in; a new one by default.
        alarm_names: Alarms the monitor can raise, shown at 0 from the start (others
            appear when first raised).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, alarm_names: Sequence[str] = ()
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fedcore_serving_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "fedcore_serving_request_seconds",
            "Time from a request's arrival to its answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.scored = Counter(
            "fedcore_serving_transactions_scored", "Transactions scored", registry=r
        )
        self.flagged = Counter(
            "fedcore_serving_transactions_flagged",
            "Transactions scored at or above the threshold",
            registry=r,
        )
        self.flagged_rate = Gauge(
            "fedcore_serving_flagged_rate",
            f"Share of the last {FLAGGED_WINDOW} scored transactions that were flagged",
            registry=r,
        )
        self.labels = Counter(
            "fedcore_serving_labels", "Labels received by /v1/feedback", ["label"], registry=r
        )
        self.unknown_labels = Counter(
            "fedcore_serving_unknown_labels",
            "Labels for a tx_id this service never scored (or no longer holds)",
            registry=r,
        )
        self.psi = Gauge(
            "fedcore_serving_psi",
            "Population stability index of recent scores against the export's reference",
            registry=r,
        )
        self.pr_auc = Gauge(
            "fedcore_serving_pr_auc",
            "PR-AUC over the labelled window (NaN until labels arrive)",
            registry=r,
        )
        self.alarm = Gauge(
            "fedcore_serving_alarm", "1 while the named alarm is raised", ["alarm"], registry=r
        )
        self.alarms = Gauge("fedcore_serving_alarms", "Alarms raised now", registry=r)
        self.retrain = Gauge(
            "fedcore_serving_retrain_suggested",
            "1 while the monitor suggests retraining",
            registry=r,
        )
        self.model_info = Gauge(
            "fedcore_serving_model_info",
            "The served model (value 1): its sha256 prefix, export run, path taken, provider",
            ["sha256", "run", "path_taken", "provider"],
            registry=r,
        )
        self.threshold = Gauge(
            "fedcore_serving_threshold", "Score at which a transaction is flagged", registry=r
        )
        self.history_rows = Gauge(
            "fedcore_serving_history_rows", "Transactions in the scoring history", registry=r
        )
        self.reloads = Counter(
            "fedcore_serving_reloads", "Model reloads, by result", ["result"], registry=r
        )
        self.up = Gauge("fedcore_serving_up", "1 while a model is loaded and served", registry=r)
        self.psi.set(math.nan)
        self.pr_auc.set(math.nan)
        for result in ("ok", "refused"):
            self.reloads.labels(result=result)
        for name in alarm_names:
            self.alarm.labels(alarm=name).set(0)
        self.alarms.set(0)
        self._window: deque[tuple[int, int]] = deque()
        self._window_n = 0
        self._window_flagged = 0
        self._lock = threading.Lock()

    def observe_request(self, path: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        endpoint = endpoint_label(path)
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_scored(self, n: int, flagged: int) -> None:
        """Count ``n`` scored transactions of which ``flagged`` were flagged; update the rate."""
        if n <= 0:
            return
        self.scored.inc(n)
        if flagged:
            self.flagged.inc(flagged)
        with self._lock:
            self._window.append((n, flagged))
            self._window_n += n
            self._window_flagged += flagged
            while self._window_n - self._window[0][0] >= FLAGGED_WINDOW:
                old_n, old_flagged = self._window.popleft()
                self._window_n -= old_n
                self._window_flagged -= old_flagged
            rate = self._window_flagged / self._window_n
        self.flagged_rate.set(rate)

    def set_model(
        self, *, sha256: str, run: str, path_taken: str, provider: str, threshold: float
    ) -> None:
        """Show the served model in ``model_info`` (only it) and its threshold."""
        self.model_info.clear()
        self.model_info.labels(
            sha256=sha256, run=run, path_taken=path_taken, provider=provider
        ).set(1)
        self.threshold.set(threshold)
        self.up.set(1)

    def set_alarms(self, raised: set[str], known: set[str]) -> None:
        """Set ``alarm{alarm}`` to 1 for each raised alarm and 0 for the others seen so far."""
        for name in known | raised:
            self.alarm.labels(alarm=name).set(1 if name in raised else 0)
        self.alarms.set(len(raised))


def _finite_or_nan(value: float | None) -> float:
    return math.nan if value is None or not math.isfinite(value) else float(value)


def set_gauge(gauge: Gauge, value: float | None) -> None:
    """Set ``gauge`` to ``value``, NaN when it is ``None`` or not finite."""
    gauge.set(_finite_or_nan(value))
