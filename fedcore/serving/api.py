"""The HTTP face of a site's scoring service: strict JSON request parsing and the FastAPI app around a ScoringService.

Requests are parsed by hand (no per-request pydantic model, which costs on the hot path): a
body larger than :attr:`~fedcore.serving.service.ServiceOptions.max_body_bytes` gets 413, a
body that is not UTF-8 JSON 400, NaN, Infinity and numbers beyond float range 400, nesting
too deep 400, a content type other than JSON 415, a batch over
:attr:`~fedcore.serving.service.ServiceOptions.max_batch` 413, an empty batch or a value of
the wrong shape 422, a transaction the scorer refuses 422 (its message names the row, field
and value). Every error answers ``{"error": "..."}`` saying what was expected, what was found
and how to fix it; nothing a client sends reaches the scorer unchecked or crashes the service.
Fields of a transaction that the model does not read are ignored and named in the answer
(``ignored_fields``), so that a client's typo shows without refusing its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import re
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedcore.serving.context import MAX_ID_LENGTH
from fedcore.serving.metrics import ServiceMetrics
from fedcore.serving.service import RequestError, ScoringService

__all__ = ["build_app", "parse_json", "serve_on"]

logger = logging.getLogger(__name__)

# -- request bodies ----------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(
        f"found {name}, which is not a JSON number; expected finite numbers (send null or "
        "leave the field out where a value is missing)"
    )


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(
            f"found the number {text[:40]}, beyond float range; expected finite numbers"
        )
    return value


def _parse_int(text: str) -> int | float:
    if len(text) > 19:  # beyond int64: a float keeps the magnitude, or is refused when huge
        return _parse_float(text)
    return int(text)


# a \uD800-\uDFFF escape, or a surrogate encoded as UTF-8 bytes (json.loads decodes bytes
# with "surrogatepass", so those pass as text): either may leave a lone surrogate
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _lone_surrogate(value: Any, depth: int = 0) -> bool:
    """Whether a parsed JSON value holds a string with a lone UTF-16 surrogate (not encodable)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if depth > 64:
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v, depth + 1) for v in value)
    return False


