"""Load generation, service process control and the offline reference for ``benchmarks/serving.py``.

* :func:`open_loop` sends requests at a fixed arrival rate with at most ``max_in_flight``
  outstanding (asyncio, keep-alive HTTP/1.1 connections); a request's latency runs
  from its *scheduled* send time, so time spent waiting for a free slot counts.
* :func:`closed_loop` keeps ``concurrency`` requests outstanding as fast as the service
  answers (throughput).
* Every request is kept as a :class:`Sent` record, in send order, with the stream rows it
  carried and the raw response body, so that the history the service held when it scored
  a request can be rebuilt afterwards (:func:`isolated`, :func:`prior_rows`).
* :func:`offline_scores` is the reference: the graph of exactly the context rows built by
  :func:`fedcore.data.graph.build_graph`, scored with the exported layer-wise ONNX model
  as :func:`fedcore.export.serve.score_csv` does.

Pure helpers (percentiles, isolation, context rows) take plain numbers so they can be
tested without a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:
    from fedcore.data.transactions import Transactions

DAY = 86_400.0


@dataclass
class Sent:
    """One request as the load generator saw it (times: ``time.perf_counter`` seconds).

    Attributes:
        index: Position in send order within its phase.
        rows: ``(start, stop)``: the stream rows the request carried.
        scheduled: When it was due (open loop) or picked up (closed loop).
        sent: When the request was handed to the client.
        done: When the response (or error) came back; ``nan`` if never sent.
        status: HTTP status, ``None`` on a client-side error or when never sent.
        error: Client-side error (``repr``), ``"not sent"`` when the phase ran out of time.
        body: The raw response body (parsed after the load, not during it).
    """

    index: int
    rows: tuple[int, int]
    scheduled: float
    sent: float = float("nan")
    done: float = float("nan")
    status: int | None = None
    error: str | None = None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        """The service answered 200."""
        return self.status == 200

    @property
    def outcome_known(self) -> bool:
        """Whether we know if the service appended the rows (an answer, or never sent)."""
        return self.status is not None or self.error == "not sent"


@dataclass
class Phase:
    """The records of one load phase and what it cost the load generator."""

    name: str
    records: list[Sent]
    started: float
    ended: float
    client_cpu_s: float
    settings: dict[str, Any] = field(default_factory=dict)


def percentile_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 / p90 / p99 / max / mean of ``values_ms`` (``None`` each when empty)."""
    if len(values_ms) == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "mean_ms": float(a.mean()),
    }


def stalls(records: Sequence[Sent], n: int, apart_s: float) -> list[Sent]:
    """The slowest request of each of the ``n`` worst stalls, in the order they were due.

    Greedy: take the slowest request, drop every request due within ``apart_s`` of it
    (the queue behind one stall), repeat.
    """
    left = sorted(records, key=lambda r: r.done - r.scheduled, reverse=True)
    picked: list[Sent] = []
    for r in left:
        if len(picked) == n:
            break
        if all(abs(r.scheduled - p.scheduled) >= apart_s for p in picked):
            picked.append(r)
    return sorted(picked, key=lambda r: r.scheduled)


