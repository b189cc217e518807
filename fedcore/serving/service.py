"""A site's real-time scoring service (``fed-client serve``): the scorer, its drift monitor and counters, driven from one thread.

:class:`ScoringService` wraps one :class:`~fedcore.serving.context.ContextScorer` (the
exported model plus the site's transaction history) and its drift monitor;
:func:`fedcore.serving.api.build_app` puts it behind HTTP. The scorer is not thread-safe:
every call that touches it (scoring, labels, status, the model swap of a reload, closing)
runs on one worker thread, in arrival order, off the event loop (requests to score that
arrive while it is busy may be scored together: :meth:`ScoringService.score_many`). A
reload verifies the new export (manifest, size, sha256) and loads its model on another
thread first (where the scorer offers ``load_model`` and ``use``; else its ``reload`` loads
it on the worker thread) and swaps it in on the worker thread, so requests wait for the
swap only, and a model whose hash does not match its manifest never replaces the one being
served. The monitor's status is read at most every
:attr:`ServiceOptions.refresh_every_s` seconds after new observations: an alarm that starts
is logged (warning) and set in the metrics, and the status is written to
``STATE/serving/monitor.json`` at most every :attr:`ServiceOptions.status_every_s` seconds,
where the site's telemetry picks it up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from fedcore.export.manifest import (
    MANIFEST_NAME,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ExportManifest,
)
from fedcore.serving.context import ScoredBatch, ServingInputError
from fedcore.serving.metrics import ServiceMetrics, set_gauge
from fedcore.serving.model_info import (
    ModelInfo,
    manifest_time,
    model_info,
    newest_export,
    verified_manifest,
)

__all__ = [
    "ModelInfo",
    "RequestError",
    "ScoringService",
    "ServiceOptions",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Scorer(Protocol):
    """What the service needs of a scorer (:class:`fedcore.serving.context.ContextScorer`)."""

    @property
    def manifest(self) -> ExportManifest: ...

    @property
    def threshold(self) -> float: ...

    @property
    def history_size(self) -> int: ...

    def score(self, rows: Sequence[Any], *, append: bool = True) -> ScoredBatch: ...

    def reload(self, export_dir: Path) -> None: ...

    def record_label(self, tx_id: str, label: int) -> float | None: ...

    def flush(self) -> object: ...

    def close(self) -> None: ...


class MonitorLike(Protocol):
    """What the service needs of a drift monitor (:class:`fedcore.serving.monitor.Monitor`)."""

    def observe_scores(self, scores: np.ndarray) -> Any: ...

    def observe_labels(self, scores: np.ndarray, labels: np.ndarray) -> Any: ...

    def status(self) -> Any: ...


class RequestError(Exception):
    """A request the service refuses: its HTTP status and the message the client reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServiceOptions:
    """How the service bounds requests and reports.

    Attributes:
        max_batch: Most transactions (or labels) in one request; more gets 413.
        max_body_bytes: Largest request body read; more gets 413.
        status_every_s: Least seconds between two writes of the monitor status file.
        refresh_every_s: Least seconds between two looks at the monitor's alarms.
        reload_poll_s: Seconds between two looks for a newer export (0: never look).
        max_pending: Most requests waiting for the scorer at once; more get 503 (overload).
        coalesce: Score the requests that arrive while the scorer is busy together, in one
            call (as one batch), up to ``max_batch`` transactions.
        flush_every_s: Seconds between two writes of the appended rows and labels to the
            history database (they are also written when the service stops).
        status_path: File the monitor status is written to (``None``: not written).
    """

    max_batch: int = 1000
    max_body_bytes: int = 2 * 1024 * 1024
    status_every_s: float = 5.0
    refresh_every_s: float = 1.0
    reload_poll_s: float = 0.0
    flush_every_s: float = 1.0
    max_pending: int = 1000
    coalesce: bool = False
    status_path: Path | None = None

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1; found {self.max_pending}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; found {self.max_batch}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024; found {self.max_body_bytes}")
        for name in ("reload_poll_s", "status_every_s", "refresh_every_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; found {getattr(self, name)}")
        if self.flush_every_s <= 0:
            raise ValueError(f"flush_every_s must be > 0; found {self.flush_every_s}")


