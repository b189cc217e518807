"""Export a fraud GNN to ONNX and run it with ONNX Runtime on the first available execution provider."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedcore.data.graph import FraudGraph
from fedcore.storage import atomic_path, private_dir

if TYPE_CHECKING:
    from fedcore.export.layered import ScoringBatch

log = logging.getLogger(__name__)

OUTPUT_NAME = "logits"
"""ONNX output name: one fraud logit per target of the batch, ``float32 [T]``."""

CPU_PROVIDER = "CPUExecutionProvider"
"""ONNX Runtime's CPU execution provider, present in every build."""


class ExportError(RuntimeError):
    """A model could not be exported, quantized or checked."""


def _torchscript_export(
    model: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: Path, opset: int
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notice
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={  # every size varies; so does the chunk width of `nbr`
                n: {0: f"{n}_rows", 1: f"{n}_width"} if n.startswith("nbr") else {0: f"{n}_rows"}
                for n in names
            }
            | {OUTPUT_NAME: {0: "targets"}},
        )


def export_onnx(
    model: nn.Module, graph: FraudGraph | ScoringBatch, path: Path | str, *, opset: int = 17
) -> Path:
    """Export an FP32 fraud GNN to ONNX in fedcore's layer-wise layout.

    The model becomes a :class:`~fedcore.export.layered.LayeredGNN` (same numbers; each
    SAGE layer one fused matrix product), written as a compact hand-built graph
    (:func:`~fedcore.export.layered.layered_onnx`: per-row sums from chunk sums and
    float64 running sums, ~1.4 KB of structure). Its inputs are
    :func:`~fedcore.export.layered.input_names` (a
    :class:`~fedcore.export.layered.ScoringBatch` feed); every size is dynamic, so the
    file scores any batch of any graph with the same feature width. Should the
    hand-built graph fail its check, ``torch.onnx`` (TorchScript exporter) exports the
    same module instead: the same sums, in a larger graph.

    Args:
        model: A trained ``FraudGNN``; left unchanged (a CPU copy is exported).
        graph: A site graph or batch: example inputs for the ``torch.onnx`` path.
        path: Output ``.onnx`` file; parent folders are created.
        opset: ONNX opset (default: ``17``; at least 16).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: if the model is not a layer-wise exportable GNN, or neither way
            produced a file, with the reasons.
    """
    import onnx

    from fedcore.export.layered import (
        LayeredGNN,
        ScoringBatch,
        input_names,
        layered_onnx,
        scoring_batch,
    )

    out = Path(path)
    private_dir(out.parent)
    layered = LayeredGNN.from_model(copy.deepcopy(model).cpu().eval())
    try:
        proto = layered_onnx(layered, opset=opset)
        with atomic_path(out) as tmp:  # owner-only, whole or not at all
            onnx.save(proto, str(tmp))
        log.debug("exported %s to %s as a layer-wise ONNX graph", type(model).__name__, out)
        return out
    except ExportError:
        raise
    except Exception as exc:  # an onnx checker or writer failure: try torch.onnx below
        first = f"layer-wise graph: {type(exc).__name__}: {exc}"
        log.warning("the layer-wise ONNX graph failed (%s); trying torch.onnx", exc)
    layers = len(layered.layers)
    batch = graph if isinstance(graph, ScoringBatch) else scoring_batch(graph, layers)
    try:
        with atomic_path(out) as tmp:
            _torchscript_export(layered, batch.tensors(), list(input_names(layers)), tmp, opset)
    except Exception as exc:  # reported with the first failure
        raise ExportError(
            f"could not export {type(model).__name__} to ONNX opset {opset}: {first}; "
            f"torch.onnx: {type(exc).__name__}: {exc} (try another opset, or use the "
            "torch-dynamic INT8 fallback)"
        ) from exc
    if not out.is_file():
        raise ExportError(
            f"could not export {type(model).__name__}: {first}; torch.onnx wrote no file"
        )
    return out


def available_providers() -> list[str]:
    """ONNX Runtime execution providers of this installation, best first."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def select_provider(requested: Sequence[str], available: Sequence[str] | None = None) -> str:
    """The first of ``requested`` that ONNX Runtime offers here, else the CPU provider.

    Args:
        requested: Execution providers in order of preference, e.g.
            ``["CUDAExecutionProvider", "CPUExecutionProvider"]``.
        available: Providers to choose from (default: :func:`available_providers`).

    Returns:
        A provider name; ``"CPUExecutionProvider"`` (with a warning) when none of
        ``requested`` is available.
    """
    have = list(available_providers() if available is None else available)
    for name in requested:
        if name in have:
            return name
    if requested:
        log.warning(
            "none of the requested ONNX Runtime providers %s is available here (available: %s); "
            "using %s",
            ", ".join(requested),
            ", ".join(have) or "none",
            CPU_PROVIDER,
        )
    return CPU_PROVIDER


def ort_session(
    path: Path | str, provider: str = CPU_PROVIDER, *, threads: int | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``provider`` (CPU as its fallback).

    Args:
        path: ONNX file.
        provider: Execution provider to run on.
        threads: Intra-op threads (default: ONNX Runtime's choice); inter-op is 1.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None; found {threads}")
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: quantized graphs log harmless shape notes
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def run_session(session: Any, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Logits ``float32 [N]`` of one ONNX Runtime run on ``feed`` (see :meth:`~fedcore.export.layered.ScoringBatch.feed`)."""
    out = session.run([OUTPUT_NAME], dict(feed))[0]
    return np.asarray(out, dtype=np.float32).reshape(-1)
