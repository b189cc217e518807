"""Speed, size and accuracy of the fraud GNN served as FP32 PyTorch, FP32 ONNX Runtime, INT8 ONNX Runtime and PyTorch dynamic INT8.

Usage::

    python benchmarks/quantized_inference.py [--quick] --json /tmp/quantized_inference.json

One seeded generated bank (``--quick``: 8,000 transactions, else 20,000; 2 % fraud,
mixed customers) is turned into its graph, and a ``FraudGNN`` (hidden 64, 2 layers) is
trained on the train split with ``fedcore.training.train_local`` so that PR-AUC means
something. Every variant then runs in this one process on the CPU:

* **batch** = scoring the latest 1,000 held-out test transactions. A 2-layer GNN needs
  their 2-hop neighbourhood, so the batch is the subgraph induced by those
  transactions and every node within 2 hops (accounts, merchants, devices and the
  other transactions of those); its node and edge counts are in the report, and its
  scores equal the full-graph scores of the 1,000 targets (checked). Latency is one
  forward pass over that subgraph; p50/p99 over the timed runs after warm-up, taken
  round-robin (each round runs every variant once);
  throughput = 1,000 / p50.
* **metric** = PR-AUC over all test transactions (full site graph), per variant; its
  drop is against FP32 PyTorch.
* **size** = bytes of the served file (ONNX file, or the ``torch.save``'d state dict),
  plus the bytes of the weights alone.

Threads: ``torch.set_num_threads(T)`` and ONNX Runtime ``intra_op_num_threads=T``
(inter-op 1), ``T`` = ``--threads`` (default: CPU count, at most 4); both recorded.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import typer
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table
from torch_geometric.utils import k_hop_subgraph

import fedcore
from fedcore.config import GeneratedData, TaskSpec, TrainingSpec
from fedcore.data.generator import GENERATED_FEATURES, generate_transactions
from fedcore.data.graph import FraudGraph, build_graph, feature_dim
from fedcore.export import (
    CPU_PROVIDER,
    export_onnx,
    graph_inputs,
    ort_session,
    quantize_dynamic_int8,
    quantize_static_int8,
    run_session,
    torch_dynamic_int8,
)
from fedcore.metrics import binary_metrics
from fedcore.models.fraud_gnn import build_model
from fedcore.training import seed_everything, train_local

SEED = 7
BATCH = 1000

console = Console(width=None if sys.stdout.isatty() else 160)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z.astype(np.float64))))


def pr_auc(logits: np.ndarray, graph: FraudGraph) -> float:
    test = graph.data.test_mask.numpy()
    return float(binary_metrics(graph.data.y.numpy()[test], _sigmoid(logits[test]))["pr_auc"])


def batch_of_latest(graph: FraudGraph, layers: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feed of the subgraph needed to score the latest ``BATCH`` test transactions, and their rows in it."""
    test_nodes = torch.nonzero(graph.data.test_mask).view(-1)
    targets = test_nodes[-BATCH:]
    subset, edge_index, mapping, _ = k_hop_subgraph(
        targets,
        layers,
        graph.data.edge_index,
        relabel_nodes=True,
        num_nodes=int(graph.data.num_nodes),
    )
    feed: dict[str, np.ndarray] = {
        "x": np.ascontiguousarray(graph.data.x[subset].numpy(), dtype=np.float32),
        "edge_index": np.ascontiguousarray(edge_index.numpy(), dtype=np.int64),
    }
    return feed, mapping.numpy()