def phase_summary(phase: Phase, rows_per_request: int) -> dict[str, Any]:
    """Latency (from scheduled time, and from actual send), errors, rates and client CPU of a phase.

    ``slowest``: the slowest answered request of each of the 10 worst stalls (see
    :func:`stalls`), in the order they were due, with when (seconds into the phase): stalls
    that recur show their period.
    """
    recs = phase.records
    ok = [r for r in recs if r.ok]
    latency = [(r.done - r.scheduled) * 1000.0 for r in ok]
    service = [(r.done - r.sent) * 1000.0 for r in ok]
    last = max((r.done for r in recs if not np.isnan(r.done)), default=phase.started)
    span = max(last - phase.started, 1e-9)
    wall = max(phase.ended - phase.started, 1e-9)
    statuses: dict[str, int] = {}
    for r in recs:
        if not r.ok:
            key = str(r.status) if r.status is not None else (r.error or "error").split("(")[0]
            statuses[key] = statuses.get(key, 0) + 1
    tx_ok = sum(r.rows[1] - r.rows[0] for r in ok)
    worst = stalls(ok, 10, 0.5)
    return {
        "requests": len(recs),
        "ok": len(ok),
        "errors": len(recs) - len(ok),
        "errors_by_kind": statuses,
        "rows_per_request": rows_per_request,
        "transactions_ok": tx_ok,
        "achieved_requests_per_s": len(ok) / span,
        "transactions_per_s": tx_ok / span,
        "latency_from_schedule": percentile_summary(latency),
        "latency_from_send": percentile_summary(service),
        "slowest": [
            {
                "due_s": round(r.scheduled - phase.started, 3),
                "latency_ms": round((r.done - r.scheduled) * 1000.0, 1),
            }
            for r in worst
        ],
        "seconds": span,
        "client_cpu_s": phase.client_cpu_s,
        "client_cpu_share_of_one_core": phase.client_cpu_s / wall,
        **phase.settings,
    }


class _Pool:
    """Keep-alive HTTP/1.1 connections to one host, at most ``size`` open (plain asyncio streams).

    A minimal client: ``POST`` with ``Content-Length``, responses read by
    ``Content-Length`` or chunked encoding. It costs a fraction of a general client's
    CPU per request, so the load generator does not compete with the service for the cores.
    """

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.size = size
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.open += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.open -= 1
            raise

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """Status and body of one ``POST``; a failed connection is closed, not reused."""
        reader, writer = await self._conn()
        try:
            writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if "content-length" in fields:
                content = await reader.readexactly(int(fields["content-length"]))
            elif fields.get("transfer-encoding", "").lower() == "chunked":
                content = await _chunked(reader)
            else:
                content = await reader.read()
                fields["connection"] = "close"
        except BaseException:
            self._drop(writer)
            raise
        if fields.get("connection", "").lower() == "close":
            self._drop(writer)
        else:
            self.idle.append((reader, writer))
        return status, content

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self.open -= 1
        writer.close()

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self.idle.clear()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


async def _post(pool: _Pool, body: bytes, rec: Sent, timeout: float) -> None:
    rec.sent = time.perf_counter()
    try:
        rec.status, rec.body = await asyncio.wait_for(pool.post(body), timeout)
    except Exception as exc:  # any client-side failure is an error of this request
        rec.error = repr(exc)[:200]
    rec.done = time.perf_counter()


async def _open_loop(
    url: str,
    bodies: Sequence[bytes],
    rows: Sequence[tuple[int, int]],
    rate: float,
    max_in_flight: int,
    grace_s: float,
    timeout: float,
) -> tuple[list[Sent], float]:
    pool = _Pool(url, max_in_flight)
    slots = asyncio.Semaphore(max_in_flight)
    records: list[Sent] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    deadline = start + len(bodies) / rate + grace_s

    async def one(body: bytes, rec: Sent) -> None:
        try:
            await _post(pool, body, rec, timeout)
        finally:
            slots.release()

    try:
        for i, body in enumerate(bodies):
            rec = Sent(i, rows[i], start + i / rate)
            records.append(rec)
            delay = rec.scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() > deadline:
                rec.error = "not sent"
                continue
            await slots.acquire()
            tasks.append(asyncio.create_task(one(body, rec)))
        if tasks:
            await asyncio.wait(tasks)
    finally:
        await pool.close()
    return records, start


async def _closed_loop(
    url: str,
    bodies: Sequence[bytes],
    rows: Sequence[tuple[int, int]],
    concurrency: int,
    duration_s: float,
    timeout: float,
) -> tuple[list[Sent], float]:
    pool = _Pool(url, concurrency)
    records: list[Sent] = []
    nxt = 0
    start = time.perf_counter()
    stop = start + duration_s

    async def worker() -> None:
        nonlocal nxt
        while nxt < len(bodies) and time.perf_counter() < stop:
            i = nxt
            nxt += 1
            rec = Sent(i, rows[i], time.perf_counter())
            records.append(rec)
            await _post(pool, bodies[i], rec, timeout)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await pool.close()
    records.sort(key=lambda r: r.index)
    return records, start


