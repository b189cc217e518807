"""INT8 quantization of exported models: ONNX Runtime dynamic and static, with a PyTorch dynamic fallback."""

from __future__ import annotations

import copy
import itertools
import logging
import shutil
import string
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedcore.export.onnx_export import ExportError
from fedcore.storage import atomic_path, private_dir

log = logging.getLogger(__name__)

PathTaken = Literal["onnx-dynamic", "onnx-static", "torch-dynamic", "fp32-kept"]
"""How the served model was made: ONNX Runtime dynamic or static INT8, PyTorch dynamic
INT8 (when an operator does not export to ONNX), or FP32 kept (INT8 refused)."""

PATHS_TAKEN: tuple[PathTaken, ...] = ("onnx-dynamic", "onnx-static", "torch-dynamic", "fp32-kept")


@dataclass(frozen=True)
class QuantizedModel:
    """Result of one quantizer.

    Attributes:
        path_taken: Which quantizer made it (one of :data:`PATHS_TAKEN`).
        file: The quantized ONNX file (ONNX paths), else ``None``.
        module: The quantized PyTorch module (``torch-dynamic``), else ``None``.
    """

    path_taken: PathTaken
    file: Path | None = None
    module: nn.Module | None = None


PREPROCESSING_HINT = "pre-processing before quantization"
"""Words of ONNX Runtime's advice, logged on the root logger at every quantizer call, to run
its shape-inference pre-processing first (fedcore's layer-wise models need none)."""


