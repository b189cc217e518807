"""The scoring service's HTTP API against a scorer that scores by amount: answers, errors, metrics, reloads, alarms."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():  # starlette's TestClient warns about its own httpx and anyio use
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fedcore.export.manifest import ExportManifest, sha256_file
from fedcore.serving.api import build_app, parse_json
from fedcore.serving.context import ScoredBatch, ServingInputError
from fedcore.serving.model_info import newest_export
from fedcore.serving.service import (
    RequestError,
    ScoringService,
    ServiceOptions,
)

FEATURES = ("channel_risk",)


def write_export(
    root: Path, run: str, payload: bytes = b"model-bytes", threshold: float = 0.5
) -> Path:
    """An export folder whose manifest matches its (fake) model file."""
    out = root / "export" / run
    out.mkdir(parents=True)
    model = out / "model.int8.onnx"
    model.write_bytes(payload)
    ExportManifest(
        file=model.name,
        sha256=sha256_file(model),
        size_bytes=model.stat().st_size,
        path_taken="onnx-dynamic",
        provider="CPUExecutionProvider",
        metric="pr_auc",
        fp32_metric=0.5,
        int8_metric=0.5,
        drop=0.0,
        tolerance=1.0,
        refused=None,
        latency_ms=1.0,
        test_transactions=10,
        fp32_file=None,
        fp32_sha256=None,
        input_names=("x",),
        output_name="logits",
        input_columns=(
            "payer",
            "payee",
            "amount",
            "timestamp",
            *(f"features.{f}" for f in FEATURES),
        ),
        optional_columns=("tx_id", "merchant", "device"),
        feature_names=("type.transaction",),
        opset=17,
        created="2026-01-01T00:00:00Z",
        fedcore_version="0.1.0",
    ).write(out)
    return out


class FakeScorer:
    """Scores ``amount / (amount + 100)``; refuses rows as the real scorer's contract says."""

    def __init__(self, export_dir: Path, threshold: float = 0.5) -> None:
        self.manifest = ExportManifest.read(export_dir)
        self.threshold = threshold
        self.history: list[dict[str, Any]] = []
        self.served: dict[str, float] = {}
        self.labels: dict[str, int] = {}
        self.flushed = 0
        self.closed = False
        self.busy = False
        self.overlaps = 0
        self.delay = 0.0
        self.fail_with: Exception | None = None
        self.calls: list[int] = []  # rows per scorer call

    @property
    def history_size(self) -> int:
        return len(self.history)

    def score(self, rows: Sequence[Mapping[str, Any]], *, append: bool = True) -> ScoredBatch:
        if self.busy:
            self.overlaps += 1
        self.busy = True
        try:
            self.calls.append(len(rows))
            time.sleep(self.delay)
            if self.fail_with is not None:
                raise self.fail_with
            for i, row in enumerate(rows):
                for key in ("payer", "payee"):
                    if not isinstance(row.get(key), str) or not row[key]:
                        raise ServingInputError(f"row {i}: {key} must be a non-empty string")
                amount = row.get("amount")
                if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                    raise ServingInputError(f"row {i}: amount must be a number >= 0")
                for f in FEATURES:
                    if not isinstance(row.get(f), int | float):
                        raise ServingInputError(f"row {i}: {f} must be a number")
            ids = [str(r.get("tx_id", f"auto-{len(self.history) + i}")) for i, r in enumerate(rows)]
            score = np.array([r["amount"] / (r["amount"] + 100.0) for r in rows])
            if append:
                self.history.extend(dict(r) for r in rows)
                self.served.update(zip(ids, score.tolist(), strict=True))
            return ScoredBatch(tx_id=ids, score=score, flagged=score >= self.threshold)
        finally:
            self.busy = False

    def reload(self, export_dir: Path) -> None:
        manifest = ExportManifest.read(export_dir)
        manifest.verify(export_dir)
        self.manifest = manifest

    def record_label(self, tx_id: str, label: int) -> float | None:
        if tx_id not in self.served:
            return None
        self.labels[tx_id] = label
        return self.served[tx_id]

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.flush()
        self.closed = True


@dataclass(frozen=True)
class FakeAlarm:
    name: str
    message: str


@dataclass
class FakeStatus:
    alarms: list[FakeAlarm]
    psi: float
    labelled: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "alarms": [a.name for a in self.alarms],
            "psi": self.psi,
            "pr_auc": None,
            "labelled": self.labelled,
            "retrain": bool(self.alarms),
        }


