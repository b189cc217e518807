"""A hospital's training data: CT series (generated, on disk or pulled from its PACS), de-identified, cut into candidate patches."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedcore.config import DicomData, PacsData, SiteConfig, SyntheticCtData, TaskSpec
from fedcore.data.sites import MAX_GRAPH_CACHES, prune_caches, touch_cache
from fedcore.models.nodule_net import PatchSet
from fedcore.storage import atomic_path, atomic_write_text, private_dir

if TYPE_CHECKING:
    from fedcore.data.deid import Deidentifier
    from fedcore.data.synthetic_ct import Candidate, ScannerProfile

log = logging.getLogger(__name__)

CACHE_VERSION = "ct-patches-v2"
"""Bump when the generator, de-identification or patch cutting changes, so stale caches are ignored."""

SECRET_FILE = "deid.secret"
"""The site's de-identification secret, kept in its state folder (created once, mode 0600)."""


def _done(folder: Path) -> Path:
    """Marker written last, beside a finished folder (generated series, de-identified copy, PACS pull)."""
    return folder.with_name(folder.name + ".complete")


def _fresh(folder: Path) -> None:
    """Clear what an interrupted earlier attempt left in ``folder`` (it has no marker)."""
    if folder.exists():
        log.info("removing the unfinished %s of an interrupted run", folder)
        shutil.rmtree(folder)


class ImagingDataError(ValueError):
    """A hospital's imaging data that cannot be turned into training patches (the message says why)."""


@dataclass(frozen=True)
class SitePatches:
    """One hospital's candidate patches, split by patient into train and test.

    Attributes:
        train: Training patches ``[N, 1, S, S, S]`` in [0, 1] and labels (1 = nodule).
        test: Held-out patches of other patients.
        problems: What could not be used (files, series, candidates), one message each.
    """

    train: PatchSet
    test: PatchSet
    problems: list[str] = field(default_factory=list)

    @property
    def num_train(self) -> int:
        """Training patches."""
        return int(self.train.y.numel())

    @property
    def num_test(self) -> int:
        """Test patches."""
        return int(self.test.y.numel())

    @property
    def num_train_pos(self) -> int:
        """Training patches that hold a nodule."""
        return int(self.train.y.sum())

    def __repr__(self) -> str:
        return (
            f"SitePatches(train={self.num_train} ({self.num_train_pos} nodules), "
            f"test={self.num_test}, problems={len(self.problems)})"
        )


def _state(cfg: SiteConfig) -> Path:
    if cfg.state_dir is None:
        raise ImagingDataError(
            f"site {cfg.id}: imaging data needs a state_dir in the site config (the "
            "de-identified copy and the patch cache are kept there)"
        )
    return Path(cfg.state_dir)


def site_secret(cfg: SiteConfig) -> bytes:
    """The site's de-identification secret: read from ``STATE/deid.secret``, created once when absent.

    The secret never leaves the site; with it, UIDs map the same way at every run of this
    site, and no other site (with its own secret) can reproduce or reverse the mapping.
    """
    path = _state(cfg) / SECRET_FILE
    if not path.is_file():
        atomic_write_text(path, secrets.token_hex(32) + "\n", mode=0o600)
        log.info("site %s: created its de-identification secret %s", cfg.id, path)
    from fedcore.data.deid import load_site_secret

    return load_site_secret(path)


