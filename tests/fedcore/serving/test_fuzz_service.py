"""Thousands of malformed requests (seeded) against `fed-client serve` over HTTP: every one gets a 4xx JSON error, none a 5xx, and the service scores correctly afterwards.

Every request built here is invalid by construction (a broken body, header, field or
shape), so the service must refuse each one and append nothing: its history afterwards is
the one it started with, and a valid transaction scores exactly as an in-process scorer on
a pristine copy of the site's state scores it. ``FEDCORE_FUZZ_SCALE`` scales the count.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedcore.serving.context import ContextScorer

pytestmark = pytest.mark.fuzz

REQUESTS = int(3000 * float(os.environ.get("FEDCORE_FUZZ_SCALE", "1")))

JUNK_IDS: list[Any] = [None, "", [], {}, True, False, 1.5, "x" * 300, {"$gt": ""}, ["a"]]
JUNK_AMOUNTS: list[Any] = [None, -1, -1e-9, "12", "NaN", True, [], {}, "١٢٣", [1.0]]
JUNK_TIMES: list[Any] = [None, "yesterday", "2026-13-45T99:00:00Z", True, [], {}, "", "1e3x"]
JUNK_FEATURES: list[Any] = [None, "0.5", True, [], {}, "\u0000"]


def _mangle_row(rng: random.Random, row: dict[str, Any], features: list[str]) -> dict[str, Any]:
    """``row`` with one field broken (a junk value, or missing)."""
    out = dict(row)
    field = rng.choice(["payer", "payee", "amount", "timestamp", "merchant", "device", *features])
    if field in ("merchant", "device"):  # optional ids: junk only, never missing
        out[field] = rng.choice([v for v in JUNK_IDS if v not in (None, "")])
    elif rng.random() < 0.15:
        out.pop(field)
    elif field in ("payer", "payee"):
        out[field] = rng.choice(JUNK_IDS)
    elif field == "amount":
        out[field] = rng.choice(JUNK_AMOUNTS)
    elif field == "timestamp":
        out[field] = rng.choice(JUNK_TIMES)
    else:
        out[field] = rng.choice(JUNK_FEATURES)
    return out


def _case(
    rng: random.Random, rows: list[dict[str, Any]], features: list[str]
) -> tuple[str, str, bytes, dict[str, str]]:
    """One invalid request: method, path, body, headers."""
    json_ct = {"Content-Type": "application/json"}
    row = rng.choice(rows)
    kind = rng.randrange(16)
    if kind == 0:  # random bytes
        return "POST", "/v1/score", rng.randbytes(rng.randrange(0, 2000)), json_ct
    if kind == 1:  # a valid body cut short
        text = json.dumps({"transactions": rng.sample(rows, 3)}).encode()
        return "POST", "/v1/score", text[: rng.randrange(0, len(text) - 1)], json_ct
    if kind in (2, 3, 4):  # one transaction with one bad field
        return "POST", "/v1/score", json.dumps(_mangle_row(rng, row, features)).encode(), json_ct
    if kind == 5:  # a batch with one bad row among good ones: the whole batch is refused
        batch = rng.sample(rows, 5)
        batch[rng.randrange(5)] = _mangle_row(rng, row, features)
        return "POST", "/v1/score", json.dumps({"transactions": batch}).encode(), json_ct
    if kind == 6:  # batch shapes
        shapes: list[Any] = [[], {}, "rows", None, 3, [1, 2], [[row]], [None], [row] * 1001]
        body = json.dumps({"transactions": rng.choice(shapes)}).encode()
        return "POST", "/v1/score", body, json_ct
    if kind == 7:  # top-level values that are not an object
        return (
            "POST",
            "/v1/score",
            rng.choice([b"[]", b"null", b"1", b'"x"', b"true", b" "]),
            json_ct,
        )
    if kind == 8:  # NaN, Infinity, numbers beyond float range
        literal = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" + "0" * 400])
        swapped = json.dumps(row).replace(json.dumps(row["amount"]), literal, 1)
        return "POST", "/v1/score", swapped.encode(), json_ct
    if kind == 9:  # nesting, within what the parser takes or far beyond
        depth = rng.choice([rng.randrange(1, 1000), rng.randrange(2_000, 200_000)])
        return "POST", "/v1/score", b'{"payer":' + b"[" * depth + b"]" * depth + b"}", json_ct
    if kind == 10:  # lone surrogates and invalid UTF-8 in strings
        text = rng.choice(
            [b'"\\udc00"', b'"\\ud83d"', b'"\xff\xfe"', b'"\xc3\x28"', b'"\xed\xa0\x80"']
        )
        body = json.dumps(row).encode().replace(json.dumps(row["payer"]).encode(), text, 1)
        return "POST", "/v1/score", body, json_ct
    if kind == 11:  # wrong content types
        ctype = rng.choice(["text/plain", "multipart/form-data; boundary=x", "application/xml"])
        return "POST", "/v1/score", json.dumps(row).encode(), {"Content-Type": ctype}
    if kind == 12:  # over the body limit
        pad = "x" * (2 * 1024 * 1024 + rng.randrange(1, 1000))
        return "POST", "/v1/score", json.dumps(row | {"pad": pad}).encode(), json_ct
    if kind == 13:  # malformed feedback
        bad = rng.choice(
            [
                {"tx_id": row["tx_id"], "label": rng.choice([2, -1, "1", None, True, 0.5, []])},
                {"label": 1},
                {"tx_id": rng.choice(JUNK_IDS), "label": 1},
                {"labels": rng.choice([[], {}, [1], [{"tx_id": "a"}], None])},
            ]
        )
        return "POST", "/v1/feedback", json.dumps(bad).encode(), json_ct
    if kind == 14:  # wrong methods and paths
        method, path = rng.choice(
            [
                ("GET", "/v1/score"),
                ("PUT", "/v1/score"),
                ("DELETE", "/v1/feedback"),
                ("POST", "/healthz"),
                ("GET", "/v1/scores"),
                ("POST", "/" + "a" * 500),
                ("GET", "/%00"),
                ("POST", "/v1/score/../../etc/passwd"),
            ]
        )
        return method, path, b"", {}
    # unicode junk in ids and numbers as text
    junk = "".join(
        chr(rng.choice([0x202E, 0xFEFF, 0x0000, 0x1F4A9, 0x0301, 0xFFFF])) for _ in range(5)
    )
    broken = dict(row) | {"amount": junk} if rng.random() < 0.5 else dict(row) | {"payer": [junk]}
    return "POST", "/v1/score", json.dumps(broken).encode(), json_ct


def _raw_garbage(url: str, rng: random.Random) -> None:
    """Bytes that are not HTTP on a raw connection: the service may answer or close, never die."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            rng.choice([rng.randbytes(300), b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x00"])
        )
        try:
            sock.recv(1024)
        except (TimeoutError, ConnectionError):
            pass