@dataclass
class FakeMonitor:
    """Raises ``score_shift`` when the mean of the scores seen passes 0.8."""

    scores: list[float] = field(default_factory=list)
    labelled: int = 0

    def observe_scores(self, scores: np.ndarray) -> None:
        self.scores.extend(scores.tolist())

    def observe_labels(self, scores: np.ndarray, labels: np.ndarray) -> None:
        assert len(scores) == len(labels)
        self.labelled += len(labels)

    def status(self) -> FakeStatus:
        mean = float(np.mean(self.scores)) if self.scores else 0.0
        alarms = [FakeAlarm("score_shift", f"mean score {mean:.2f}")] if mean > 0.8 else []
        return FakeStatus(alarms=alarms, psi=mean, labelled=self.labelled)


def _write_status(path: Path, status: FakeStatus) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(status.to_dict()))


@dataclass
class Served:
    client: TestClient
    service: ScoringService
    scorer: FakeScorer
    state: Path


def _serve(tmp_path: Path, coalesce: bool) -> Iterator[Served]:
    export = write_export(tmp_path, "run-1")
    scorer = FakeScorer(export)
    service = ScoringService(
        scorer,
        export,
        monitor_factory=lambda _m: FakeMonitor(),
        state_dir=tmp_path,
        options=ServiceOptions(
            max_batch=50,
            max_body_bytes=64 * 1024,
            refresh_every_s=0.0,
            status_every_s=0.0,
            status_path=tmp_path / "serving" / "monitor.json",
            coalesce=coalesce,
        ),
        status_writer=_write_status,
    )
    with TestClient(build_app(service)) as client:
        yield Served(client, service, scorer, tmp_path)
    assert scorer.closed, "leaving the app closes the scorer (flushes the history)"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, coalesce=False)


@pytest.fixture
def coalescing(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, coalesce=True)


def tx(i: int, amount: float = 10.0, **extra: Any) -> dict[str, Any]:
    return {
        "tx_id": f"t{i}",
        "payer": f"acct-{i % 3}",
        "payee": "shop",
        "amount": amount,
        "timestamp": 1_700_000_000 + i,
        "channel_risk": 0.1,
    } | extra


def test_one_transaction_gets_its_score_flag_and_model(served: Served) -> None:
    res = served.client.post("/v1/score", json=tx(1, amount=300.0))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["tx_id"] == "t1"
    assert body["score"] == pytest.approx(300 / 400)  # amount / (amount + 100)
    assert body["flagged"] is True and body["threshold"] == 0.5
    assert body["model"] == served.scorer.manifest.sha256[:12] and body["run"] == "run-1"
    assert "ignored_fields" not in body
    assert served.scorer.history_size == 1


def test_a_batch_is_answered_in_order_and_appended(served: Served) -> None:
    rows = [tx(i, amount=float(i * 50)) for i in range(5)]
    res = served.client.post("/v1/score", json={"transactions": rows})
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert [r["tx_id"] for r in results] == [f"t{i}" for i in range(5)]
    # 0/100, 50/150, 100/200 = 0.5 (flagged: score >= threshold), 150/250, 200/300
    assert [r["flagged"] for r in results] == [False, False, True, True, True]
    assert served.scorer.history_size == 5


def test_unknown_fields_are_ignored_and_named(served: Served) -> None:
    res = served.client.post("/v1/score", json=tx(1, amuont=3, label=1))
    assert res.status_code == 200
    assert res.json()["ignored_fields"] == ["amuont", "label"]


