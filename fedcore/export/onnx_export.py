"""Export a fraud GNN to ONNX and run it with ONNX Runtime on the first available execution provider."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcore.data.graph import FraudGraph

log = logging.getLogger(__name__)

INPUT_NAMES = ("x", "edge_index")
"""ONNX input names: node features ``float32 [N, F]`` and edges ``int64 [2, E]``."""

OUTPUT_NAME = "logits"
"""ONNX output name: one fraud logit per node, ``float32 [N]``."""

CPU_PROVIDER = "CPUExecutionProvider"
"""ONNX Runtime's CPU execution provider, present in every build."""


class ExportError(RuntimeError):
    """A model could not be exported, quantized or checked."""


def graph_inputs(graph: FraudGraph) -> dict[str, np.ndarray]:
    """The ONNX feed of a site graph: ``{"x": float32 [N, F], "edge_index": int64 [2, E]}``."""
    d = graph.data
    return {
        "x": np.ascontiguousarray(d.x.detach().cpu().numpy(), dtype=np.float32),
        "edge_index": np.ascontiguousarray(d.edge_index.detach().cpu().numpy(), dtype=np.int64),
    }


def _torchscript_export(
    model: nn.Module, args: tuple[torch.Tensor, torch.Tensor], path: Path, opset: int
) -> None:
    with warnings.catch_warnings():
        # the tracer warns about FraudGNN's shape check (a Python bool) and the exporter
        # about its own deprecation; neither changes the exported graph
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={
                "x": {0: "num_nodes"},
                "edge_index": {1: "num_edges"},
                OUTPUT_NAME: {0: "num_nodes"},
            },
        )


def _dynamo_export(
    model: nn.Module, args: tuple[torch.Tensor, torch.Tensor], path: Path, opset: int
) -> None:
    from torch.export import Dim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes={"x": {0: Dim("num_nodes")}, "edge_index": {1: Dim("num_edges")}},
            verbose=False,
        )


def export_onnx(model: nn.Module, graph: FraudGraph, path: Path | str, *, opset: int = 17) -> Path:
    """Export an FP32 graph model (``model(x, edge_index) -> logits [N]``) to ONNX.

    The graph's tensors are the example inputs; the numbers of nodes and edges are
    dynamic axes, so the file scores any graph with the same feature width. PyG's
    message passing becomes ``Gather`` + ``ScatterElements`` (add, then divide by the
    clipped degree for mean aggregation).

    Exporter: the TorchScript exporter (``dynamo=False``) is tried first: on torch 2.13
    and PyG 2.8 it exports ``FraudGNN`` at opset 17 in about a second and matches
    PyTorch to ~1e-7. The dynamo exporter (``torch.export``) also works, with the same
    operators, but takes ~10 s; it is the fallback for torch releases that drop the
    TorchScript path.

    Args:
        model: The model to export; left unchanged (a CPU copy in eval mode is exported).
        graph: Site graph whose ``x`` and ``edge_index`` serve as example inputs.
        path: Output ``.onnx`` file; parent folders are created.
        opset: ONNX opset (default: ``17``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: if neither exporter produced a file, with both reasons.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frozen = copy.deepcopy(model).cpu().eval()
    feed = graph_inputs(graph)
    args = (torch.from_numpy(feed["x"]), torch.from_numpy(feed["edge_index"]))
    errors: list[str] = []
    for name, exporter in (("torchscript", _torchscript_export), ("dynamo", _dynamo_export)):
        try:
            exporter(frozen, args, out, opset)
        except Exception as exc:  # every exporter failure is reported below
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.warning("ONNX export with the %s exporter failed: %s", name, exc)
            continue
        if out.is_file():
            log.debug("exported %s to %s with the %s exporter", type(model).__name__, out, name)
            return out
        errors.append(f"{name}: finished without writing {out}")
    raise ExportError(
        f"could not export {type(model).__name__} to ONNX opset {opset}: "
        + "; ".join(errors)
        + " (try another opset, or use the torch-dynamic INT8 fallback)"
    )


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
    """Logits ``float32 [N]`` of one ONNX Runtime run on ``feed`` (see :func:`graph_inputs`)."""
    out = session.run([OUTPUT_NAME], dict(feed))[0]
    return np.asarray(out, dtype=np.float32).reshape(-1)