def time_round_robin(fns: list[Callable[[], object]], warmup: int, runs: int) -> np.ndarray:
    """Milliseconds ``[len(fns), runs]``; each round runs every variant once, so load drifts hit all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    out = np.empty((len(fns), runs))
    for i in range(runs):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            out[k, i] = (time.perf_counter() - start) * 1000.0
    return out


def onnx_weight_bytes(path: Path) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def state_dict_bytes(module: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def torch_weight_bytes(module: torch.nn.Module) -> int:
    total = 0
    for value in module.state_dict().values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):  # packed quantized linear: (weight, bias)
            for t in value:
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def target(value: float | None, goal: str, met: bool | None) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": met}


def machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "ort_intra_op_threads": threads,
        "ort_inter_op_threads": 1,
        "ort_provider": CPU_PROVIDER,
        "quantized_engine": torch.backends.quantized.engine,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "fedcore": fedcore.__version__,
    }


def main(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results (JSON).")],
    quick: Annotated[
        bool,
        typer.Option("--quick", help="8,000 transactions and 30 timed runs (else 20,000 and 60)."),
    ] = False,
    threads: Annotated[
        int, typer.Option("--threads", help="Torch and ONNX Runtime intra-op threads.")
    ] = min(4, os.cpu_count() or 1),
    hidden: Annotated[int, typer.Option("--hidden", help="GNN hidden width.")] = 64,
) -> None:
    """Train briefly, export, quantize, and compare every serving variant side by side."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    transactions, epochs, runs, warmup = (8000, 40, 30, 3) if quick else (20000, 60, 60, 5)
    task = TaskSpec(hidden=hidden, layers=2, dropout=0.1, features=list(GENERATED_FEATURES))
    spec = GeneratedData(transactions=transactions, fraud_rate=0.02, customer_mix="mixed")
    graph = build_graph(generate_transactions(spec, SEED), task)
    seed_everything(SEED)
    model = build_model(task, feature_dim(task))
    stats = train_local(model, graph, TrainingSpec(lr=0.02), seed=SEED, epochs=epochs)
    model.eval()
    console.print(f"{graph}; trained {epochs} epochs in {stats.seconds:.1f} s")

    full = graph_inputs(graph)
    feed, targets = batch_of_latest(graph, task.layers)
    x_sub, ei_sub = torch.from_numpy(feed["x"]), torch.from_numpy(feed["edge_index"])
    x_full, ei_full = torch.from_numpy(full["x"]), torch.from_numpy(full["edge_index"])

    tmp = Path(tempfile.mkdtemp(prefix="fedcore-qbench-"))
    fp32_path = export_onnx(model, graph, tmp / "model.fp32.onnx")
    int8_path = quantize_dynamic_int8(fp32_path, tmp / "model.int8.onnx").file
    static_path = quantize_static_int8(fp32_path, tmp / "model.int8-static.onnx", [full]).file
    assert int8_path is not None and static_path is not None
    torch_int8 = torch_dynamic_int8(model).module
    assert torch_int8 is not None

    def torch_fn(m: torch.nn.Module, x: torch.Tensor, ei: torch.Tensor) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with torch.no_grad():
                return np.asarray(m(x, ei).numpy())

        return run

    def ort_fn(session: Any, f: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: run_session(session, f)

    sessions = {
        p: ort_session(p, CPU_PROVIDER, threads=threads)
        for p in (fp32_path, int8_path, static_path)
    }
    variants: list[dict[str, Any]] = [
        {
            "variant": "fp32-torch",
            "batch": torch_fn(model, x_sub, ei_sub),
            "full": torch_fn(model, x_full, ei_full),
            "file_bytes": state_dict_bytes(model),
            "weight_bytes": torch_weight_bytes(model),
        },
        {
            "variant": "fp32-onnxruntime",
            "batch": ort_fn(sessions[fp32_path], feed),
            "full": ort_fn(sessions[fp32_path], full),
            "file_bytes": fp32_path.stat().st_size,
            "weight_bytes": onnx_weight_bytes(fp32_path),
        },
        {
            "variant": "int8-onnxruntime-dynamic",
            "batch": ort_fn(sessions[int8_path], feed),
            "full": ort_fn(sessions[int8_path], full),
            "file_bytes": int8_path.stat().st_size,
            "weight_bytes": onnx_weight_bytes(int8_path),
        },
        {
            "variant": "int8-onnxruntime-static",
            "batch": ort_fn(sessions[static_path], feed),
            "full": ort_fn(sessions[static_path], full),
            "file_bytes": static_path.stat().st_size,
            "weight_bytes": onnx_weight_bytes(static_path),
        },
        {
            "variant": "int8-torch-dynamic",
            "batch": torch_fn(torch_int8, x_sub, ei_sub),
            "full": torch_fn(torch_int8, x_full, ei_full),
            "file_bytes": state_dict_bytes(torch_int8),
            "weight_bytes": torch_weight_bytes(torch_int8),
        },
    ]

    reference_full = variants[0]["full"]()
    timings = time_round_robin([v["batch"] for v in variants], warmup, runs)
    rows: list[dict[str, Any]] = []
    for v, ms in zip(variants, timings, strict=True):
        full_logits = v["full"]()
        batch_logits = v["batch"]()
        p50 = float(np.percentile(ms, 50))
        rows.append(
            {
                "variant": v["variant"],
                "p50_ms": p50,
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
                "throughput_tx_per_s": BATCH / (p50 / 1000.0),
                "file_bytes": v["file_bytes"],
                "weight_bytes": v["weight_bytes"],
                "pr_auc": pr_auc(full_logits, graph),
                "batch_vs_full_graph_max_abs_logit_diff": float(
                    np.max(
                        np.abs(
                            batch_logits[targets]
                            - full_logits[graph.data.test_mask.numpy()][-BATCH:]
                        )
                    )
                ),
                "max_abs_logit_diff_vs_fp32_torch_test": float(
                    np.max(np.abs(full_logits - reference_full)[graph.data.test_mask.numpy()])
                ),
            }
        )
    base = rows[0]
    for r in rows:
        r["speedup_vs_fp32_torch"] = base["p50_ms"] / r["p50_ms"]
        r["pr_auc_drop_points_vs_fp32_torch"] = 100.0 * (base["pr_auc"] - r["pr_auc"])
        r["size_ratio_vs_fp32_onnx"] = rows[1]["file_bytes"] / r["file_bytes"]
        r["weight_ratio_vs_fp32_onnx"] = rows[1]["weight_bytes"] / r["weight_bytes"]

    by = {r["variant"]: r for r in rows}
    int8 = by["int8-onnxruntime-dynamic"]
    speedup = int8["speedup_vs_fp32_torch"]
    drop = int8["pr_auc_drop_points_vs_fp32_torch"]
    size_ratio = int8["size_ratio_vs_fp32_onnx"]
    p99 = int8["p99_ms"]
    goals = {
        "int8_speedup_vs_fp32_torch": target(
            speedup, ">= 2.0 (p50, INT8 ONNX Runtime dynamic)", speedup >= 2.0
        ),
        "int8_metric_drop_points": target(drop, "<= 1.0 point of PR-AUC", drop <= 1.0),
        "int8_size_ratio": target(
            size_ratio, ">= 3.5 (FP32 ONNX file / INT8 ONNX file)", size_ratio >= 3.5
        ),
        "int8_p99_ms_1000_tx": target(p99, "< 50 ms", p99 < 50.0),
    }
    report: dict[str, Any] = {
        "results": rows,
        "targets": goals,
        "setup": {
            "transactions": transactions,
            "graph_nodes": int(graph.data.num_nodes),
            "graph_edges": int(graph.data.num_edges),
            "test_transactions": graph.num_test,
            "test_fraud": graph.num_test_pos,
            "model": repr(model),
            "train_epochs": epochs,
            "train_seconds": stats.seconds,
            "batch": (
                f"the latest {BATCH} test transactions and every node within "
                f"{task.layers} hops (induced subgraph); metric over all test transactions"
            ),
            "batch_nodes": int(feed["x"].shape[0]),
            "batch_edges": int(feed["edge_index"].shape[1]),
            "timed_runs": runs,
            "warmup_runs": warmup,
        },
        "machine": machine(threads),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": time.perf_counter() - started,
    }
    json_out.write_text(json.dumps(report, indent=2, default=str))

    table = Table(
        title=f"Scoring {BATCH} test transactions ({feed['x'].shape[0]:,} nodes, {feed['edge_index'].shape[1]:,} edges), {threads} thread(s)"
    )
    for col in (
        "variant",
        "p50 ms",
        "p99 ms",
        "tx/s",
        "x fp32 torch",
        "KB file",
        "KB weights",
        "PR-AUC",
        "drop pts",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['throughput_tx_per_s']:,.0f}",
            f"{r['speedup_vs_fp32_torch']:.2f}",
            f"{r['file_bytes'] / 1024:.1f}",
            f"{r['weight_bytes'] / 1024:.1f}",
            f"{r['pr_auc']:.4f}",
            f"{r['pr_auc_drop_points_vs_fp32_torch']:+.2f}",
        )
    console.print(table)
    for name, t in goals.items():
        console.print(
            f"{name}: {t['value']:.3f} (goal {t['goal']}): {'met' if t['met'] else 'NOT met'}"
        )
    console.print(f"wrote {json_out} in {report['seconds']:.1f} s")


if __name__ == "__main__":
    typer.run(main)