def generator_seed(cfg: SiteConfig, data: SyntheticCtData) -> int:
    """``data.seed`` if set, else sha256 of (consortium seed, site id)."""
    if data.seed is not None:
        return data.seed
    digest = hashlib.sha256(f"{cfg.seed}:{cfg.id}:ct".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _profile(profile: ScannerProfile, data: SyntheticCtData) -> ScannerProfile:
    """The scanner profile with the scenario's matrix and slice count, where it sets them."""
    return replace(
        profile,
        matrix=data.matrix or profile.matrix,
        slices=data.slices or profile.slices,
    )


def _raw_series(cfg: SiteConfig) -> tuple[Path, Path]:
    """Folder of the site's original DICOM files and its candidate CSV (generating or pulling first)."""
    data = cfg.data
    if isinstance(data, DicomData):
        return data.path, data.candidates
    if isinstance(data, PacsData):
        out = _state(cfg) / "imaging" / "pacs" / _digest(data.pacs.model_dump(mode="json"))
        if not _done(out).is_file():
            from fedcore.data.pacs import pull

            _fresh(out)
            private_dir(out)
            files = pull(data.pacs, out)
            log.info("site %s: pulled %d file(s) from %s", cfg.id, len(files), data.pacs.describe())
            atomic_write_text(_done(out), f"{len(files)}\n")
        return out, data.candidates
    if isinstance(data, SyntheticCtData):
        from fedcore.data.synthetic_ct import generate_site, scanner_profile

        seed = generator_seed(cfg, data)
        out = _state(cfg) / "imaging" / "raw" / _digest([data.model_dump(mode="json"), seed])
        if not _done(out).is_file():
            log.info("site %s: writing %d synthetic CT series to %s", cfg.id, data.scans, out)
            _fresh(out)
            private_dir(out)
            generate_site(
                out,
                scans=data.scans,
                scanner=_profile(scanner_profile(data.scanner), data),
                seed=seed,
                hospital=cfg.id,
                nodule_prob=data.nodule_prob,
            )
            atomic_write_text(_done(out), "ok\n")
        return out, out / "candidates.csv"
    raise ImagingDataError(f"site {cfg.id}: data kind {data.kind} is not imaging data")


def _deidentified(cfg: SiteConfig, raw: Path) -> tuple[Path, Deidentifier]:
    """De-identified copy of ``raw`` (PS3.15 basic profile) in the state folder, and the de-identifier."""
    from fedcore.data.deid import Deidentifier, default_jobs, write_report

    deid = Deidentifier(site_secret(cfg), site_id=cfg.id)
    st = raw.stat()
    out = _state(cfg) / "imaging" / "deid" / _digest([str(raw.resolve()), st.st_mtime_ns])
    if not _done(out).is_file():
        source = raw.parent if raw.is_file() else raw  # a DICOMDIR: its folder
        _fresh(out)
        private_dir(out)
        reports = deid.tree(source, out, jobs=default_jobs())
        report = out.with_name(out.name + ".deid-report.json")
        write_report(reports, report)
        failed = [r for r in reports if r.error]
        images = [r for r in failed if "not a DICOM file" not in str(r.error)]
        if images:  # DICOM files refused (e.g. burned-in annotations): they stay out of training
            log.warning(
                "site %s: %d DICOM file(s) not de-identified and left out (see %s), e.g. %s: %s",
                cfg.id,
                len(images),
                report,
                images[0].source,
                images[0].error,
            )
        if len(failed) > len(images):
            log.info("site %s: %d non-DICOM file(s) not copied", cfg.id, len(failed) - len(images))
        atomic_write_text(_done(out), f"{len(reports)}\n")
    return out, deid


def _split(series: list[str], fraction: float, seed: int) -> set[str]:
    """Test series: the ``fraction`` with the lowest seeded hashes (at least one, never all)."""
    ranked = sorted(series, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).digest())
    k = min(max(1, round(fraction * len(series))), max(len(series) - 1, 0))
    return set(ranked[:k])


