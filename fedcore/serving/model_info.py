"""The model a site's scoring service serves, as clients and operators see it, and the exports it may serve next."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedcore.export.manifest import MANIFEST_NAME, ExportManifest
from fedcore.export.serve import FP32_PATH

__all__ = ["ModelInfo", "manifest_time", "model_info", "newest_export", "verified_manifest"]


@dataclass(frozen=True)
class ModelInfo:
    """The served model as clients and operators see it."""

    export_dir: Path
    run: str
    file: str
    sha256: str
    path_taken: str
    provider: str
    threshold: float

    @property
    def short_sha(self) -> str:
        """The sha256 prefix shown in answers and metrics (12 hex digits)."""
        return self.sha256[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``/v1/status``."""
        return asdict(self) | {"export_dir": str(self.export_dir)}


def model_info(scorer: Any, export_dir: Path) -> ModelInfo:
    """:class:`ModelInfo` of what ``scorer`` serves from ``export_dir``.

    A :class:`~fedcore.serving.context.ContextScorer` says which file it loaded and on which
    provider (``scorer.model``): the FP32 file kept beside an INT8 one is shown with its own
    sha256 and path ``fp32``. Without that, the manifest's served file is assumed.
    """
    manifest = scorer.manifest
    loaded = getattr(scorer, "model", None)
    file = Path(getattr(loaded, "file", manifest.file)).name
    sha256, path_taken = manifest.sha256, str(manifest.path_taken)
    if file != manifest.file and file == manifest.fp32_file:
        sha256, path_taken = manifest.fp32_sha256 or "", FP32_PATH
    return ModelInfo(
        export_dir=Path(export_dir),
        run=Path(export_dir).name,
        file=file,
        sha256=sha256,
        path_taken=path_taken,
        provider=str(getattr(loaded, "provider", manifest.provider)),
        threshold=float(scorer.threshold),
    )


def newest_export(state_dir: Path) -> Path | None:
    """The newest export under ``STATE/export/*/`` holding a manifest (by its time), or ``None``."""
    root = Path(state_dir) / "export"
    children = root.iterdir() if root.is_dir() else iter(())
    # no manifest: an export being written (the manifest comes last), or gone meanwhile
    found = [(t, d.name, d) for d in children if (t := manifest_time(d)) > -math.inf]
    return max(found)[2].resolve() if found else None


def verified_manifest(export_dir: Path) -> ExportManifest:
    """Read an export's manifest and check its model's size and sha256 (raises if they differ)."""
    manifest = ExportManifest.read(export_dir)
    manifest.verify(export_dir)
    return manifest


def manifest_time(export_dir: Path) -> float:
    """Modification time of an export's manifest (``-inf`` when it cannot be read)."""
    try:
        return (Path(export_dir) / MANIFEST_NAME).stat().st_mtime
    except OSError:
        return -math.inf
