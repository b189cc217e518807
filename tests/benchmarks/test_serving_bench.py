"""benchmarks/serving.py and its helpers: load arithmetic, whose history a request saw, the offline reference, the targets; a load run against a local server; a smoke run of the whole benchmark (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = _load("serving_bench", ROOT / "benchmarks" / "serving.py")
load = bench.load
check = bench.check


def _sent(
    index: int, rows: tuple[int, int], sent: float, done: float, status: int | None = 200
) -> Any:
    rec = load.Sent(index, rows, scheduled=sent)
    rec.sent, rec.done, rec.status = sent, done, status
    return rec


# --------------------------------------------------------------------------- arithmetic


def test_percentile_summary() -> None:
    out = load.percentile_summary([float(v) for v in range(1, 101)])  # 1..100 ms
    assert out["p50_ms"] == pytest.approx(50.5)
    assert out["p99_ms"] == pytest.approx(99.01)
    assert out["max_ms"] == 100.0 and out["mean_ms"] == pytest.approx(50.5)
    assert load.percentile_summary([])["p99_ms"] is None


def test_phase_summary_counts_latency_from_the_scheduled_time() -> None:
    # due at 0.0, 0.1, 0.2; the second waited 0.05 s for a slot; the third failed
    recs = [
        _sent(0, (0, 1), 0.0, 0.01),
        _sent(1, (1, 2), 0.15, 0.16),
        _sent(2, (2, 3), 0.2, 0.3, 500),
    ]
    recs[1].scheduled = 0.1
    phase = load.Phase("single", recs, started=0.0, ended=0.5, client_cpu_s=0.05)
    out = load.phase_summary(phase, 1)
    assert (out["requests"], out["ok"], out["errors"]) == (3, 2, 1)
    assert out["errors_by_kind"] == {"500": 1}
    # from schedule: 10 ms and 60 ms; from send: 10 ms both
    assert out["latency_from_schedule"]["max_ms"] == pytest.approx(60.0)
    assert out["latency_from_send"]["max_ms"] == pytest.approx(10.0)
    # 2 answered over 0.3 s (start to the last answer); client CPU 0.05 s over 0.5 s of wall
    assert out["achieved_requests_per_s"] == pytest.approx(2 / 0.3)
    assert out["client_cpu_share_of_one_core"] == pytest.approx(0.1)
    # the slowest of the one stall (both answered requests were due within 0.5 s)
    assert out["slowest"] == [{"due_s": 0.1, "latency_ms": 60.0}]


def test_stalls_are_the_worst_request_of_each_episode() -> None:
    # due every 0.1 s; 1.0-1.2 s queue behind one stall, 3.0 s is another, the rest 5 ms
    recs = [_sent(i, (i, i + 1), i / 10, i / 10 + 0.005) for i in range(50)]
    for i, extra in ((10, 0.3), (11, 0.25), (12, 0.2), (30, 0.1)):
        recs[i].done += extra
    worst = load.stalls(recs, 3, 0.5)
    ids = [r.index for r in worst]
    assert len(ids) == 3 and {10, 30} <= set(ids)  # one per episode: not 11 or 12
    assert ids == sorted(ids)  # in due order
    due = [r.scheduled for r in worst]
    assert all(b - a >= 0.5 for a, b in zip(due, due[1:], strict=False))


def test_busiest_counts_cpu_between_snapshots() -> None:
    s0 = {(1, 0.0): (10.0, "pytest"), (2, 0.0): (5.0, "idle"), (3, 0.0): (0.0, "bench")}
    s1 = {(1, 0.0): (11.0, "pytest"), (2, 0.0): (5.0, "idle"), (3, 0.0): (9.0, "bench")}
    s1[(4, 1.0)] = (0.0, "flower")  # started between the first two snapshots: seen from s1
    s2 = {(1, 0.0): (12.0, "pytest"), (4, 1.0): (1.5, "flower")}
    out = bench.machine_cpu.busiest([(0.0, s0), (1.0, s1), (2.0, s2)], skip={3})
    # pytest: 1 + 1 s over 2 s; flower: 1.5 s; idle used nothing; bench is skipped
    assert [(p["command"], p["cpu_s"], p["share_of_one_core"]) for p in out] == [
        ("pytest", 2.0, 1.0),
        ("flower", 1.5, 0.75),
    ]


def test_isolated_and_prior_rows() -> None:
    recs = [
        _sent(0, (0, 1), 0.0, 1.0),  # alone
        _sent(1, (1, 2), 2.0, 4.0),  # overlaps 2
        _sent(2, (2, 3), 3.0, 5.0),  # overlaps 1
        _sent(3, (3, 4), 6.0, 7.0, status=422),  # alone but rejected: never picked
        _sent(4, (4, 5), 8.0, 9.0),  # alone
    ]
    recs.append(load.Sent(5, (5, 6), scheduled=10.0, error="not sent"))
    assert check.isolated(recs) == [0, 4]
    ranges, unknown = check.prior_rows(recs, recs[4])
    assert ranges == [(0, 1), (1, 2), (2, 3)] and unknown == 0  # the 422 appended nothing
    recs[1].status, recs[1].error = None, "TimeoutError()"  # outcome unknown
    assert check.prior_rows(recs, recs[4]) == ([(0, 1), (2, 3)], 1)


def test_pick_checks_takes_every_check_and_spreads_the_load_ones() -> None:
    ledger = [("single", _sent(i, (i, i + 1), 2.0 * i, 2.0 * i + 1)) for i in range(10)]
    ledger.append(("check-single", _sent(0, (10, 11), 30.0, 31.0)))
    picked = check.pick_checks(ledger, 3)
    assert [lab for lab, _ in picked] == ["check-single", "single", "single", "single"]
    assert [r.index for _, r in picked[1:]] == [0, 4, 9]  # first, middle, last isolated


def test_window_mask() -> None:
    day = 86_400.0
    ts = np.array([0.0, 10 * day, 89 * day, 100 * day])
    # 90 days before the newest (day 100): day 10 and later stay
    assert check.window_mask(ts, 100 * day, 90.0, None).tolist() == [False, True, True, True]
    assert check.window_mask(ts, 100 * day, None, 2).tolist() == [False, False, True, True]
    assert check.window_mask(ts, 100 * day, 90.0, 1).tolist() == [False, False, False, True]


def test_bodies_and_answers_round_trip() -> None:
    rows = [
        {"tx_id": f"t{i}", "payer": "a", "payee": "b", "amount": 1.5, "timestamp": i}
        for i in range(7)
    ]
    singles, spans = load.encode(rows, 0, 3, 1)
    assert spans == [(0, 1), (1, 2), (2, 3)] and json.loads(singles[1])["tx_id"] == "t1"
    batches, spans = load.encode(rows, 3, 7, 2)
    assert spans == [(3, 5), (5, 7)]
    assert [t["tx_id"] for t in json.loads(batches[0])["transactions"]] == ["t3", "t4"]
    one = json.dumps({"tx_id": "t1", "score": 0.25, "flagged": False, "model": "abc"}).encode()
    many = json.dumps({"model": "abc", "results": [{"tx_id": "t3", "score": 0.5}]}).encode()
    assert check.parse_scores(one) == {"t1": 0.25}
    assert check.parse_scores(many) == {"t3": 0.5}


def _results(
    p99: float | None, errors: int, tps: float | None, diff: float | None
) -> dict[str, Any]:
    def variant(scale: float) -> dict[str, Any]:
        return {
            "phases": {
                "single": {
                    "errors": errors,
                    "target_rate_per_s": 200.0,
                    "latency_from_schedule": {"p99_ms": None if p99 is None else p99 * scale},
                },
                "batch": {"transactions_per_s": None if tps is None else tps / scale},
            }
        }

    return {
        "variants": {"int8": variant(1.0), "fp32": variant(2.0)},
        "correctness": {"max_abs_diff": diff, "transactions_checked": 5, "missing_scores": 0},
    }


@pytest.mark.parametrize(
    ("p99", "errors", "tps", "diff", "met"),
    [
        (20.0, 0, 5000.0, 1e-7, (True, True, True)),
        (20.0, 3, 1500.0, 1e-3, (False, False, False)),  # errors fail the latency target
        (80.0, 0, 2000.0, 0.0, (False, True, True)),
        (None, 0, None, None, (None, None, None)),  # nothing measured: not met, not failed
    ],
)
def test_targets_are_computed_from_the_results(
    p99: float | None, errors: int, tps: float | None, diff: float | None, met: tuple[Any, ...]
) -> None:
    res = _results(p99, errors, tps, diff)
    t = bench.targets(res)
    assert t["single_p99_ms_at_200_rps"]["value"] == p99
    assert t["batch_throughput_tx_per_s"]["value"] == tps
    assert t["max_abs_in_context_vs_offline"]["value"] == diff
    got = tuple(
        t[k]["met"]
        for k in (
            "single_p99_ms_at_200_rps",
            "batch_throughput_tx_per_s",
            "max_abs_in_context_vs_offline",
        )
    )
    assert got == met
    ratios = bench.compare(res)
    if p99 is not None and tps is not None:
        # the fp32 variant has twice the p99 and half the throughput
        assert ratios["single_p99_ratio"] == pytest.approx(0.5)
        assert ratios["batch_throughput_ratio"] == pytest.approx(2.0)
    else:
        assert ratios["single_p99_ratio"] is None


# --------------------------------------------------------------------------- a real socket

SERVER = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, code, doc):
            body = json.dumps(doc).encode()
            head = f"HTTP/1.1 {code} X\\r\\ncontent-type: application/json\\r\\ncontent-length: {len(body)}\\r\\n\\r\\n"
            self.wfile.write(head.encode() + body)

        def do_GET(self):
            self.reply(200, {"ready": True})

        def do_POST(self):
            doc = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if doc.get("tx_id") == "bad":
                return self.reply(422, {"error": "bad row"})
            if "transactions" in doc:
                rows = [{"tx_id": t["tx_id"], "score": t["amount"] / 10} for t in doc["transactions"]]
                return self.reply(200, {"results": rows})
            self.reply(200, {"tx_id": doc["tx_id"], "score": doc["amount"] / 10})

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.fixture
def local_server(tmp_path: Path) -> Any:
    """A tiny JSON scoring server on 127.0.0.1 (score = amount / 10), stopped by PID."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = load.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = load.start_process(
        [sys.executable, str(script), str(port)],
        tmp_path / "server.log",
        f"{url}/readyz",
        30.0,
        os.environ,
    )
    try:
        yield url, proc
    finally:
        load.stop_process(proc)
    assert proc.poll() is not None


