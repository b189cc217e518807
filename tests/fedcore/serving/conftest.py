"""Fixtures of the serving tests: a site's state with a real INT8 export and history, and ``fed-client serve`` as a process.

Pytest runs with ``--import-mode=importlib``, so tests cannot import from this file: every
helper here is a fixture; the ones that build or start things return a callable.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedcore.config import GeneratedData, HistorySpec, TaskSpec
from fedcore.data.generator import GENERATED_FEATURES, generate_transactions
from fedcore.data.graph import build_graph, feature_dim
from fedcore.data.transactions import Transactions

TASK = TaskSpec(hidden=8, layers=1, features=list(GENERATED_FEATURES))
HISTORY_ROWS = 400
"""Transactions of the site's history; the generated ones after them are the stream to score."""


def request_rows(tx: Transactions) -> list[dict[str, Any]]:
    """Transactions as ``/v1/score`` takes them (JSON objects, one per transaction)."""
    rows = []
    for i in range(len(tx.tx_id)):
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
        for name, values in tx.features.items():
            row[name] = float(values[i])
        rows.append(row)
    return rows


@dataclass(frozen=True)
class SiteState:
    """A site's state directory: ``export/run-1`` (INT8, checked) and ``history/history.sqlite``.

    Attributes:
        state: The state directory (copy it before serving: the service appends).
        export_dir: The export folder.
        stream: Later transactions of the same bank, as ``/v1/score`` rows, in time order.
        stream_labels: Their true labels.
    """

    state: Path
    export_dir: Path
    stream: list[dict[str, Any]]
    stream_labels: list[int]

    def copy(self, dest: Path) -> Path:
        """A fresh copy of the state directory under ``dest``; its path."""
        out = dest / "state"
        shutil.copytree(self.state, out)
        return out


@pytest.fixture(scope="session")
def site_state(tmp_path_factory: pytest.TempPathFactory) -> SiteState:
    """A bank's export of an untrained GNN (INT8 accepted at any drop) and its first 400 transactions."""
    from fedcore.export import CPU_PROVIDER, export_for_site
    from fedcore.models.fraud_gnn import build_model
    from fedcore.serving.history import HistoryStore, history_path
    from fedcore.training import seed_everything

    tx = generate_transactions(GeneratedData(transactions=700, fraud_rate=0.05), seed=1)
    seed_everything(0)
    model = build_model(TASK, feature_dim(TASK)).eval()
    state = tmp_path_factory.mktemp("site") / "state"
    export_dir = state / "export" / "run-1"
    import numpy as np

    past = tx.take(np.arange(HISTORY_ROWS))
    manifest = export_for_site(
        model,
        build_graph(past, TASK),
        export_dir,
        task=TASK,
        providers=[CPU_PROVIDER],
        tolerance=1.0,
        latency_runs=1,
    )
    assert manifest.path_taken == "onnx-dynamic"
    store = HistoryStore.open(history_path(state, HistorySpec()), TASK.features)
    try:
        store.append(past)
    finally:
        store.close()
    later = tx.take(np.arange(HISTORY_ROWS, len(tx.tx_id)))
    return SiteState(state, export_dir, request_rows(later), [int(v) for v in later.label])


@dataclass
class Running:
    """A ``fed-client serve`` process, its URL and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> tuple[int, str]:
        """SIGTERM, wait; the exit code and everything it printed."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.output()


@pytest.fixture
def start_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Running]]:
    """Start ``fed-client serve ARGS --host 127.0.0.1 --port 0``; wait for the URL it prints.

    Returns ``start(*args, expect_url=True)``; with ``expect_url=False`` it waits for the
    process to exit instead (a refused start). Every process started is killed by its PID
    after the test if it still runs.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, timeout: float = 180.0) -> Running:
        cmd = [sys.executable, "-m", "fedcore.cli.client_cmd", "serve", *args]
        cmd += ["--host", "127.0.0.1"] + ([] if "--port" in args else ["--port", "0"])
        env = dict(os.environ) | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        log = tmp_path_factory.mktemp("service") / "output.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("listening on "):
                    return Running(proc, line.split()[2], log)
            if proc.poll() is not None:
                return Running(proc, "", log)
            time.sleep(0.1)
        raise AssertionError(f"no URL within {timeout} s: {log.read_text(errors='replace')}")

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@dataclass(frozen=True)
class TrainedSite:
    """A bank's state with a trained model's export, and its later transactions (``shift`` 0 to 1)."""

    state: Path
    stream: Callable[[float, int], list[dict[str, Any]]]

    def copy(self, dest: Path) -> Path:
        """A fresh copy of the state directory under ``dest``; its path."""
        out = dest / "state"
        shutil.copytree(self.state, out)
        return out


@pytest.fixture(scope="session")
def trained_site(tmp_path_factory: pytest.TempPathFactory) -> TrainedSite:
    """3,000 transactions of a bank, a GNN trained on them (60 epochs) and exported, its history."""
    from fedcore.config.task import TrainingSpec
    from fedcore.data.generator.stream import generate_stream
    from fedcore.export import CPU_PROVIDER, export_for_site
    from fedcore.fraud_training import train_local
    from fedcore.models.fraud_gnn import build_model
    from fedcore.serving.history import HistoryStore, history_path
    from fedcore.training import seed_everything

    spec = GeneratedData(transactions=3000, fraud_rate=0.05)
    tx = generate_transactions(spec, seed=3)
    graph = build_graph(tx, TASK)
    seed_everything(0)
    model = build_model(TASK, feature_dim(TASK))
    train_local(model, graph, TrainingSpec(), seed=0, epochs=60)
    state = tmp_path_factory.mktemp("trained") / "state"
    export_for_site(
        model.eval(),
        graph,
        state / "export" / "run-1",
        task=TASK,
        providers=[CPU_PROVIDER],
        tolerance=1.0,
        latency_runs=1,
    )
    store = HistoryStore.open(history_path(state, HistorySpec()), TASK.features)
    try:
        store.append(tx)
    finally:
        store.close()

    def stream(shift: float, n: int) -> list[dict[str, Any]]:
        return request_rows(generate_stream(spec, 3, transactions=n, shift=shift))

    return TrainedSite(state, stream)
