"""A hospital's data path end to end: generate -> de-identify -> read -> resample -> patches, split by patient."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from fedcore import tasks
from fedcore.config import DicomData, SiteConfig, SyntheticCtData, TaskSpec
from fedcore.data import imaging_sites
from fedcore.data.imaging_sites import (
    ImagingDataError,
    build_patches,
    generator_seed,
    load_site_patches,
    site_secret,
)
from fedcore.data.synthetic_ct import generate_site, read_candidates

TASK = TaskSpec.model_validate(
    {
        "model": "nodule-net",
        "test_fraction": 0.34,
        "imaging": {"patch_size": 16, "channels": [8, 16]},
    }
)
SMALL = {"matrix": 96, "slices": 32}  # the smallest slab the generator takes: fast


def site(tmp_path: Path, **data: object) -> SiteConfig:
    spec = {"kind": "synthetic-ct", "scans": 4, "scanner": "canon-thick", "seed": 3, **SMALL}
    spec.update(data)
    return SiteConfig.model_validate(
        {
            "id": "hospital-x",
            "kind": "hospital",
            "data": spec,
            "seed": 5,
            "state_dir": str(tmp_path),
        }
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteConfig, imaging_sites.SitePatches]:
    cfg = site(tmp_path_factory.mktemp("state"))
    return cfg, build_patches(cfg, TASK)


def test_every_candidate_becomes_a_labelled_patch(built: tuple) -> None:
    cfg, data = built
    raw = next(Path(cfg.state_dir).glob("imaging/raw/*/candidates.csv"))  # type: ignore[arg-type]
    cands = read_candidates(raw)
    assert data.num_train + data.num_test == len(cands)
    assert data.train.x.shape[1:] == (1, 16, 16, 16) and data.train.x.dtype == torch.float32
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0  # windowed
    labels = sorted(int(c.nodule) for c in cands)
    assert sorted([*data.train.y.tolist(), *data.test.y.tolist()]) == labels
    assert not data.problems


def test_nodule_patches_are_brighter_at_the_centre(built: tuple) -> None:
    _, data = built
    x = torch.cat([data.train.x, data.test.x])[:, 0]
    y = torch.cat([data.train.y, data.test.y])
    centre = x[:, 7:9, 7:9, 7:9].mean(dim=(1, 2, 3))
    # a nodule (soft tissue, > -700 HU) sits at the candidate; the window maps -1000..400 HU to 0..1
    assert float(centre[y == 1].min()) > (-700 + 1000) / 1400 - 0.05


def test_split_is_by_patient(built: tuple) -> None:
    _, data = built
    series = lambda ids: {i.rsplit(":", 1)[0] for i in ids}  # noqa: E731
    assert data.num_test > 0 and data.num_train > 0
    assert series(data.train.ids).isdisjoint(series(data.test.ids))


def test_training_reads_only_the_deidentified_copy(built: tuple) -> None:
    cfg, data = built
    state = Path(cfg.state_dir)  # type: ignore[arg-type]
    raw_files = sorted(state.glob("imaging/raw/*/*/*.dcm"))
    deid_files = sorted(state.glob("imaging/deid/*/*/*.dcm"))
    assert raw_files and len(deid_files) == len(raw_files)
    original = pydicom.dcmread(raw_files[0])
    clean = pydicom.dcmread(deid_files[0])
    assert (
        str(original.PatientName)
        and "PatientName" in clean
        and str(clean.PatientName) != str(original.PatientName)
    )
    assert "InstitutionName" not in clean and clean.PatientIdentityRemoved == "YES"
    assert not any(elem.tag.is_private for elem in clean)
    # patch ids name series by their de-identified UID, never the original one
    originals = {
        c.series_uid for c in read_candidates(next(state.glob("imaging/raw/*/candidates.csv")))
    }
    used = {i.rsplit(":", 1)[0] for i in [*data.train.ids, *data.test.ids]}
    assert used and used.isdisjoint(originals)
    assert all(u.startswith("2.25.") for u in used)


def test_site_secret_is_created_once_private_and_kept(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    first = site_secret(cfg)
    path = tmp_path / imaging_sites.SECRET_FILE
    assert path.stat().st_mode & 0o077 == 0
    assert site_secret(cfg) == first and len(first) >= 16


def test_cache_is_reused_and_matches(
    built: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = site(tmp_path)
    data = load_site_patches(cfg, TASK)
    calls: list[int] = []
    monkeypatch.setattr(imaging_sites, "build_patches", lambda *a: calls.append(1))
    again = load_site_patches(cfg, TASK)
    assert not calls  # served from STATE/cache
    assert torch.equal(again.train.x, data.train.x) and again.test.ids == data.test.ids
    assert tasks.num_train(again) == data.num_train


def test_interrupted_generation_is_redone(tmp_path: Path) -> None:
    cfg = site(tmp_path, scans=2)
    seed = generator_seed(cfg, cfg.data)  # type: ignore[arg-type]
    assert seed == generator_seed(cfg, cfg.data)  # type: ignore[arg-type]
    first = build_patches(cfg, TASK)
    raw = next((tmp_path / "imaging" / "raw").iterdir())
    raw.with_name(raw.name + ".complete").unlink()  # as if the run died while writing
    again = build_patches(cfg, TASK)
    assert torch.equal(first.train.x, again.train.x)


def test_own_dicom_folder_with_a_broken_file_and_an_unknown_candidate(tmp_path: Path) -> None:
    folder = tmp_path / "pacs-export"
    cands = generate_site(folder, scans=2, scanner="philips-smooth", seed=9, hospital="h", **{})
    (folder / "patient_000" / "notes.txt").write_text("not an image")
    table = tmp_path / "candidates.csv"
    rows = [c.__dict__ for c in cands] + [
        {**cands[0].__dict__, "series_uid": "1.2.3.4.5.6.7", "nodule": 0}
    ]
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = SiteConfig(
        id="hospital-y",
        kind="hospital",
        data=DicomData(path=folder, candidates=table),
        state_dir=tmp_path / "state",
    )
    data = build_patches(cfg, TASK)
    assert data.num_train + data.num_test == len(cands)
    assert any("1.2.3.4.5.6.7" in p and "no readable series" in p for p in data.problems)
    assert (folder / "patient_000" / "notes.txt").is_file()  # the hospital's folder is only read


def test_no_usable_candidate_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    generate_site(folder, scans=2, scanner="canon-thick", seed=1, hospital="h")
    table = tmp_path / "c.csv"
    table.write_text("series_uid,x_mm,y_mm,z_mm,nodule\n9.9.9,0,0,0,1\n")
    cfg = SiteConfig(
        id="hospital-z",
        kind="hospital",
        data=DicomData(path=folder, candidates=table),
        state_dir=tmp_path / "state",
    )
    with pytest.raises(ImagingDataError, match="no candidate patch could be cut"):
        build_patches(cfg, TASK)


def test_tasks_train_and_evaluate_on_patches(built: tuple) -> None:
    from fedcore.config import TrainingSpec
    from fedcore.training import seed_everything

    _, data = built
    seed_everything(0)
    model = tasks.build(TASK)
    stats = tasks.train(model, data, TASK, TrainingSpec(local_epochs=1, lr=0.003), seed=1)
    assert stats.num_examples == data.num_train and np.isfinite(stats.loss)
    ev = tasks.evaluate(model, data, TASK)
    assert ev.num_examples == data.num_test
    assert {"sensitivity", "specificity", "roc_auc"} <= set(ev.metrics)
    merged = tasks.merge(TASK, [data, data])
    assert merged.num_train == 2 * data.num_train


def test_synthetic_overrides_reach_the_generator(tmp_path: Path) -> None:
    cfg = site(tmp_path, scans=2, matrix=96, slices=24)
    build_patches(cfg, TASK)
    f = next((tmp_path / "imaging" / "deid").glob("*/*/*.dcm"))
    ds = pydicom.dcmread(f)
    assert (ds.Rows, ds.Columns) == (96, 96)
    assert len(list(f.parent.glob("*.dcm"))) == 24
    assert isinstance(cfg.data, SyntheticCtData)


def test_same_data_and_seed_give_the_same_split_whatever_the_secret(tmp_path: Path) -> None:
    one = build_patches(site(tmp_path / "one", scans=3), TASK)
    two = build_patches(site(tmp_path / "two", scans=3), TASK)  # another random site secret
    assert (tmp_path / "one" / "deid.secret").read_bytes() != (
        tmp_path / "two" / "deid.secret"
    ).read_bytes()
    assert one.train.ids != two.train.ids  # the remapped UIDs differ...
    assert torch.equal(one.train.x, two.train.x) and torch.equal(
        one.test.y, two.test.y
    )  # ...nothing else
