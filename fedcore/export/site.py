"""Turn the global model into the model a site serves: FP32 ONNX, INT8, accuracy gate, latency, manifest."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import fedcore
from fedcore.config import TaskSpec
from fedcore.data.graph import FraudGraph
from fedcore.export.layered import layers_of, scoring_batch
from fedcore.export.manifest import (
    OPTIONAL_COLUMNS,
    ExportManifest,
    ScoreReference,
    input_columns,
    node_feature_names,
    sha256_file,
)
from fedcore.export.onnx_export import (
    OUTPUT_NAME,
    ExportError,
    export_onnx,
    ort_session,
    run_session,
    select_provider,
)
from fedcore.export.quantize import (
    PathTaken,
    QuantizedModel,
    quantize_dynamic_int8,
    quantize_static_int8,
    torch_dynamic_int8,
)
from fedcore.metrics import METRIC_KEYS, binary_metrics
from fedcore.storage import atomic_path, private_dir

log = logging.getLogger(__name__)

FP32_ONNX = "model.fp32.onnx"
INT8_ONNX = "model.int8.onnx"
FP32_TORCH = "model.fp32.pt"
INT8_TORCH = "model.int8.pt"
TORCH_PROVIDER = "torch-cpu"
"""``provider`` recorded when the served model is a PyTorch module (no ONNX Runtime)."""

ONNX_MATCH_ATOL = 1e-3
"""Largest |logit| difference allowed between the FP32 ONNX model and PyTorch."""


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))


def _score(logits: np.ndarray, labels: np.ndarray, metric: str, threshold: float) -> float:
    return float(binary_metrics(labels, _sigmoid(logits), threshold)[metric])


def gate(
    fp32_metric: float, int8_metric: float, tolerance: float, metric: str, num_test: int
) -> str | None:
    """Why an INT8 model is refused, or ``None`` when its metric drop is within ``tolerance``.

    Args:
        fp32_metric: Metric of the FP32 model.
        int8_metric: Metric of the INT8 model on the same inputs.
        tolerance: Largest accepted ``fp32_metric - int8_metric``.
        metric: Metric name, for the message.
        num_test: Test transactions, for the message.
    """
    if not (math.isfinite(fp32_metric) and math.isfinite(int8_metric)):
        return (
            f"cannot check the INT8 model: {metric} is undefined on the {num_test} held-out "
            f"test transactions (FP32 {fp32_metric}, INT8 {int8_metric}; no fraud among them?); "
            "serving FP32. Export at a site whose test split holds fraud"
        )
    drop = fp32_metric - int8_metric
    if drop > tolerance:
        return (
            f"INT8 model refused: {metric} fell from {fp32_metric:.4f} (FP32) to "
            f"{int8_metric:.4f} (INT8) on {num_test} held-out test transactions, a drop of "
            f"{drop:.4f} > tolerance {tolerance:.4f}; serving the FP32 model instead. "
            "Raise the tolerance to accept it, or try quantize_static_int8"
        )
    return None


def _latency_ms(run: Callable[[], object], runs: int) -> float:
    run()  # warm-up: first runs allocate and pick kernels
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _torch_logits(model: nn.Module, graph: FraudGraph) -> np.ndarray:
    with torch.no_grad():
        out: torch.Tensor = model(graph.data.x.cpu(), graph.data.edge_index.cpu())
    return out.detach().cpu().numpy().astype(np.float32).reshape(-1)


def _manifest(
    out: Path,
    served: str,
    *,
    path_taken: PathTaken,
    provider: str,
    task: TaskSpec,
    metric: str,
    fp32_metric: float,
    int8_metric: float | None,
    tolerance: float,
    refused: str | None,
    latency_ms: float,
    num_test: int,
    fp32_file: str | None,
    opset: int | None,
    inputs: tuple[str, ...],
    threshold: float,
    served_logits: np.ndarray,
    labels: np.ndarray,
) -> ExportManifest:
    path = out / served
    manifest = ExportManifest(
        file=served,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        path_taken=path_taken,
        provider=provider,
        metric=metric,
        fp32_metric=fp32_metric,
        int8_metric=int8_metric,
        drop=None if int8_metric is None else fp32_metric - int8_metric,
        tolerance=tolerance,
        refused=refused,
        latency_ms=latency_ms,
        test_transactions=num_test,
        fp32_file=fp32_file,
        fp32_sha256=None if fp32_file is None else sha256_file(out / fp32_file),
        input_names=inputs,
        output_name=OUTPUT_NAME,
        input_columns=input_columns(task),
        optional_columns=OPTIONAL_COLUMNS,
        feature_names=tuple(node_feature_names(task)),
        opset=opset,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        fedcore_version=fedcore.__version__,
        threshold=threshold,
        reference=ScoreReference.from_scores(_sigmoid(served_logits), labels, threshold),
    )
    manifest.write(out)
    return manifest


def export_for_site(
    model: nn.Module,
    graph: FraudGraph,
    out_dir: Path | str,
    *,
    task: TaskSpec,
    providers: Sequence[str],
    tolerance: float = 0.01,
    metric: str = "pr_auc",
    mode: Literal["dynamic", "static"] = "dynamic",
    opset: int = 17,
    latency_runs: int = 5,
    threads: int | None = None,
    threshold: float | None = None,
) -> ExportManifest:
    """Export, quantize and check the model a site will serve, and write its manifest.

    Steps: export the FP32 model to ONNX in the layer-wise layout (``model.fp32.onnx``,
    checked against PyTorch); quantize it to INT8 (``model.int8.onnx``; ``dynamic``, or
    ``static`` calibrated on the site's training transactions); score the site's
    held-out test transactions with both on the first available of ``providers`` (same
    inputs: one :class:`~fedcore.export.layered.ScoringBatch` of the test transactions);
    serve INT8 only if ``metric`` drops by at most ``tolerance``, else delete it and
    serve the FP32 ONNX (``fp32-kept``); time the served model (median of
    ``latency_runs`` runs on that batch); write
    ``manifest.json``, with the operating ``threshold`` and the served model's score
    reference on the test transactions (:class:`~fedcore.export.manifest.ScoreReference`:
    decile bins and shares of its scores, its PR-AUC and flagged rate) for drift monitoring. When the model does not export to ONNX or ONNX Runtime cannot
    quantize it, PyTorch dynamic INT8 is checked the same way and its ``state_dict``
    saved (``model.int8.pt``, ``torch-dynamic``; FP32 ``model.fp32.pt`` kept beside).

    Args:
        model: Trained FP32 graph model (``model(x, edge_index) -> logits``); unchanged.
        graph: The site's graph; its test split is the check set. Nothing leaves the site.
        out_dir: Export folder (created).
        task: Task spec: feature names for the manifest, decision threshold.
        providers: ONNX Runtime execution providers, preferred first; the CPU provider
            is used when none is available.
        tolerance: Largest accepted drop of ``metric`` (default ``0.01``: one point of PR-AUC).
        metric: Gate metric, a key of ``fedcore.metrics.METRIC_KEYS`` (default ``pr_auc``).
        mode: ONNX Runtime quantization: ``dynamic`` (weights only) or ``static``.
        opset: ONNX opset.
        latency_runs: Timed runs for the latency median.
        threads: ONNX Runtime intra-op threads (default: its own choice).
        threshold: The site's operating threshold (``fedcore.tasks.operating_threshold``
            of this model), used for threshold metrics and recorded in the manifest
            (default ``task.threshold``).

    Returns:
        The manifest (also written as ``out_dir/manifest.json``).

    Raises:
        ValueError: for an unknown metric or mode, a non-finite tolerance, or a threshold
            outside [0, 1].
        ExportError: without test transactions, or when the FP32 ONNX model disagrees
            with PyTorch (a broken export).
    """
    if metric not in METRIC_KEYS:
        raise ValueError(f"metric must be one of {', '.join(METRIC_KEYS)}; found {metric!r}")
    if mode not in ("dynamic", "static"):
        raise ValueError(f"mode must be 'dynamic' or 'static'; found {mode!r}")
    if not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number; found {tolerance!r}")
    if latency_runs < 1:
        raise ValueError(f"latency_runs must be >= 1; found {latency_runs}")
    thr = task.threshold if threshold is None else float(threshold)
    if not (math.isfinite(thr) and 0.0 <= thr <= 1.0):
        raise ValueError(f"threshold must be a score in [0, 1]; found {threshold!r}")
    test = graph.data.test_mask.cpu().numpy().astype(bool)
    labels = graph.data.y.cpu().numpy()[test].astype(np.int64)
    num_test = int(test.sum())
    if num_test == 0:
        raise ExportError(
            "the site graph has no held-out test transactions to check the INT8 model on; "
            "set task.test_fraction > 0"
        )
    out = Path(out_dir)
    private_dir(out)
    fp32_model = copy.deepcopy(model).cpu().eval()
    ref_logits = _torch_logits(fp32_model, graph)
    fp32_metric = _score(ref_logits[test], labels, metric, thr)
    common: dict[str, Any] = {
        "task": task,
        "metric": metric,
        "tolerance": tolerance,
        "num_test": num_test,
        "threshold": thr,
        "labels": labels,
    }

    def torch_fallback(reason: str) -> ExportManifest:
        log.warning("%s; falling back to PyTorch dynamic INT8", reason)
        for stale in (FP32_ONNX, INT8_ONNX):
            (out / stale).unlink(missing_ok=True)
        with atomic_path(out / FP32_TORCH) as tmp:
            torch.save(fp32_model.state_dict(), tmp)
        quantized = torch_dynamic_int8(fp32_model).module
        assert quantized is not None
        int8_logits = _torch_logits(quantized, graph)
        int8_metric = _score(int8_logits[test], labels, metric, thr)
        refused = gate(fp32_metric, int8_metric, tolerance, metric, num_test)
        path_taken: PathTaken
        if refused:  # the accuracy guard at work, recorded in the manifest: not a fault
            log.info("%s", refused)
            (out / INT8_TORCH).unlink(missing_ok=True)
            served, served_model, path_taken = FP32_TORCH, fp32_model, "fp32-kept"
            served_logits = ref_logits[test]
        else:
            with atomic_path(out / INT8_TORCH) as tmp:
                torch.save(quantized.state_dict(), tmp)
            served, served_model, path_taken = INT8_TORCH, quantized, "torch-dynamic"
            served_logits = int8_logits[test]
        latency = _latency_ms(lambda: _torch_logits(served_model, graph), latency_runs)
        return _manifest(
            out,
            served,
            path_taken=path_taken,
            provider=TORCH_PROVIDER,
            fp32_metric=fp32_metric,
            int8_metric=int8_metric,
            refused=refused,
            latency_ms=latency,
            fp32_file=FP32_TORCH,
            opset=None,
            inputs=("x", "edge_index"),
            served_logits=served_logits,
            **common,
        )

    try:
        export_onnx(fp32_model, graph, out / FP32_ONNX, opset=opset)
    except ExportError as exc:
        return torch_fallback(str(exc))
    provider = select_provider(providers)
    fp32_session = ort_session(out / FP32_ONNX, provider, threads=threads)
    inputs = tuple(i.name for i in fp32_session.get_inputs())
    layers = layers_of(inputs)
    test_nodes = np.flatnonzero(test)  # ascending: the order of `labels`
    feed = scoring_batch(graph, layers, test_nodes).feed()
    onnx_logits = run_session(fp32_session, feed)
    diff = float(np.max(np.abs(onnx_logits - ref_logits[test]))) if num_test else 0.0
    if not diff <= ONNX_MATCH_ATOL:
        raise ExportError(
            f"the FP32 ONNX model disagrees with PyTorch: max |logit difference| {diff:.3g} > "
            f"{ONNX_MATCH_ATOL} on the site's test transactions ({provider}); the export is "
            "broken, report it with the torch, torch-geometric and onnxruntime versions"
        )
    fp32_metric = _score(onnx_logits, labels, metric, thr)
    try:
        if mode == "dynamic":
            q: QuantizedModel = quantize_dynamic_int8(out / FP32_ONNX, out / INT8_ONNX)
        else:  # calibrated on the training transactions; the gate judges on the test ones
            train_nodes = np.flatnonzero(graph.data.train_mask.cpu().numpy())
            calibration = [scoring_batch(graph, layers, train_nodes).feed()]
            q = quantize_static_int8(out / FP32_ONNX, out / INT8_ONNX, calibration)
        assert q.file is not None
        int8_session = ort_session(q.file, provider, threads=threads)
        int8_logits = run_session(int8_session, feed)
    except Exception as exc:  # an operator ONNX Runtime cannot quantize or run in INT8
        return torch_fallback(f"ONNX Runtime INT8 failed: {type(exc).__name__}: {exc}")
    int8_metric = _score(int8_logits, labels, metric, thr)
    refused = gate(fp32_metric, int8_metric, tolerance, metric, num_test)
    path_taken: PathTaken
    if refused:  # the accuracy guard at work, recorded in the manifest: not a fault
        log.info("%s", refused)
        (out / INT8_ONNX).unlink(missing_ok=True)
        served, session, path_taken = FP32_ONNX, fp32_session, "fp32-kept"
        served_logits = onnx_logits
    else:
        served, session, path_taken = INT8_ONNX, int8_session, q.path_taken
        served_logits = int8_logits
    latency = _latency_ms(lambda: run_session(session, feed), latency_runs)
    manifest = _manifest(
        out,
        served,
        path_taken=path_taken,
        provider=provider,
        fp32_metric=fp32_metric,
        int8_metric=int8_metric,
        refused=refused,
        latency_ms=latency,
        fp32_file=FP32_ONNX,
        opset=opset,
        inputs=inputs,
        served_logits=served_logits,
        **common,
    )
    log.info(
        "exported %s (%s, %s): %s %.4f -> %.4f, %.1f ms",
        served,
        path_taken,
        provider,
        metric,
        fp32_metric,
        int8_metric,
        latency,
    )
    return manifest