def test_malformed_requests_get_4xx_and_the_service_keeps_scoring(
    site_state: Any, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    state = site_state.copy(tmp_path / "served")
    pristine = site_state.copy(tmp_path / "pristine")
    service = start_service("--state", str(state))
    features = [
        c.removeprefix("features.")
        for c in json.loads((site_state.export_dir / "manifest.json").read_text())["input_columns"]
        if c.startswith("features.")
    ]
    rows = site_state.stream[:200]
    rng = random.Random(int(os.environ.get("FEDCORE_FUZZ_SEED", "20261207")))
    codes: dict[int, int] = {}
    with httpx.Client(base_url=service.url, timeout=60.0) as client:
        for i in range(REQUESTS):
            method, path, body, headers = _case(rng, rows, features)
            res = client.request(method, path, content=body, headers=headers)
            codes[res.status_code] = codes.get(res.status_code, 0) + 1
            assert 400 <= res.status_code < 500, (i, method, path, body[:200], res.text[:500])
            error = res.json().get("error")
            assert isinstance(error, str) and len(error) > 10, (i, body[:200], res.text[:500])
            if i % 500 == 0:
                _raw_garbage(service.url, rng)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        status = client.get("/v1/status").json()
        assert status["history_rows"] == 400 and status["scored"] == 0  # nothing appended
        good = site_state.stream[200:210]
        res = client.post("/v1/score", json={"transactions": good})
        assert res.status_code == 200, res.text
        metrics = client.get("/metrics").text
    assert set(codes) <= {400, 404, 405, 413, 415, 422}, codes
    assert 'code="5' not in metrics
    scorer = ContextScorer.open(site_state.export_dir, pristine)
    try:
        expected = scorer.score(good).score
    finally:
        scorer.close()
    got = [r["score"] for r in res.json()["results"]]
    assert np.allclose(got, expected, atol=1e-6) and all(math.isfinite(s) for s in got)
    code, out = service.stop()
    assert code == 0 and "Traceback" not in out, out
