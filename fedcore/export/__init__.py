"""Quantized export of trained models for each site's own hardware (ONNX Runtime, PyTorch fallback)."""

from __future__ import annotations

from fedcore.export.manifest import (
    MANIFEST_NAME,
    ExportManifest,
    input_columns,
    node_feature_names,
    sha256_file,
)
from fedcore.export.onnx_export import (
    CPU_PROVIDER,
    INPUT_NAMES,
    OUTPUT_NAME,
    ExportError,
    available_providers,
    export_onnx,
    graph_inputs,
    ort_session,
    run_session,
    select_provider,
)
from fedcore.export.quantize import (
    PATHS_TAKEN,
    FeedCalibrationReader,
    PathTaken,
    QuantizedModel,
    quantize_dynamic_int8,
    quantize_static_int8,
    torch_dynamic_int8,
)
from fedcore.export.site import export_for_site, gate

__all__ = [
    "CPU_PROVIDER",
    "INPUT_NAMES",
    "MANIFEST_NAME",
    "OUTPUT_NAME",
    "PATHS_TAKEN",
    "ExportError",
    "ExportManifest",
    "FeedCalibrationReader",
    "PathTaken",
    "QuantizedModel",
    "available_providers",
    "export_for_site",
    "export_onnx",
    "gate",
    "graph_inputs",
    "input_columns",
    "node_feature_names",
    "ort_session",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "run_session",
    "select_provider",
    "sha256_file",
    "torch_dynamic_int8",
]