def test_open_and_closed_loop_against_a_local_server(local_server: Any) -> None:
    url, proc = local_server
    rows = [{"tx_id": f"t{i}", "amount": float(i)} for i in range(300)]
    rows[5]["tx_id"] = "bad"
    bodies, spans = load.encode(rows, 0, 100, 1)
    phase = load.open_loop("single", f"{url}/v1/score", bodies, spans, rate=100.0, max_in_flight=8)
    out = load.phase_summary(phase, 1)
    assert (out["ok"], out["errors"], out["errors_by_kind"]) == (99, 1, {"422": 1})
    # 100 requests due over 1 s: none is sent before it is due
    assert all(r.sent >= r.scheduled for r in phase.records)
    assert phase.records[-1].scheduled - phase.records[0].scheduled == pytest.approx(0.99)
    assert check.parse_scores(phase.records[7].body) == {"t7": 0.7}
    assert out["client_cpu_s"] > 0.0
    bodies, spans = load.encode(rows, 100, 300, 20)
    phase = load.closed_loop(
        "batch", f"{url}/v1/score", bodies, spans, concurrency=2, duration_s=30.0
    )
    out = load.phase_summary(phase, 20)
    assert out["ok"] == 10 and out["transactions_ok"] == 200 and out["ran_out_of_stream"]
    assert check.parse_scores(phase.records[0].body)["t100"] == pytest.approx(10.0)
    cpu = bench.machine_cpu.process_cpu_s(proc.pid)
    assert cpu is not None and cpu > 0.0