BAD_BODIES: list[tuple[str, bytes, str, int, str]] = [
    ("not json", b"{payer: 1", "application/json", 400, "not valid JSON"),
    ("empty", b"", "application/json", 400, "empty body"),
    ("NaN", b'{"payer":"a","payee":"b","amount":NaN}', "application/json", 400, "NaN"),
    ("Infinity", b'{"amount":-Infinity}', "application/json", 400, "Infinity"),
    ("overflow", b'{"amount":1e999}', "application/json", 400, "beyond float range"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "bytes"),
    ("nested", b'{"a":' * 5000 + b"1" + b"}" * 5000, "application/json", 400, "nested too deeply"),
    ("array", b"[1,2]", "application/json", 422, "expected a JSON object"),
    ("string", b'"hello"', "application/json", 422, "expected a JSON object"),
    ("batch not array", b'{"transactions":{}}', "application/json", 422, "must be an array"),
    ("empty batch", b'{"transactions":[]}', "application/json", 422, "is empty"),
    ("batch item", b'{"transactions":[1]}', "application/json", 422, "transactions[0]"),
    ("bad utf-8", b'{"payer":"\xff\xfe"}', "application/json", 400, "not valid JSON"),
    ("lone surrogate", b'{"payer":"\\ud800"}', "application/json", 400, "surrogate"),
    ("form", b"payer=a", "application/x-www-form-urlencoded", 415, "Content-Type"),
    ("bad row", json.dumps(tx(1, payer="")).encode(), "application/json", 422, "payer"),
    ("negative", json.dumps(tx(1, amount=-5)).encode(), "application/json", 422, "amount"),
]


@pytest.mark.parametrize(
    ("body", "ctype", "code", "says"),
    [b[1:] for b in BAD_BODIES],
    ids=[b[0] for b in BAD_BODIES],
)
def test_bad_requests_get_4xx_with_a_message(
    served: Served, body: bytes, ctype: str, code: int, says: str
) -> None:
    res = served.client.post("/v1/score", content=body, headers={"Content-Type": ctype})
    assert res.status_code == code, res.text
    assert says in res.json()["error"]
    assert served.scorer.history_size == 0