# -- the service -------------------------------------------------------------------------


@dataclass
class _MonitorView:
    """What the service last read from the monitor: the alarms raised and the status object."""

    raised: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    status: Any = None
    looked: float = 0.0
    written: float = -math.inf
    dirty: bool = False


class ScoringService:
    """The scorer, its monitor and the service's counters, driven from one worker thread.

    Args:
        scorer: The site's in-context scorer, opened on ``export_dir``.
        export_dir: The export folder being served.
        monitor_factory: Builds the drift monitor for a served manifest (called again after
            each reload, so the reference follows the model; it may return ``None`` for a
            manifest without a reference); ``None``: no monitor.
        state_dir: The site's state directory (where reloads look for newer exports).
        options: Request bounds and reporting intervals.
        metrics: Where to count (a new :class:`ServiceMetrics` by default).
        status_writer: Writes a monitor status to a file
            (:func:`fedcore.serving.monitor.write_status`); ``None``: no status file.
        status_dict: A monitor status as a JSON-ready dict, for ``/v1/status`` and the
            gauges (default: its ``to_dict()``).
    """

    def __init__(
        self,
        scorer: Scorer,
        export_dir: Path,
        *,
        monitor_factory: Callable[[ExportManifest], MonitorLike | None] | None = None,
        state_dir: Path | None = None,
        options: ServiceOptions | None = None,
        metrics: ServiceMetrics | None = None,
        status_writer: Callable[[Path, Any], None] | None = None,
        status_dict: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.scorer = scorer
        self.options = options or ServiceOptions()
        self.metrics = metrics or ServiceMetrics()
        self.state_dir = state_dir
        self.model = model_info(scorer, Path(export_dir))
        self._monitor_factory = monitor_factory
        self.monitor = monitor_factory(scorer.manifest) if monitor_factory else None
        self._status_writer = status_writer
        self._status_dict = status_dict or _status_as_dict
        self._view = _MonitorView()
        self._fields = _known_fields(scorer.manifest)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedcore-scorer")
        self._refused: dict[Path, float] = {}
        self._reload_lock = asyncio.Lock()  # one reload at a time (the poll, POST /v1/reload)
        self._closed = False
        self.close_error: Exception | None = None
        self._pending = 0
        self.started = time.time()
        self.scored = 0
        self.flagged = 0
        self._unflushed = False
        self._flushed_at = time.monotonic()
        self._publish_model()
        self._refresh(force=True)

    # -- calls on the worker thread ------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the service is stopping (or stopped): ``/readyz`` answers 503."""
        return self._closed

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread (the only one touching the scorer).

        Raises:
            RequestError: 503 while shutting down, or when ``max_pending`` calls already wait.
        """
        if self._closed:
            raise RequestError(503, "the service is shutting down; retry against another replica")
        if self._pending >= self.options.max_pending:
            raise RequestError(
                503,
                f"overloaded: {self._pending} requests already wait for the scorer; retry "
                "later, send fewer requests at once, or send transactions in batches",
            )
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        finally:
            self._pending -= 1

    def score(self, rows: list[dict[str, Any]], batch: bool, append: bool = True) -> dict[str, Any]:
        """Score ``rows`` in context, append them to the history; the answer's JSON body.

        With ``append=False`` the rows are scored only: not kept in the history, not seen by
        the monitor (a what-if score), and the answer says ``"appended": false``.

        Raises:
            RequestError: 422 when the scorer refuses a row (nothing is appended).
        """
        answer = self.score_many([(rows, batch)], append=append)[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer

    def score_many(
        self, requests: Sequence[tuple[list[dict[str, Any]], bool]], append: bool = True
    ) -> list[dict[str, Any] | RequestError]:
        """Score the rows of several requests in one scorer call, as one batch; each one's answer.

        Each transaction is scored in the context of the history and of the other requests'
        transactions. When the scorer refuses a row, each request is scored on its own, so
        that only the request holding it gets the error (a :class:`RequestError`, 422).
        """
        rows = [row for request, _ in requests for row in request]
        try:
            scored = self.scorer.score(rows, append=append)
        except ServingInputError as exc:
            if len(requests) == 1:
                return [RequestError(422, str(exc))]
            return [self.score_many([request], append)[0] for request in requests]
        flagged = np.asarray(scored.flagged, dtype=bool)
        scores = np.asarray(scored.score, dtype=np.float64)
        self._unflushed = self._unflushed or append
        n_flagged = int(flagged.sum())
        self.scored += len(scores)
        self.flagged += n_flagged
        self.metrics.observe_scored(len(scores), n_flagged)
        self.metrics.history_rows.set(self.scorer.history_size)
        if self.monitor is not None and append:
            self.monitor.observe_scores(scores)
            self._view.dirty = True
            self._refresh()
        model, ids, values, flags = self.model, scored.tx_id, scores.tolist(), flagged.tolist()
        answers: list[dict[str, Any] | RequestError] = []
        start = 0
        for request, batch in requests:
            end = start + len(request)
            results = [
                {"tx_id": ids[i], "score": values[i], "flagged": flags[i]}
                for i in range(start, end)
            ]
            head: dict[str, Any] = {
                "model": model.short_sha,
                "run": model.run,
                "threshold": model.threshold,
            }
            ignored = sorted({k for row in request for k in row if k not in self._fields})
            if ignored:
                head["ignored_fields"] = ignored[:20]
            if not append:
                head["appended"] = False
            answers.append(head | {"results": results} if batch else results[0] | head)
            start = end
        return answers

    def feedback(self, ids: list[str], labels: list[int]) -> dict[str, Any]:
        """Store labels, feed the monitor with the scores they were served; the answer's body."""
        known_scores: list[float] = []
        known_labels: list[int] = []
        unknown: list[str] = []
        self._unflushed = True
        for tx_id, label in zip(ids, labels, strict=True):
            served = self.scorer.record_label(tx_id, label)
            if served is None:
                unknown.append(tx_id)
            else:
                known_scores.append(served)
                known_labels.append(label)
                self.metrics.labels.labels(label=str(label)).inc()
        if unknown:
            self.metrics.unknown_labels.inc(len(unknown))
        if self.monitor is not None and known_scores:
            self.monitor.observe_labels(np.asarray(known_scores), np.asarray(known_labels))
            self._view.dirty = True
            self._refresh()
        out: dict[str, Any] = {"recorded": len(known_scores), "unknown": len(unknown)}
        if unknown:
            out["unknown_tx_ids"] = unknown[:20]
        return out

    def status(self) -> dict[str, Any]:
        """``/v1/status``: the model, history, counts and the monitor's status."""
        self._refresh(force=True)
        view = self._view
        monitor = self._status_dict(view.status) if view.status is not None else None
        return {
            "model": self.model.to_dict(),
            "history_rows": self.scorer.history_size,
            "uptime_s": round(time.time() - self.started, 3),
            "scored": self.scored,
            "flagged": self.flagged,
            "alarms": sorted(view.raised),
            "monitor": monitor,
        }

    def swap(self, export_dir: Path, loaded: Any = None) -> ModelInfo:
        """Make the scorer serve ``export_dir`` and follow it with the monitor.

        ``loaded`` is the model the scorer's ``load_model`` loaded beforehand (off this
        thread), handed to its ``use``; without it the scorer's ``reload`` loads it here.
        """
        if loaded is not None:
            self.scorer.use(loaded)  # type: ignore[attr-defined]
        else:
            self.scorer.reload(export_dir)
        manifest = self.scorer.manifest
        self.model = model_info(self.scorer, export_dir)
        self._fields = _known_fields(manifest)
        if self._monitor_factory is not None:
            self.monitor = self._monitor_factory(manifest)
            self._view = _MonitorView()
        self._publish_model()
        self._refresh(force=True)
        return self.model

    def tick(self) -> None:
        """Housekeeping: write appended rows and labels when due, and the monitor's status."""
        now = time.monotonic()
        if self._unflushed and now - self._flushed_at >= self.options.flush_every_s:
            self._unflushed = False
            self._flushed_at = now
            self.scorer.flush()
        self._refresh()

    def close(self) -> None:
        """Write the monitor status a last time, close the scorer (it flushes the history).

        Idempotent. A failure (a full disk, a history database gone) is logged and kept in
        :attr:`close_error` rather than raised, so that the caller can report it.
        """
        if self._closed:
            return
        self._closed = True
        self.metrics.up.set(0)
        try:
            self._refresh(force=True, write=True)
        except Exception:
            logger.exception("could not write the monitor status at shutdown")
        try:
            self.scorer.close()  # flushes the appended rows and labels
        except Exception as exc:
            logger.exception("could not write the history at shutdown")
            self.close_error = exc

    def _publish_model(self) -> None:
        m = self.model
        self.metrics.set_model(
            sha256=m.short_sha,
            run=m.run,
            path_taken=m.path_taken,
            provider=m.provider,
            threshold=m.threshold,
        )
        self.metrics.history_rows.set(self.scorer.history_size)

    def _refresh(self, *, force: bool = False, write: bool = False) -> None:
        """Read the monitor's status (at most every ``refresh_every_s``), log new alarms, write it."""
        view, now = self._view, time.monotonic()
        if self.monitor is None or not (
            force or (view.dirty and now - view.looked >= self.options.refresh_every_s)
        ):
            return
        status = self.monitor.status()
        view.status, view.looked, view.dirty = status, now, False
        raised = {str(getattr(a, "name", a)) for a in getattr(status, "alarms", ())}
        for alarm in getattr(status, "alarms", ()):
            name = str(getattr(alarm, "name", alarm))
            if name not in view.raised:
                logger.warning(
                    "alarm raised: %s (model %s)", _alarm_text(alarm), self.model.short_sha
                )
        for name in view.raised - raised:
            logger.warning("alarm cleared: %s (model %s)", name, self.model.short_sha)
        view.known |= raised
        view.raised = raised
        self.metrics.set_alarms(raised, view.known)
        summary = self._status_dict(status)
        set_gauge(self.metrics.psi, _number(summary.get("psi")))
        set_gauge(self.metrics.pr_auc, _number(summary.get("pr_auc")))
        self.metrics.retrain.set(1 if summary.get("retrain") else 0)
        path = self.options.status_path
        if (
            path is not None
            and self._status_writer is not None
            and (write or now - view.written >= self.options.status_every_s)
        ):
            try:
                self._status_writer(path, status)
                view.written = now
            except OSError as exc:
                logger.warning("cannot write the monitor status to %s: %s", path, exc)

    # -- reloads -------------------------------------------------------------------------

    async def reload(self, export_dir: Path) -> ModelInfo:
        """Verify ``export_dir`` off the worker thread, then swap it in on it.

        Raises:
            RequestError: 409 when the export is refused (missing or bad manifest, a model
                whose size or sha256 differs from it); the old model keeps serving.
        """
        export_dir = Path(export_dir).resolve()
        async with self._reload_lock:
            return await self._reload(export_dir)

    def _load(self, export_dir: Path) -> Any:
        """Verify an export; load its model too when the scorer can load one beside the served
        one (``load_model``, then ``use`` to swap), so that only the swap waits for scoring."""
        verified_manifest(export_dir)
        load = getattr(self.scorer, "load_model", None)
        return load(export_dir) if callable(load) and hasattr(self.scorer, "use") else None

    async def _reload(self, export_dir: Path) -> ModelInfo:
        try:
            loaded = await asyncio.to_thread(self._load, export_dir)
            info = await self.call(self.swap, export_dir, loaded)
        except RequestError:
            raise
        except Exception as exc:  # ExportError, ValueError, OSError, the scorer's own refusals
            self.metrics.reloads.labels(result="refused").inc()
            self._refused[export_dir] = manifest_time(export_dir)
            logger.warning(
                "refused to serve the export %s: %s; still serving %s (sha256 %s)",
                export_dir,
                exc,
                self.model.export_dir,
                self.model.short_sha,
            )
            raise RequestError(
                409,
                f"refused the export {export_dir}: {exc}; still serving run {self.model.run} "
                f"(sha256 {self.model.short_sha})",
            ) from None
        self.metrics.reloads.labels(result="ok").inc()
        logger.info(
            "now serving %s (sha256 %s, %s, threshold %.4g)",
            info.export_dir,
            info.short_sha,
            info.path_taken,
            info.threshold,
        )
        return info

    async def reload_newest(self) -> ModelInfo | None:
        """Reload the newest export under ``STATE/export`` if it is newer than the one served.

        An export refused before is tried again only once its manifest changes. Returns the
        new model, or ``None`` when there was nothing newer.

        Raises:
            RequestError: as :meth:`reload`; 404 without a state directory or an export.
        """
        if self.state_dir is None:
            raise RequestError(404, "no state directory to look for exports in")
        newest = await asyncio.to_thread(newest_export, self.state_dir)
        if newest is None:
            raise RequestError(
                404, f"no export with a {MANIFEST_NAME} under {self.state_dir / 'export'}"
            )
        if newest == self.model.export_dir.resolve() or manifest_time(newest) <= manifest_time(
            self.model.export_dir
        ):
            return None  # the served export, or one older than it (--model named an older one)
        if newest in self._refused and self._refused[newest] == manifest_time(newest):
            return None  # refused before, and its manifest has not changed since
        return await self.reload(newest)

    async def poll(self) -> None:
        """Look for a newer export every ``reload_poll_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.options.reload_poll_s)
            try:
                await self.reload_newest()
            except RequestError as exc:
                if exc.status != 409:
                    logger.debug("reload poll: %s", exc.message)
            except Exception:  # never let the poll die: log and look again later
                logger.exception("reload poll failed")

    async def housekeeping(self) -> None:
        """:meth:`tick` on the worker thread every second until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.call(self.tick)
            except RequestError:  # shutting down
                return
            except Exception:  # a full disk must not stop the service: log and try again later
                logger.exception("writing the history or the monitor status failed")

    async def aclose(self) -> None:
        """:meth:`close` on the worker thread, then stop the worker."""
        if not self._closed:
            await asyncio.get_running_loop().run_in_executor(self._worker, self.close)
        self._worker.shutdown(wait=True)

    def close_now(self) -> None:
        """:meth:`close` from a thread outside the event loop (the command, after serving)."""
        if not self._closed:
            self._worker.submit(self.close).result()
        self._worker.shutdown(wait=True)


def _known_fields(manifest: ExportManifest) -> frozenset[str]:
    """Transaction fields the model reads: the base ones, the optional ones, the task features."""
    features = {c.split(".", 1)[1] for c in manifest.input_columns if c.startswith("features.")}
    return frozenset({*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *features})


def _status_as_dict(status: Any) -> dict[str, Any]:
    """A monitor status as a JSON-ready dict (its ``to_dict()``, else its ``summary()``)."""
    for name in ("to_dict", "summary"):
        fn = getattr(status, name, None)
        if callable(fn):
            value = fn()
            if isinstance(value, dict):
                return value
    return {"summary": str(status)}


def _alarm_text(alarm: Any) -> str:
    message = getattr(alarm, "message", None)
    name = str(getattr(alarm, "name", alarm))
    return f"{name}: {message}" if message else name


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