class _DropPreprocessingHint(logging.Filter):
    """Drops ONNX Runtime's pre-processing advice; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and PREPROCESSING_HINT in str(record.msg))


@contextmanager
def quiet_preprocessing_hint() -> Iterator[None]:
    """While open, ONNX Runtime's "consider pre-processing before quantization" warning is dropped.

    ``onnxruntime.quantization`` logs it with ``logging.warning`` (the root logger) once or
    twice per quantizer call, so a run with five sites printed it five times. A filter on
    the root logger drops only that record: warnings from any logger, the root's included,
    still show. The filter is removed on exit.
    """
    root = logging.getLogger()
    hint = _DropPreprocessingHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


SMALL_MATMUL = 256
"""``MatMul`` weights with fewer elements stay FP32 under dynamic quantization: the
quantize/dequantize nodes would outweigh the bytes saved (the fraud GNN's 64x1 head)."""


def _small_matmuls(path: Path) -> list[str]:
    """Names of the ``MatMul`` nodes whose weight initializer is smaller than :data:`SMALL_MATMUL` (named if unnamed)."""
    import onnx

    proto = onnx.load(str(path))
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    small = []
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "MatMul" and sizes.get(node.input[1], SMALL_MATMUL) < SMALL_MATMUL:
            if not node.name:
                node.name = f"matmul{i}"
            small.append(node.name)
    if small:
        onnx.save(proto, str(path))
    return small


def quantize_dynamic_int8(onnx_path: Path | str, out_path: Path | str) -> QuantizedModel:
    """Dynamic INT8 quantization with ``onnxruntime.quantization.quantize_dynamic``.

    Weights of ``MatMul``/``Gemm`` become per-tensor ``QInt8``; activations are quantized
    on the fly at every run (``DynamicQuantizeLinear`` + ``MatMulInteger``). Needs no
    calibration data, which suits linear-heavy models such as the fraud GNN, whose
    message passing (gathers and sums) stays in FP32. ``MatMul`` layers smaller than
    :data:`SMALL_MATMUL` weights stay FP32, and the written graph gets short tensor
    names (:func:`compact_onnx`).

    Args:
        onnx_path: FP32 ONNX model.
        out_path: Where to write the INT8 model; parent folders are created.

    Raises:
        ExportError: if ONNX Runtime cannot quantize the model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = Path(onnx_path), Path(out_path)
    if not src.is_file():
        raise ExportError(f"FP32 ONNX model {src} not found; export it first with export_onnx")
    private_dir(out.parent)
    try:
        with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as written:
            named = Path(tmp) / "fp32.onnx"
            shutil.copyfile(src, named)
            small = _small_matmuls(named)
            with quiet_preprocessing_hint():
                quantize_dynamic(
                    named, written, weight_type=QuantType.QInt8, nodes_to_exclude=small
                )
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime dynamic INT8 quantization of {src} failed: {type(exc).__name__}: {exc} "
            "(use torch_dynamic_int8 on the PyTorch model instead)"
        ) from exc
    compact_onnx(out)
    return QuantizedModel("onnx-dynamic", file=out)


def compact_onnx(path: Path | str) -> None:
    """Rewrite an ONNX file with short names, in place; the computation is unchanged.

    Drops the stored intermediate shapes (ONNX Runtime infers them), node names and the
    model metadata (the quantizer's ``onnx.infer`` marker), and renames every intermediate tensor and
    initializer ``a``, ``b``, ... ``Z``, ``aa``, ... (graph inputs and outputs keep
    their names). The quantizer's names (``c1_scale_W1_scale_mul:0``) cost more bytes
    than a small model's INT8 weights save otherwise.
    """
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    del graph.value_info[:]
    del proto.metadata_props[:]
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    names: dict[str, str] = {}
    fresh = _short_names(keep)

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in names:
            names[name] = next(fresh)
        return names[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    graph.doc_string = ""
    with atomic_path(Path(path)) as tmp:
        onnx.save(proto, str(tmp))


def _short_names(taken: set[str]) -> Iterator[str]:
    """``a`` ... ``z``, ``A`` ... ``Z``, ``aa``, ``ab``, ...: the shortest names first, none of ``taken``."""
    letters = string.ascii_letters
    for size in itertools.count(1):
        for chars in itertools.product(letters, repeat=size):
            name = "".join(chars)
            if name not in taken:
                yield name


STATIC_OPS = ("Conv", "MatMul", "Gemm")
"""Operators static quantization turns INT8: the compute-heavy ones. Message passing
(``Gather``, the per-row sums, the ``1/degree`` scaling) stays FP32: quantizing it
costs accuracy (max probability error 0.18 vs 0.04 on the export tests' graph) and
saves no time."""


class FeedCalibrationReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a fixed list of feeds.

    Args:
        feeds: Input dicts (input name -> array), e.g. one
            :meth:`fedcore.export.layered.ScoringBatch.feed` per batch of site data.
    """

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(f) for f in feeds]
        if not self._feeds:
            raise ValueError(
                "static quantization needs at least one calibration input; found none "
                "(pass the site's own training batches)"
            )
        self._next = 0

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or ``None`` when all were read."""
        if self._next >= len(self._feeds):
            return None
        feed = self._feeds[self._next]
        self._next += 1
        return feed

    def rewind(self) -> None:
        """Start again from the first feed."""
        self._next = 0


def quantize_static_int8(
    onnx_path: Path | str,
    out_path: Path | str,
    calibration_inputs: Iterable[Mapping[str, np.ndarray]],
) -> QuantizedModel:
    """Static INT8 quantization (QDQ format, ``QInt8`` weights and activations).

    Activation ranges are calibrated (min/max) on ``calibration_inputs``, which must be
    the site's own data: they never leave the site. Meant for convolutional models,
    where quantizing activations too pays off; it also runs on the fraud GNN.

    Args:
        onnx_path: FP32 ONNX model.
        out_path: Where to write the INT8 model; parent folders are created.
        calibration_inputs: Feeds (input name -> array) matching the model's inputs.

    Raises:
        ValueError: without calibration inputs.
        ExportError: if ONNX Runtime cannot quantize the model.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src, out = Path(onnx_path), Path(out_path)
    if not src.is_file():
        raise ExportError(f"FP32 ONNX model {src} not found; export it first with export_onnx")
    feeds = FeedCalibrationReader(calibration_inputs)

    class _Reader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        def get_next(self) -> dict[str, np.ndarray] | None:
            return feeds.get_next()

        def rewind(self) -> None:
            feeds.rewind()

    private_dir(out.parent)
    try:
        with quiet_preprocessing_hint(), atomic_path(out) as written:
            quantize_static(
                src,
                written,
                _Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(STATIC_OPS),
            )
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime static INT8 quantization of {src} failed: {type(exc).__name__}: {exc} "
            "(check that the calibration inputs match the model's inputs, or use "
            "quantize_dynamic_int8)"
        ) from exc
    compact_onnx(out)
    return QuantizedModel("onnx-static", file=out)


def _plain_linears(model: nn.Module) -> int:
    """Swap PyG ``Linear`` layers for ``torch.nn.Linear`` with the same weights (in place)."""
    from torch_geometric.nn.dense.linear import Linear as PygLinear

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, PygLinear) or child.in_channels < 1:
                continue  # lazy layers (in_channels=-1) hold no weights yet
            plain = nn.Linear(child.in_channels, child.out_channels, bias=child.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(child.weight)
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
            setattr(parent, name, plain)
            swapped += 1
    return swapped


def torch_dynamic_int8(model: nn.Module) -> QuantizedModel:
    """PyTorch dynamic INT8 (``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear``).

    The fallback when an operator does not export to ONNX. PyG layers such as
    ``SAGEConv`` use PyG's own ``Linear``, which ``quantize_dynamic`` would skip, so a
    copy of the model first gets plain ``nn.Linear`` layers with the same weights.

    Args:
        model: FP32 model; left unchanged.

    Returns:
        ``QuantizedModel("torch-dynamic", module=...)``: a CPU module in eval mode.

    Raises:
        ExportError: if this PyTorch build has no dynamic quantization.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # removed from torch in favour of torchao
        raise ExportError(
            f"this PyTorch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic; "
            "install a torch release that has it, or keep the FP32 model"
        ) from exc
    plain = copy.deepcopy(model).cpu().eval()
    swapped = _plain_linears(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice pointing to torchao
        quantized: nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            plain, {nn.Linear}, dtype=torch.qint8
        )
    log.debug("torch dynamic INT8: %d PyG Linear layer(s) made plain first", swapped)
    return QuantizedModel("torch-dynamic", module=quantized.eval())
