"""A hospital's synthetic CT site: its scans written as DICOM series plus ``candidates.csv``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedcore.data.synthetic_ct.candidates import Candidate, _write_candidates
from fedcore.data.synthetic_ct.scan import generate_scan
from fedcore.data.synthetic_ct.scanners import ScannerProfile, scanner_profile
from fedcore.data.synthetic_ct.series import _seed_sequence, _series_origin, write_series

log = logging.getLogger(__name__)


def generate_site(
    out_dir: Path | str,
    *,
    scans: int,
    scanner: str | ScannerProfile,
    seed: int,
    hospital: str = "hospital",
    nodule_prob: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> list[Candidate]:
    """Generate a hospital's scans as DICOM series plus ``candidates.csv``.

    Writes ``out_dir/patient_NNN/<hex>.dcm`` for each scan and then ``out_dir/candidates.csv``
    (columns :data:`CANDIDATE_COLUMNS`, coordinates in the patient frame of the headers). The
    same arguments give byte-identical files.

    Args:
        out_dir: Output folder (created if needed).
        scans: Number of scans (>= 1).
        scanner: Name in :data:`SCANNERS` or a profile.
        seed: Site seed (>= 0); ``hospital`` is mixed in, so two hospitals may share a seed.
        hospital: Hospital name, written in the headers.
        nodule_prob: Share of scans that contain a nodule (prevalence), in [0, 1].
        progress: Called with ``(done, scans)`` after each scan.

    Returns:
        All candidates, scan by scan.

    Raises:
        ValueError: ``scans`` < 1, ``nodule_prob`` outside [0, 1] or a negative seed.
        KeyError: Unknown scanner name.
        FileExistsError: A patient folder already holds DICOM files.
    """
    if scans < 1:
        raise ValueError(f"scans must be >= 1, got {scans!r}")
    if not 0.0 <= nodule_prob <= 1.0:
        raise ValueError(f"nodule_prob must be in [0, 1], got {nodule_prob!r}")
    profile = scanner_profile(scanner)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(scans):
        folder = root / f"patient_{i:03d}"
        if folder.is_dir() and any(folder.glob("*.dcm")):
            raise FileExistsError(
                f"{folder} already holds DICOM files; generate into an empty folder or delete "
                f"{root} first (stale slices would mix with the new series)"
            )
    started = time.perf_counter()
    candidates: list[Candidate] = []
    for i in range(scans):
        rng = np.random.default_rng(_seed_sequence(seed, hospital, i, 0))
        hu, found = generate_scan(rng, profile, nodule_prob=nodule_prob)
        series_uid, _ = write_series(
            hu,
            root / f"patient_{i:03d}",
            scanner=profile,
            seed=seed,
            patient_index=i,
            hospital=hospital,
        )
        ox, oy, oz = _series_origin(seed, hospital, i)
        ps, dz = profile.pixel_spacing_mm, profile.slice_thickness_mm
        for c in found:
            candidates.append(
                Candidate(
                    series_uid=series_uid,
                    x_mm=_round3(ox + c["x"] * ps),
                    y_mm=_round3(oy + c["y"] * ps),
                    z_mm=_round3(oz + c["z"] * dz),
                    nodule=int(c["nodule"]),
                    malignant=int(c["malignant"]),
                    diameter_mm=_round3(c["diameter_mm"]),
                    kind=str(c["kind"]),
                )
            )
        if progress is not None:
            progress(i + 1, scans)
    _write_candidates(root / "candidates.csv", candidates)
    log.info(
        "wrote %d %s scans for %s to %s in %.1f s (%d candidates, %d nodules)",
        scans,
        profile.name,
        hospital,
        root,
        time.perf_counter() - started,
        len(candidates),
        sum(c.nodule for c in candidates),
    )
    return candidates


def _round3(value: float) -> float:
    return float(f"{value:.3f}")