def build_patches(cfg: SiteConfig, task: TaskSpec) -> SitePatches:
    """Generate or pull, de-identify, read, resample and cut the site's candidate patches.

    Only the de-identified copy is read: no original header or pixel reaches training.
    Candidates name series by their original UID; they are mapped through the same
    keyed UID remapping as the files.

    Raises:
        ImagingDataError: when no candidate patch can be cut at all.
    """
    from fedcore.data.dicom import extract_patch, read_any, resample, window
    from fedcore.data.synthetic_ct import read_candidates

    raw, candidates_csv = _raw_series(cfg)
    deid_dir, deid = _deidentified(cfg, raw)
    report = read_any(deid_dir)
    problems = list(report.problems)
    volumes = {v.series_uid: v for v in report.volumes}
    spec = task.imaging
    size = spec.patch_size
    spacing = (spec.spacing_mm,) * 3
    candidates = read_candidates(candidates_csv)
    by_series: dict[str, list[tuple[int, Candidate]]] = {}
    for i, c in enumerate(candidates):
        by_series.setdefault(deid.uid(c.series_uid), []).append((i, c))
    patches: dict[str, list[tuple[np.ndarray, int, str]]] = {}
    for uid, items in by_series.items():
        if uid not in volumes:
            problems.append(
                f"{len(items)} candidate(s) of series {items[0][1].series_uid} "
                "have no readable series; left out"
            )
            continue
        vol = resample(volumes[uid], spacing)
        for i, c in items:
            centre = (c.x_mm, c.y_mm, c.z_mm)
            patch = window(extract_patch(vol, centre, size), *spec.window_hu)
            patches.setdefault(uid, []).append((patch, int(c.nodule), f"{uid}:{i}"))
    if not patches:
        raise ImagingDataError(
            f"site {cfg.id}: no candidate patch could be cut from {raw} "
            f"({len(candidates)} candidate(s), {len(volumes)} readable series); "
            + ("; ".join(problems[:3]) or "check the candidates' series UIDs")
        )
    # order and split by the site's own series UIDs: the remapped ones change with the
    # site's secret, and the same data and seed must give the same patients in each split
    original = {uid: by_series[uid][0][1].series_uid for uid in patches}
    order = sorted(patches, key=original.__getitem__)
    held_out = _split([original[u] for u in order], task.test_fraction, cfg.seed)
    test_series = {u for u in order if original[u] in held_out}

    def patch_set(keep: bool) -> PatchSet:
        rows = [p for uid in order if (uid in test_series) == keep for p in patches[uid]]
        if not rows:
            return PatchSet(
                torch.zeros((0, 1, size, size, size)), torch.zeros(0, dtype=torch.int64), []
            )
        x = torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.float32)).unsqueeze(1)
        y = torch.tensor([r[1] for r in rows], dtype=torch.int64)
        return PatchSet(x, y, [r[2] for r in rows])

    for p in problems:
        log.warning("site %s: %s", cfg.id, p)
    return SitePatches(train=patch_set(False), test=patch_set(True), problems=problems)


def _cache_key(cfg: SiteConfig, task: TaskSpec) -> str:
    spec = cfg.data.model_dump(mode="json")
    if isinstance(cfg.data, SyntheticCtData):
        spec["_seed"] = generator_seed(cfg, cfg.data)
    if isinstance(cfg.data, DicomData | PacsData):
        c = Path(cfg.data.candidates)
        spec["_candidates"] = [str(c.resolve()), c.stat().st_mtime_ns] if c.is_file() else None
    blob = {
        "v": CACHE_VERSION,
        "data": spec,
        "imaging": task.imaging.model_dump(mode="json"),
        "test_fraction": task.test_fraction,
        "seed": cfg.seed,
    }
    return _digest(blob)


def load_site_patches(cfg: SiteConfig, task: TaskSpec) -> SitePatches:
    """The site's patches for ``task``, cached as ``STATE/cache/patches-<key>.pt``; built on a miss.

    At most :data:`~fedcore.data.sites.MAX_GRAPH_CACHES` patch sets stay cached (the task's
    settings come from the coordinator, which must not be able to fill the site's disk):
    writing another removes the least recently used.

    Raises:
        ImagingDataError: when nothing usable comes out of the site's data.
    """

    path = _state(cfg) / "cache" / f"patches-{_cache_key(cfg, task)}.pt"
    if path.is_file():
        try:
            p = torch.load(path, weights_only=True)
            touch_cache(path)
            return SitePatches(
                train=PatchSet(p["train_x"], p["train_y"], list(p["train_ids"])),
                test=PatchSet(p["test_x"], p["test_y"], list(p["test_ids"])),
                problems=list(p["problems"]),
            )
        except Exception as exc:  # a corrupt or foreign file: rebuild it
            log.warning("site %s: ignoring unreadable cache %s (%s)", cfg.id, path, exc)
    data = build_patches(cfg, task)
    log.info("site %s: %r", cfg.id, data)
    train, test = data.train, data.test
    payload = {
        "train_x": train.x,
        "train_y": train.y,
        "train_ids": train.ids,
        "test_x": test.x,
        "test_y": test.y,
        "test_ids": test.ids,
        "problems": data.problems,
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        log.warning("site %s: could not write cache %s (%s)", cfg.id, path, exc)
    prune_caches(path.parent, "patches-*.pt", MAX_GRAPH_CACHES, current=path, site=cfg.id)
    return data