def parse_json(body: bytes) -> Any:
    """Decode a request body as strict JSON.

    Raises:
        RequestError: 400 for an empty body, text that is not UTF-8 JSON, NaN or Infinity,
            numbers beyond float range, nesting too deep, or strings that are not Unicode.
    """
    if not body.strip():
        raise RequestError(400, "empty body: expected a JSON object; fix: send the JSON document")
    try:
        value = json.loads(
            body,
            parse_constant=_refuse_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except RecursionError:
        raise RequestError(
            400, "the JSON document is nested too deeply: expected an object of transactions"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, refused numbers
        raise RequestError(400, f"the body is not valid JSON: {_clip(str(exc))}") from None
    if _SURROGATE.search(body) and _lone_surrogate(value):
        raise RequestError(
            400,
            "a string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair, "
            "or such a code point encoded in UTF-8), "
            "which is not text; expected valid Unicode strings",
        )
    return value


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _found(value: Any) -> str:
    """A short description of a JSON value for a message: its type and a clipped repr."""
    kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )
    return f"{kind} {_clip(repr(value), 60)}" if value is not None else kind


def _items(doc: Any, key: str, what: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The objects of a request: ``doc`` itself, or the array ``doc[key]``; and whether a batch."""
    if not isinstance(doc, dict):
        raise RequestError(
            422,
            f"expected a JSON object (one {what}) or {{{json.dumps(key)}: [...]}} (a batch); "
            f"found {_found(doc)}",
        )
    if key not in doc:
        return [doc], False
    batch = doc[key]
    if not isinstance(batch, list):
        raise RequestError(
            422, f"{json.dumps(key)} must be an array of {what} objects; found {_found(batch)}"
        )
    if not batch:
        raise RequestError(422, f"{json.dumps(key)} is empty: expected 1 to {limit} {what} objects")
    if len(batch) > limit:
        raise RequestError(
            413,
            f"{len(batch)} {what} objects in one request; at most {limit} are taken: split the "
            "batch into several requests",
        )
    for i, item in enumerate(batch):
        if not isinstance(item, dict):
            raise RequestError(422, f"{key}[{i}]: expected a {what} object; found {_found(item)}")
    return batch, True


def _labels(items: list[dict[str, Any]], batch: bool) -> tuple[list[str], list[int]]:
    """Each feedback item's ``tx_id`` and ``label`` (0 or 1), or 422 naming the bad one."""
    ids: list[str] = []
    labels: list[int] = []
    for i, item in enumerate(items):
        where = f"labels[{i}]" if batch else "the body"
        tx_id, label = item.get("tx_id"), item.get("label")
        if not isinstance(tx_id, str) or not tx_id or len(tx_id) > MAX_ID_LENGTH:
            raise RequestError(
                422,
                f"{where}: tx_id must be a non-empty string of at most {MAX_ID_LENGTH} "
                f"characters (the id a score was served for); found {_found(tx_id)}",
            )
        if type(label) is not int or label not in (0, 1):
            raise RequestError(
                422, f"{where}: label must be 0 (legitimate) or 1 (fraud); found {_found(label)}"
            )
        ids.append(tx_id)
        labels.append(label)
    return ids, labels


# -- HTTP --------------------------------------------------------------------------------


def _json(status: int, body: Mapping[str, Any]) -> Response:
    return Response(
        json.dumps(body, allow_nan=False, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
    )


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


class _Timing:
    """ASGI middleware: counts each answered request and its latency in the service metrics."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = 500

        async def send_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope.get("path", ""), code, time.perf_counter() - start)


_JSON_TYPES = ("application/json", "text/json")


async def _body(request: Request, limit: int) -> Any:
    """The request's JSON document: content type, size (413 beyond ``limit``) and syntax checked."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype and ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise RequestError(
            415,
            f"expected Content-Type: application/json; found {_clip(ctype, 80)!r}; fix: send "
            "the body as JSON with that header (curl: -H 'Content-Type: application/json')",
        )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestError(
            413, f"body of {length} bytes; at most {limit} are read: send smaller batches"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413, f"body over {limit} bytes; at most {limit} are read: send smaller batches"
            )
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _append(request: Request) -> bool:
    """The ``append`` query parameter of ``/v1/score`` (default true)."""
    value = request.query_params.get("append", "true").strip().lower()
    if value not in ("true", "1", "false", "0"):
        raise RequestError(
            422,
            f"query parameter append must be true or false; found {_clip(value, 40)!r} "
            "(append=false scores without keeping the transactions)",
        )
    return value in ("true", "1")


class _Coalescer:
    """Requests to score that arrive while the scorer is busy wait here, then go in one call.

    The first request of a quiet moment is scored at once; those that arrive meanwhile are
    scored together when the scorer is free (up to ``max_batch`` transactions a call), each
    one answered on its own (:meth:`ScoringService.score_many`). Under load this turns many
    small scorer calls, each with its fixed cost, into few larger ones.
    """

    def __init__(self, service: ScoringService) -> None:
        self.service = service
        self.waiting: deque[tuple[list[dict[str, Any]], bool, asyncio.Future[Any]]] = deque()
        self.drain: asyncio.Task[None] | None = None

    async def score(self, rows: list[dict[str, Any]], batch: bool) -> dict[str, Any]:
        """The answer to one request, scored with those waiting beside it."""
        limit = self.service.options.max_pending
        if len(self.waiting) >= limit:
            raise RequestError(
                503,
                f"overloaded: {limit} requests already wait for the scorer; retry later, send "
                "fewer requests at once, or send transactions in batches",
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((rows, batch, future))
        if self.drain is None or self.drain.done():
            self.drain = asyncio.create_task(self._drain())
        answer = await future
        if isinstance(answer, RequestError):
            raise answer
        return answer  # type: ignore[no-any-return]

    async def _drain(self) -> None:
        limit = self.service.options.max_batch
        while self.waiting:
            taken = [self.waiting.popleft()]
            size = len(taken[0][0])
            while self.waiting and size + len(self.waiting[0][0]) <= limit:
                taken.append(self.waiting.popleft())
                size += len(taken[-1][0])
            live = [item for item in taken if not item[2].done()]  # a cancelled one: gone
            if not live:
                continue
            try:
                answers: list[Any] = await self.service.call(
                    self.service.score_many, [(rows, batch) for rows, batch, _ in live]
                )
            except Exception as exc:  # shutting down (503), or the scorer failed: each gets it
                answers = [exc] * len(live)
            for (_, _, future), answer in zip(live, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, Exception) and not isinstance(answer, RequestError):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


def build_app(service: ScoringService) -> FastAPI:
    """The FastAPI app of ``service`` (lifespan: housekeeping and the reload poll; closing the service at exit)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(service.housekeeping())]
        if service.options.reload_poll_s > 0:
            tasks.append(asyncio.create_task(service.poll()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await service.aclose()

    app = FastAPI(
        title="fedcore scoring service",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    opts = service.options
    coalescer = _Coalescer(service) if opts.coalesce else None

    async def guarded(work: Callable[[], Any]) -> Response:
        try:
            status, body = await work()
            return _json(status, body)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        except Exception:
            logger.exception("request failed")
            return _error(500, "internal error: the service logged it; report it with the log")

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        async def work() -> tuple[int, dict[str, Any]]:
            items, batch = _items(
                await _body(request, opts.max_body_bytes),
                "transactions",
                "transaction",
                opts.max_batch,
            )
            append = _append(request)
            if coalescer is not None and append:
                return 200, await coalescer.score(items, batch)
            return 200, await service.call(service.score, items, batch, append)

        return await guarded(work)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        async def work() -> tuple[int, dict[str, Any]]:
            items, batch = _items(
                await _body(request, opts.max_body_bytes), "labels", "label", opts.max_batch
            )
            ids, labels = _labels(items, batch)
            return 200, await service.call(service.feedback, ids, labels)

        return await guarded(work)

    @app.get("/v1/status")
    async def status() -> Response:
        async def work() -> tuple[int, dict[str, Any]]:
            return 200, await service.call(service.status)

        return await guarded(work)

    @app.post("/v1/reload")
    async def reload() -> Response:
        async def work() -> tuple[int, dict[str, Any]]:
            info = await service.reload_newest()
            if info is None:
                return 200, {"reloaded": False, "model": service.model.to_dict()}
            return 200, {"reloaded": True, "model": info.to_dict()}

        return await guarded(work)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if service.closing:
            return _json(503, {"ready": False, "reason": "shutting down"})
        return _json(200, {"ready": True, "model": service.model.short_sha})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        hint = {
            404: "no such endpoint; try POST /v1/score, POST /v1/feedback, GET /v1/status, "
            "POST /v1/reload, GET /healthz, /readyz or /metrics",
            405: "method not allowed on this endpoint: /v1/score, /v1/feedback and /v1/reload "
            "take POST; the others GET",
        }.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, hint)

    app.add_middleware(_Timing, metrics=service.metrics)
    return app


class _Server(uvicorn.Server):
    """A uvicorn server that stops on SIGINT or SIGTERM and returns, where uvicorn would raise
    the signal again after its shutdown (the command exits 0 after a clean stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve_on(app: FastAPI, sock: socket.socket) -> bool:
    """Serve ``app`` with uvicorn on a bound, listening ``sock`` until SIGINT or SIGTERM.

    The objects alive at the start are frozen out of the garbage collector (``gc.freeze``).
    uvicorn picks uvloop and httptools when they are installed, else asyncio and h11. Access
    lines are not logged (``/metrics`` counts requests); uvicorn's own records go to the
    ``uvicorn`` loggers as configured by the caller.

    Returns:
        Whether the app started (its lifespan startup succeeded).
    """
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=30,
    )
    server = _Server(config)
    # Everything loaded so far (torch, ONNX Runtime, the history window: hundreds of
    # thousands of objects) lives as long as the process: keep it out of the cyclic garbage
    # collector, whose full passes over it would stall a request for hundreds of ms.
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])
    return bool(server.started)
