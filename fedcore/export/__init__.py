"""Quantized export of trained models for each site's own hardware (ONNX Runtime, PyTorch fallback)."""

from __future__ import annotations

from fedcore.export.layered import (
    LayeredGNN,
    NeighbourIndex,
    ScoringBatch,
    chunk_edges,
    input_names,
    layered_onnx,
    layers_of,
    scoring_batch,
)
from fedcore.export.manifest import (
    MANIFEST_NAME,
    ExportManifest,
    input_columns,
    node_feature_names,
    sha256_file,
)
from fedcore.export.onnx_export import (
    CPU_PROVIDER,
    OUTPUT_NAME,
    ExportError,
    available_providers,
    export_onnx,
    ort_session,
    run_session,
    select_provider,
)
from fedcore.export.quantize import (
    PATHS_TAKEN,
    FeedCalibrationReader,
    PathTaken,
    QuantizedModel,
    compact_onnx,
    quantize_dynamic_int8,
    quantize_static_int8,
    torch_dynamic_int8,
)
from fedcore.export.site import export_for_site, gate

__all__ = [
    "CPU_PROVIDER",
    "MANIFEST_NAME",
    "OUTPUT_NAME",
    "PATHS_TAKEN",
    "ExportError",
    "ExportManifest",
    "FeedCalibrationReader",
    "LayeredGNN",
    "NeighbourIndex",
    "PathTaken",
    "QuantizedModel",
    "ScoringBatch",
    "available_providers",
    "chunk_edges",
    "compact_onnx",
    "export_for_site",
    "export_onnx",
    "gate",
    "input_columns",
    "input_names",
    "layered_onnx",
    "layers_of",
    "node_feature_names",
    "ort_session",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "run_session",
    "scoring_batch",
    "select_provider",
    "sha256_file",
    "torch_dynamic_int8",
]