def open_loop(
    name: str,
    url: str,
    bodies: Sequence[bytes],
    rows: Sequence[tuple[int, int]],
    *,
    rate: float,
    max_in_flight: int,
    grace_s: float = 5.0,
    timeout: float = 30.0,
) -> Phase:
    """Send ``bodies`` at ``rate`` per second, at most ``max_in_flight`` outstanding.

    Request ``i`` is due at ``start + i / rate``; it waits for a free slot when all are
    taken (its latency still runs from when it was due). Requests still unsent
    ``grace_s`` after the schedule's end are recorded as ``"not sent"`` errors.
    """
    cpu0 = time.process_time()
    records, start = asyncio.run(
        _open_loop(url, bodies, rows, rate, max_in_flight, grace_s, timeout)
    )
    ended = time.perf_counter()
    settings = {"target_rate_per_s": rate, "max_in_flight": max_in_flight}
    return Phase(name, records, start, ended, time.process_time() - cpu0, settings)


def closed_loop(
    name: str,
    url: str,
    bodies: Sequence[bytes],
    rows: Sequence[tuple[int, int]],
    *,
    concurrency: int,
    duration_s: float,
    timeout: float = 60.0,
) -> Phase:
    """Keep ``concurrency`` requests outstanding for ``duration_s`` (or until ``bodies`` run out)."""
    cpu0 = time.process_time()
    records, start = asyncio.run(_closed_loop(url, bodies, rows, concurrency, duration_s, timeout))
    ended = time.perf_counter()
    settings = {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "ran_out_of_stream": len(records) == len(bodies),
    }
    return Phase(name, records, start, ended, time.process_time() - cpu0, settings)


# --------------------------------------------------------------------------- request bodies


def row_json(tx: Transactions, i: int, features: Sequence[str]) -> dict[str, Any]:
    """Transaction ``i`` as the service takes it (empty merchant / device left out)."""
    row: dict[str, Any] = {
        "tx_id": str(tx.tx_id[i]),
        "payer": str(tx.payer[i]),
        "payee": str(tx.payee[i]),
        "amount": float(tx.amount[i]),
        "timestamp": float(tx.timestamp[i]),
    }
    if tx.merchant[i]:
        row["merchant"] = str(tx.merchant[i])
    if tx.device[i]:
        row["device"] = str(tx.device[i])
    for f in features:
        row[f] = float(tx.features[f][i])
    return row


def encode(
    rows: Sequence[dict[str, Any]], start: int, stop: int, size: int
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Request bodies for rows ``start..stop``: one object each (``size`` 1) or ``{"transactions": [...]}``."""
    bodies: list[bytes] = []
    spans: list[tuple[int, int]] = []
    for a in range(start, stop - size + 1, size):
        if size == 1:
            bodies.append(json.dumps(rows[a]).encode())
        else:
            bodies.append(json.dumps({"transactions": rows[a : a + size]}).encode())
        spans.append((a, a + size))
    return bodies, spans


# --------------------------------------------------------------------------- the service process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(
    cmd: Sequence[str], log_path: Path, ready_url: str, timeout_s: float, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (its output to ``log_path``) and wait until ``ready_url`` answers 200.

    Raises:
        RuntimeError: the process exited, or was not ready within ``timeout_s`` (it is
            stopped first); the message ends with the tail of its log.
    """
    import httpx

    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it until stopped
    proc = subprocess.Popen(
        list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
    )
    log.close()
    deadline = time.monotonic() + timeout_s
    why = "not ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            why = f"exited with code {proc.returncode}"
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=2.0).status_code == 200:
                return proc
        time.sleep(0.2)
    else:
        why = f"not ready after {timeout_s:.0f} s"
    stop_process(proc)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{' '.join(cmd)}: {why}; its log ({log_path}) ends:\n{tail}")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Stop a process started by :func:`start_process` by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)