def test_batch_and_body_limits_answer_413(served: Served) -> None:
    res = served.client.post("/v1/score", json={"transactions": [tx(i) for i in range(51)]})
    assert res.status_code == 413 and "at most 50" in res.json()["error"]
    big = {"transactions": [tx(1, note="x" * 70_000)]}
    res = served.client.post("/v1/score", json=big)
    assert res.status_code == 413 and "65536" in res.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(100):
            yield b" " * 1024

    res = served.client.post(
        "/v1/score", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert res.status_code == 413


def test_unknown_paths_and_methods_answer_json_errors(served: Served) -> None:
    res = served.client.get("/v2/nothing")
    assert res.status_code == 404 and "/v1/score" in res.json()["error"]
    res = served.client.get("/v1/score")
    assert res.status_code == 405 and "POST" in res.json()["error"]


def test_an_unexpected_scorer_failure_is_a_500_and_the_service_goes_on(served: Served) -> None:
    served.scorer.fail_with = RuntimeError("boom")
    res = served.client.post("/v1/score", json=tx(1))
    assert res.status_code == 500 and "internal error" in res.json()["error"]
    served.scorer.fail_with = None
    assert served.client.post("/v1/score", json=tx(2)).status_code == 200


def test_feedback_stores_labels_and_feeds_the_monitor(served: Served) -> None:
    served.client.post("/v1/score", json={"transactions": [tx(1), tx(2)]})
    res = served.client.post("/v1/feedback", json={"tx_id": "t1", "label": 1})
    assert res.json() == {"recorded": 1, "unknown": 0}
    res = served.client.post(
        "/v1/feedback",
        json={"labels": [{"tx_id": "t2", "label": 0}, {"tx_id": "never", "label": 1}]},
    )
    assert res.json() == {"recorded": 1, "unknown": 1, "unknown_tx_ids": ["never"]}
    assert served.scorer.labels == {"t1": 1, "t2": 0}
    assert served.service.monitor is not None
    assert served.service.monitor.labelled == 2  # type: ignore[attr-defined]
    for bad, says in [
        ({"tx_id": "t1", "label": 2}, "label must be 0"),
        ({"tx_id": "t1", "label": True}, "label must be 0"),
        ({"tx_id": "", "label": 1}, "tx_id must be"),
        ({"labels": [{"tx_id": "t1"}]}, "labels[0]: label"),
    ]:
        res = served.client.post("/v1/feedback", json=bad)
        assert res.status_code == 422 and says in res.json()["error"], bad


def test_health_readiness_status_and_metrics(served: Served) -> None:
    assert served.client.get("/healthz").json() == {"status": "ok"}
    assert served.client.get("/readyz").json()["ready"] is True
    served.client.post("/v1/score", json={"transactions": [tx(1, 300.0), tx(2, 1.0)]})
    served.client.post("/v1/score", content=b"{", headers={"Content-Type": "application/json"})
    status = served.client.get("/v1/status").json()
    assert status["model"]["run"] == "run-1" and status["history_rows"] == 2
    assert status["scored"] == 2 and status["flagged"] == 1
    assert status["monitor"]["psi"] == pytest.approx((0.75 + 1 / 101) / 2)
    text = served.client.get("/metrics").text
    assert 'fedcore_serving_requests_total{code="200",endpoint="/v1/score"} 1.0' in text
    assert 'fedcore_serving_requests_total{code="400",endpoint="/v1/score"} 1.0' in text
    assert "fedcore_serving_transactions_scored_total 2.0" in text
    assert "fedcore_serving_transactions_flagged_total 1.0" in text
    assert "fedcore_serving_flagged_rate 0.5" in text
    assert 'fedcore_serving_request_seconds_bucket{endpoint="/v1/score",le="0.005"}' in text
    assert "fedcore_serving_history_rows 2.0" in text
    assert f'sha256="{served.scorer.manifest.sha256[:12]}"' in text


def test_an_alarm_is_logged_counted_and_written(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedcore.serving.service"):
        served.client.post("/v1/score", json=tx(1, amount=10.0))
        assert "alarm raised" not in caplog.text
        served.client.post(
            "/v1/score", json={"transactions": [tx(i, 10_000.0) for i in range(2, 9)]}
        )
    assert "alarm raised: score_shift" in caplog.text
    assert 'fedcore_serving_alarm{alarm="score_shift"} 1.0' in served.client.get("/metrics").text
    written = json.loads((served.state / "serving" / "monitor.json").read_text())
    assert written["alarms"] == ["score_shift"] and written["retrain"] is True
    assert served.client.get("/v1/status").json()["alarms"] == ["score_shift"]


def test_scorer_calls_never_overlap(served: Served) -> None:
    served.scorer.delay = 0.01
    codes: list[int] = []

    def post(i: int) -> None:
        codes.append(served.client.post("/v1/score", json=tx(i)).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8 and served.scorer.overlaps == 0


def test_requests_that_arrive_while_the_scorer_is_busy_are_scored_together(
    coalescing: Served,
) -> None:
    served = coalescing
    served.scorer.delay = 0.05
    answers: dict[int, Any] = {}

    def post(i: int) -> None:
        row = tx(i, amount=float(i)) if i != 5 else tx(i, payer="")
        answers[i] = served.client.post("/v1/score", json=row)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers[5].status_code == 422 and "payer" in answers[5].json()["error"]
    for i in set(range(12)) - {5}:
        body = answers[i].json()
        assert body["tx_id"] == f"t{i}" and body["score"] == pytest.approx(i / (i + 100.0))
    assert served.scorer.history_size == 11 and served.scorer.overlaps == 0
    assert max(served.scorer.calls) > 1, served.scorer.calls  # some calls took several


def test_reload_swaps_to_a_newer_export(served: Served) -> None:
    res = served.client.post("/v1/reload")
    assert res.json()["reloaded"] is False  # the newest is the one served
    time.sleep(0.01)
    new = write_export(served.state, "run-2", payload=b"other-model")
    res = served.client.post("/v1/reload")
    assert res.status_code == 200 and res.json()["model"]["run"] == "run-2"
    assert served.client.post("/v1/score", json=tx(1)).json()["run"] == "run-2"
    assert served.service.model.export_dir == new.resolve()
    assert 'fedcore_serving_reloads_total{result="ok"} 1.0' in served.client.get("/metrics").text


def test_reload_refuses_a_model_that_does_not_match_its_manifest(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    time.sleep(0.01)
    bad = write_export(served.state, "run-2", payload=b"other-model")
    (bad / "model.int8.onnx").write_bytes(b"Other-model")  # one byte flipped
    with caplog.at_level(logging.WARNING, logger="fedcore.serving.service"):
        res = served.client.post("/v1/reload")
    assert res.status_code == 409 and "does not match its manifest" in res.json()["error"]
    assert "refused to serve the export" in caplog.text and "still serving" in caplog.text
    assert served.client.post("/v1/score", json=tx(1)).json()["run"] == "run-1"
    assert (
        'fedcore_serving_reloads_total{result="refused"} 1.0' in served.client.get("/metrics").text
    )
    # refused once, not tried again until its manifest changes
    assert served.client.post("/v1/reload").json()["reloaded"] is False


def test_the_poll_picks_up_a_new_export(tmp_path: Path) -> None:
    export = write_export(tmp_path, "run-1")
    scorer = FakeScorer(export)
    service = ScoringService(
        scorer, export, state_dir=tmp_path, options=ServiceOptions(reload_poll_s=0.05)
    )
    with TestClient(build_app(service)) as client:
        time.sleep(0.02)
        write_export(tmp_path, "run-2", payload=b"newer")
        deadline = time.monotonic() + 5
        while service.model.run != "run-2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post("/v1/score", json=tx(1)).json()["run"] == "run-2"


def test_an_older_export_is_not_taken_for_a_newer_one(served: Served) -> None:
    older = write_export(served.state, "run-0", payload=b"older")
    os.utime(older / "manifest.json", (1_000_000, 1_000_000))
    assert served.client.post("/v1/reload").json()["reloaded"] is False


def test_overload_answers_503(served: Served) -> None:
    service = served.service
    service._pending = service.options.max_pending  # as if that many waited
    try:
        res = served.client.post("/v1/score", json=tx(1))
    finally:
        service._pending = 0
    assert res.status_code == 503 and "overloaded" in res.json()["error"]
    assert served.client.post("/v1/score", json=tx(1)).status_code == 200


def test_newest_export_skips_folders_without_a_manifest(tmp_path: Path) -> None:
    assert newest_export(tmp_path) is None
    first = write_export(tmp_path, "a")
    (tmp_path / "export" / "b-being-written").mkdir()
    assert newest_export(tmp_path) == first.resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [(b'{"a": 1}', {"a": 1}), (b'{"a": 12345678901234567890123}', {"a": 1.2345678901234568e22})],
)
def test_parse_json_reads_numbers(text: bytes, expected: Any) -> None:
    assert parse_json(text) == expected


def test_parse_json_refuses_ints_beyond_float_range() -> None:
    with pytest.raises(RequestError, match="beyond float range"):
        parse_json(b'{"a": 1' + b"0" * 400 + b"}")


def test_a_failed_history_write_at_shutdown_is_kept_not_raised(tmp_path: Path) -> None:
    export = write_export(tmp_path, "run-1")
    scorer = FakeScorer(export)

    def broken_close() -> None:
        raise OSError(28, "No space left on device")

    scorer.close = broken_close  # type: ignore[method-assign]
    service = ScoringService(scorer, export, state_dir=tmp_path)
    with TestClient(build_app(service)) as client:
        assert client.post("/v1/score", json=tx(1)).status_code == 200
    assert isinstance(service.close_error, OSError) and service.closing


def test_append_false_scores_without_keeping_or_monitoring(served: Served) -> None:
    res = served.client.post("/v1/score?append=false", json={"transactions": [tx(1), tx(2)]})
    assert res.status_code == 200 and res.json()["appended"] is False
    assert len(res.json()["results"]) == 2
    assert served.scorer.history_size == 0
    assert served.service.monitor is not None
    assert served.service.monitor.scores == []  # type: ignore[attr-defined]
    res = served.client.post("/v1/score?append=maybe", json=tx(3))
    assert res.status_code == 422 and "append must be true or false" in res.json()["error"]
    assert "appended" not in served.client.post("/v1/score?append=1", json=tx(4)).json()
    assert served.scorer.history_size == 1


class TwoPhaseScorer(FakeScorer):
    """Loads a model beside the served one (``load_model``), then swaps it in (``use``)."""

    def __init__(self, export_dir: Path) -> None:
        super().__init__(export_dir)
        self.threads: dict[str, str] = {}

    def load_model(self, export_dir: Path) -> ExportManifest:
        self.threads["load"] = threading.current_thread().name
        return ExportManifest.read(export_dir)

    def use(self, manifest: ExportManifest) -> None:
        self.threads["use"] = threading.current_thread().name
        self.manifest = manifest


def test_a_new_model_is_loaded_off_the_scoring_thread_and_swapped_on_it(tmp_path: Path) -> None:
    export = write_export(tmp_path, "run-1")
    scorer = TwoPhaseScorer(export)
    service = ScoringService(scorer, export, state_dir=tmp_path)
    with TestClient(build_app(service)) as client:
        time.sleep(0.01)
        write_export(tmp_path, "run-2", payload=b"newer")
        assert client.post("/v1/reload").json()["model"]["run"] == "run-2"
    assert scorer.threads["use"].startswith("fedcore-scorer")
    assert not scorer.threads["load"].startswith("fedcore-scorer")
