"""Speed, size and accuracy of the fraud GNN served as FP32 PyTorch, FP32 ONNX Runtime, INT8 ONNX Runtime and PyTorch dynamic INT8.

Usage::

    python benchmarks/quantized_inference.py [--quick] --json /tmp/quantized_inference.json

One seeded generated bank (``--quick``: 8,000 transactions, else 20,000; 2 % fraud,
mixed customers) is turned into its graph, and a ``FraudGNN`` (hidden 64, 2 layers) is
trained on the train split with ``fedcore.fraud_training.train_local`` so that PR-AUC means
something. Every variant then runs in this one process on the CPU:

* **batch** = scoring the latest 1,000 held-out test transactions. A 2-layer GNN needs
  their 2-hop neighbourhood. ``fp32-torch`` is the FraudGNN as the federation trains
  it (PyG ``SAGEConv``), run on the subgraph induced by the targets and every node
  within 2 hops. The other variants run fedcore's layer-wise layout
  (``fedcore.export.layered``): layer 2 computes only the 1,000 targets, layer 1 only
  them and their neighbours; ``fp32-torch-layerwise`` is that same computation in FP32
  PyTorch, so comparing INT8 with it isolates what INT8 and ONNX Runtime add. Every
  variant's batch scores equal its own scores of those transactions in the full test
  batch (checked). Latency = one model run on prepared inputs; p50/p99 over the timed
  runs after warm-up, taken round-robin (each round runs every variant once);
  throughput = 1,000 / p50. **End to end** adds preparing the inputs from the site
  graph (``k_hop_subgraph``; ``NeighbourIndex.cut`` on an index built once per graph).
* **metric** = PR-AUC over all test transactions, per variant; its drop is against
  FP32 PyTorch.
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
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

import fedcore
from fedcore.config import GeneratedData, TaskSpec, TrainingSpec

if TYPE_CHECKING:  # torch, ONNX and PyG load in the functions that use them: --help stays fast
    import torch

    from fedcore.data.graph import FraudGraph

SEED = 7
BATCH = 1000

console = Console(width=None if sys.stdout.isatty() else 160)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z.astype(np.float64))))


def pr_auc(test_logits: np.ndarray, graph: FraudGraph) -> float:
    """PR-AUC of logits of every test transaction, in node order."""
    from fedcore.metrics import binary_metrics

    test = graph.data.test_mask.numpy()
    return float(binary_metrics(graph.data.y.numpy()[test], _sigmoid(test_logits))["pr_auc"])


def pyg_subgraph(
    graph: FraudGraph, targets: torch.Tensor, layers: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Features and edges of the subgraph induced by ``targets`` and every node within ``layers`` hops, and the targets' rows in it."""
    from torch_geometric.utils import k_hop_subgraph

    subset, edge_index, mapping, _ = k_hop_subgraph(
        targets,
        layers,
        graph.data.edge_index,
        relabel_nodes=True,
        num_nodes=int(graph.data.num_nodes),
    )
    return graph.data.x[subset], edge_index, mapping.numpy()


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
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def state_dict_bytes(module: torch.nn.Module) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def torch_weight_bytes(module: torch.nn.Module) -> int:
    import torch

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
    import onnx
    import onnxruntime as ort
    import torch

    from fedcore.export import CPU_PROVIDER

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
    import torch

    from fedcore.data.generator import GENERATED_FEATURES, generate_transactions
    from fedcore.data.graph import build_graph, feature_dim
    from fedcore.export import (
        CPU_PROVIDER,
        LayeredGNN,
        NeighbourIndex,
        ScoringBatch,
        export_onnx,
        ort_session,
        quantize_dynamic_int8,
        quantize_static_int8,
        run_session,
        torch_dynamic_int8,
    )
    from fedcore.fraud_training import train_local
    from fedcore.models.fraud_gnn import build_model
    from fedcore.training import seed_everything

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

    test_nodes = torch.nonzero(graph.data.test_mask).view(-1)
    targets = test_nodes[-BATCH:]
    layers = task.layers
    sub_x, sub_ei, sub_rows = pyg_subgraph(graph, targets, layers)
    index_started = time.perf_counter()
    index = NeighbourIndex(graph.data.edge_index, int(graph.data.num_nodes))
    index_ms = (time.perf_counter() - index_started) * 1000.0
    batch = index.cut(graph.data.x, layers, targets)
    test_batch = index.cut(graph.data.x, layers, test_nodes)  # every test transaction
    train_batch = index.cut(graph.data.x, layers, torch.nonzero(graph.data.train_mask).view(-1))
    feed, test_feed = batch.feed(), test_batch.feed()

    tmp = Path(tempfile.mkdtemp(prefix="fedcore-qbench-"))
    fp32_path = export_onnx(model, graph, tmp / "model.fp32.onnx")
    int8_path = quantize_dynamic_int8(fp32_path, tmp / "model.int8.onnx").file
    static_path = quantize_static_int8(
        fp32_path, tmp / "model.int8-static.onnx", [train_batch.feed()]
    ).file
    assert int8_path is not None and static_path is not None
    layered = LayeredGNN.from_model(model)
    torch_int8 = torch_dynamic_int8(layered).module
    assert torch_int8 is not None

    def pyg_fn(x: torch.Tensor, ei: torch.Tensor, rows: np.ndarray) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with torch.no_grad():
                return np.asarray(model(x, ei).numpy()[rows])

        return run

    def layered_fn(m: torch.nn.Module, b: ScoringBatch) -> Callable[[], np.ndarray]:
        tensors = b.tensors()

        def run() -> np.ndarray:
            with torch.no_grad():
                return np.asarray(m(*tensors).numpy())

        return run

    def ort_fn(session: Any, f: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: run_session(session, f)

    sessions = {
        p: ort_session(p, CPU_PROVIDER, threads=threads)
        for p in (fp32_path, int8_path, static_path)
    }
    test_rows = test_nodes.numpy()
    variants: list[dict[str, Any]] = [
        {
            "variant": "fp32-torch",
            "what": "FraudGNN as trained (PyG SAGEConv) on the 2-hop induced subgraph",
            "batch": pyg_fn(sub_x, sub_ei, sub_rows),
            "test": pyg_fn(graph.data.x, graph.data.edge_index, test_rows),
            "file_bytes": state_dict_bytes(model),
            "weight_bytes": torch_weight_bytes(model),
        },
        {
            "variant": "fp32-torch-layerwise",
            "what": "the same weights and sums as LayeredGNN on the layer-wise batch",
            "batch": layered_fn(layered, batch),
            "test": layered_fn(layered, test_batch),
            "file_bytes": state_dict_bytes(layered),
            "weight_bytes": torch_weight_bytes(layered),
        },
        {
            "variant": "fp32-onnxruntime",
            "what": "layer-wise ONNX graph, FP32",
            "batch": ort_fn(sessions[fp32_path], feed),
            "test": ort_fn(sessions[fp32_path], test_feed),
            "file_bytes": fp32_path.stat().st_size,
            "weight_bytes": onnx_weight_bytes(fp32_path),
        },
        {
            "variant": "int8-onnxruntime-dynamic",
            "what": "what a site serves: layer-wise ONNX, dynamic INT8 (quantize_dynamic)",
            "batch": ort_fn(sessions[int8_path], feed),
            "test": ort_fn(sessions[int8_path], test_feed),
            "file_bytes": int8_path.stat().st_size,
            "weight_bytes": onnx_weight_bytes(int8_path),
        },
        {
            "variant": "int8-onnxruntime-static",
            "what": "layer-wise ONNX, static INT8 (QDQ, calibrated on the train transactions)",
            "batch": ort_fn(sessions[static_path], feed),
            "test": ort_fn(sessions[static_path], test_feed),
            "file_bytes": static_path.stat().st_size,
            "weight_bytes": onnx_weight_bytes(static_path),
        },
        {
            "variant": "int8-torch-dynamic",
            "what": "LayeredGNN with torch.ao dynamic INT8 linears",
            "batch": layered_fn(torch_int8, batch),
            "test": layered_fn(torch_int8, test_batch),
            "file_bytes": state_dict_bytes(torch_int8),
            "weight_bytes": torch_weight_bytes(torch_int8),
        },
    ]
    int8_session = sessions[int8_path]

    def pyg_end_to_end() -> np.ndarray:
        x, ei, rows = pyg_subgraph(graph, targets, layers)
        return pyg_fn(x, ei, rows)()

    def served_end_to_end() -> np.ndarray:
        return run_session(int8_session, index.cut(graph.data.x, layers, targets).feed())

    end_to_end = [
        ("fp32-torch", "k_hop_subgraph + FraudGNN", pyg_end_to_end),
        ("int8-onnxruntime-dynamic", "NeighbourIndex.cut + INT8 ONNX Runtime", served_end_to_end),
    ]

    reference_test = variants[0]["test"]()
    reference_batch = reference_test[-BATCH:]  # the targets are the last BATCH test nodes
    fns = [v["batch"] for v in variants] + [fn for _, _, fn in end_to_end]
    timings = time_round_robin(fns, warmup, runs)
    rows: list[dict[str, Any]] = []
    for v, ms in zip(variants, timings[: len(variants)], strict=True):
        test_logits = v["test"]()
        batch_logits = v["batch"]()
        p50 = float(np.percentile(ms, 50))
        rows.append(
            {
                "variant": v["variant"],
                "what": v["what"],
                "p50_ms": p50,
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
                "throughput_tx_per_s": BATCH / (p50 / 1000.0),
                "file_bytes": v["file_bytes"],
                "weight_bytes": v["weight_bytes"],
                "pr_auc": pr_auc(test_logits, graph),
                "batch_vs_test_batch_max_abs_logit_diff": float(
                    np.max(np.abs(batch_logits - test_logits[-BATCH:]))
                ),
                "max_abs_logit_diff_vs_fp32_torch_batch": float(
                    np.max(np.abs(batch_logits - reference_batch))
                ),
                "max_abs_logit_diff_vs_fp32_torch_test": float(
                    np.max(np.abs(test_logits - reference_test))
                ),
            }
        )
    base, layer_base = rows[0], rows[1]
    for r in rows:
        r["speedup_vs_fp32_torch"] = base["p50_ms"] / r["p50_ms"]
        r["speedup_vs_fp32_torch_layerwise"] = layer_base["p50_ms"] / r["p50_ms"]
        r["pr_auc_drop_points_vs_fp32_torch"] = 100.0 * (base["pr_auc"] - r["pr_auc"])
        r["size_ratio_vs_fp32_onnx"] = rows[2]["file_bytes"] / r["file_bytes"]
        r["weight_ratio_vs_fp32_onnx"] = rows[2]["weight_bytes"] / r["weight_bytes"]
    e2e_rows: list[dict[str, Any]] = []
    for (name, what, _), ms in zip(end_to_end, timings[len(variants) :], strict=True):
        e2e_rows.append(
            {
                "variant": name,
                "what": what,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
            }
        )
    e2e_rows[1]["speedup_vs_fp32_torch"] = e2e_rows[0]["p50_ms"] / e2e_rows[1]["p50_ms"]

    by = {r["variant"]: r for r in rows}
    int8 = by["int8-onnxruntime-dynamic"]
    speedup = int8["speedup_vs_fp32_torch"]
    same = int8["speedup_vs_fp32_torch_layerwise"]
    drop = int8["pr_auc_drop_points_vs_fp32_torch"]
    size_ratio = int8["size_ratio_vs_fp32_onnx"]
    p99 = e2e_rows[1]["p99_ms"]
    goals = {
        "int8_speedup_vs_fp32_torch": target(
            speedup,
            ">= 2.0 (p50 of the model run: served INT8 ONNX Runtime vs FraudGNN as trained, "
            "PyG on the 2-hop subgraph)",
            speedup >= 2.0,
        ),
        "int8_speedup_vs_fp32_torch_same_computation": target(
            same,
            ">= 2.0 (stricter: vs the same layer-wise computation in FP32 PyTorch, so only "
            "INT8 and ONNX Runtime differ)",
            same >= 2.0,
        ),
        "int8_metric_drop_points": target(drop, "<= 1.0 point of PR-AUC", drop <= 1.0),
        "int8_size_ratio": target(
            size_ratio, ">= 3.5 (FP32 ONNX file / INT8 ONNX file)", size_ratio >= 3.5
        ),
        "int8_p99_ms_1000_tx": target(
            p99, "< 50 ms (end to end: cutting the batch from the graph + INT8 run)", p99 < 50.0
        ),
    }
    report: dict[str, Any] = {
        "results": rows,
        "end_to_end": e2e_rows,
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
                f"the latest {BATCH} test transactions; PyG runs on every node within "
                f"{layers} hops (induced subgraph), the layer-wise variants on the rows each "
                "layer needs; metric over all test transactions"
            ),
            "subgraph_nodes": int(sub_x.shape[0]),
            "subgraph_edges": int(sub_ei.shape[1]),
            "layerwise_rows_per_layer": [len(batch.x), *(len(d) for d in batch.deg_inv)],
            "layerwise_edges_per_layer": [len(e) for e in batch.src],
            "layerwise_chunks_per_layer": [list(c.shape) for c in batch.nbr],
            "neighbour_index_build_ms": index_ms,
            "timed_runs": runs,
            "warmup_runs": warmup,
        },
        "machine": machine(threads),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": time.perf_counter() - started,
    }
    json_out.write_text(json.dumps(report, indent=2, default=str))

    table = Table(
        title=f"Scoring {BATCH} test transactions, {threads} thread(s): PyG subgraph "
        f"{sub_x.shape[0]:,} nodes / {sub_ei.shape[1]:,} edges; layer-wise rows "
        f"{report['setup']['layerwise_rows_per_layer']}"
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
    for r in e2e_rows:
        console.print(
            f"end to end, {r['variant']} ({r['what']}): p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms"
        )
    for name, t in goals.items():
        console.print(
            f"{name}: {t['value']:.3f} (goal {t['goal']}): {'met' if t['met'] else 'NOT met'}"
        )
    console.print(f"wrote {json_out} in {report['seconds']:.1f} s")


if __name__ == "__main__":
    typer.run(main)