def test_a_service_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('no such option: --bogus'); sys.exit(2)"]
    with pytest.raises(RuntimeError, match="exited with code 2") as info:
        load.start_process(cmd, tmp_path / "svc.log", "http://127.0.0.1:9/readyz", 30.0, os.environ)
    assert "no such option: --bogus" in str(info.value)


# --------------------------------------------------------------------------- the offline reference


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """An exported untrained 2-layer GNN, a 600-row history and a 40-row stream of the same bank."""
    from fedcore.config import GeneratedData, TaskSpec
    from fedcore.data.generator import GENERATED_FEATURES, generate_stream, generate_transactions
    from fedcore.data.graph import build_graph, feature_dim
    from fedcore.export import CPU_PROVIDER, export_for_site
    from fedcore.models.fraud_gnn import build_model
    from fedcore.training import seed_everything

    task = TaskSpec(hidden=8, layers=2, features=list(GENERATED_FEATURES))
    spec = GeneratedData(transactions=600, fraud_rate=0.05, days=30)
    history = generate_transactions(spec, 3)
    stream = generate_stream(spec, 3, transactions=40, days=2)
    seed_everything(0)
    model = build_model(task, feature_dim(task)).eval()
    out = tmp_path_factory.mktemp("site") / "export"
    export_for_site(
        model,
        build_graph(history, task),
        out,
        task=task,
        providers=[CPU_PROVIDER],
        tolerance=1.0,
        latency_runs=1,
    )
    return out, history, stream


def test_offline_reference_is_what_predict_gives_for_the_same_rows(
    tiny_site: Any, tmp_path: Path
) -> None:
    from fedcore.data.csv_loader import write_transactions_csv
    from fedcore.data.generator import GENERATED_FEATURES
    from fedcore.export.serve import score_csv

    export_dir, history, stream = tiny_site
    features = list(GENERATED_FEATURES)
    # the context of stream rows 10..19 after rows 0..9 were scored, in a 30-day window:
    # the window that row 9 left (30 days before it), and the request's rows
    ctx = check.context_rows(history, stream, [(0, 10)], (10, 20), 30.0)
    newest = float(stream.timestamp[9])
    assert len(ctx) == int((history.timestamp >= newest - 30 * 86_400.0).sum()) + 20
    assert np.all(np.diff(ctx.timestamp) >= 0)
    path = tmp_path / "ctx.csv"
    write_transactions_csv(ctx, path)
    every = [str(t) for t in ctx.tx_id]
    ids = every[-10:]  # the request's rows are the newest
    assert ids == [str(t) for t in stream.tx_id[10:20]]
    for name in ("model.int8.onnx", "model.fp32.onnx"):
        # scoring every row, as predict does: the same numbers as predict
        ours = check.offline_scores(export_dir / name, ctx, every, features)
        theirs = score_csv(export_dir / name, path)
        by_id = dict(zip(theirs.tx_id, theirs.score, strict=True))
        assert np.max(np.abs(ours - np.array([by_id[t] for t in every]))) < 1e-6, name
    # FP32: a transaction's score does not depend on which others are scored with it
    fp32 = export_dir / "model.fp32.onnx"
    alone = check.offline_scores(fp32, ctx, ids, features)
    assert np.max(np.abs(alone - check.offline_scores(fp32, ctx, every, features)[-10:])) < 1e-6
    with pytest.raises(ValueError, match="not in the context rows"):
        check.offline_scores(fp32, ctx, ["nope"], features)


# --------------------------------------------------------------------------- the whole benchmark

HELP = """
import runpy, sys
sys.argv = ["benchmarks/serving.py", "--help"]
try:
    runpy.run_path("benchmarks/serving.py", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("torch", "onnxruntime", "torch_geometric", "fedcore") if m in sys.modules)
print("HEAVY:", ",".join(heavy) or "none")
"""


def test_help_loads_neither_torch_nor_fedcore() -> None:
    res = subprocess.run(
        [sys.executable, "-c", HELP], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "--smoke" in res.stdout and "HEAVY: none" in res.stdout


@pytest.mark.slow
def test_smoke_run_writes_results_and_targets_computed_from_them(tmp_path: Path) -> None:
    if not (ROOT / "fedcore" / "cli" / "serve_cmd.py").exists():
        pytest.skip("fed-client serve is not part of this checkout")
    out = tmp_path / "serving.json"
    env = dict(os.environ) | {"COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"results", "targets", "machine", "command", "seconds"}
    res = report["results"]
    assert res["mode"]["name"] == "smoke" and "reduced" in res
    assert res["setup"]["history_transactions"] == 20_000
    for name in ("int8", "fp32"):
        phases = res["variants"][name]["phases"]
        assert set(phases) == {
            "warmup",
            "serial-single",
            "single",
            "check-single",
            "serial-batch",
            "batch",
            "check-batch",
        }
        assert phases["serial-single"]["requests"] == 20 and phases["serial-batch"]["ok"] == 3
        assert phases["single"]["requests"] > 0 and phases["single"]["client_cpu_s"] >= 0.0
        assert phases["batch"]["rows_per_request"] == 100
    assert res["variants"]["fp32"]["model_file"] == "model.fp32.onnx"
    assert res["correctness"]["requests_checked"] >= 4
    assert report["targets"] == bench.targets(res)
    for t in report["targets"].values():
        assert set(t) == {"value", "goal", "met"}
    assert set(res["int8_vs_fp32"]) >= {"single_p99_ratio", "batch_throughput_ratio"}
