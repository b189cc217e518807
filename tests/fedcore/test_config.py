"""Scenario validation: every kind of bad file gets one clear message naming file and field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedcore.config import (
    ConfigError,
    SiteConfig,
    dump_site_config,
    load_scenario,
    load_site_config,
)

GOOD = textwrap.dedent(
    """
    name: tiny
    seed: 3
    rounds: 2
    sites:
      - id: bank-a
        data: {kind: generated, transactions: 500, fraud_rate: 0.02}
      - id: bank-b
        data: {kind: generated, transactions: 400, fraud_rate: 0.01, customer_mix: business}
    scheduler: {min_sites: 2}
    """
)


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_scenario_loads(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD))
    assert [x.id for x in s.sites] == ["bank-a", "bank-b"]
    assert (
        s.task.model == "fraud-gnn"
        and s.privacy.mode == "plaintext"
        and s.engine.name == "inprocess"
    )
    assert s.fingerprint() == load_scenario(write(tmp_path, GOOD, "t.yaml")).fingerprint()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsites: [\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        (GOOD + "colour: blue\n", "colour: unknown field"),
        (GOOD.replace("rounds: 2", "rounds: many"), "rounds: Input should be a valid integer"),
        (
            GOOD.replace("rounds: 2", "rounds: 0"),
            "rounds: Input should be greater than or equal to 1 (found 0)",
        ),
        (GOOD.replace("name: tiny\n", ""), "name: required field is missing"),
        (GOOD.replace("id: bank-b", "id: bank-a"), "site id(s) listed more than once: bank-a"),
        (
            GOOD.replace("fraud_rate: 0.02", "fraud_rate: 0.02, speed: 3"),
            "sites[0] (id 'bank-a').data.speed: unknown field",
        ),
        (
            GOOD.replace("kind: generated, transactions: 500", "kind: parquet, transactions: 500"),
            "sites[0] (id 'bank-a').data",
        ),
        (
            GOOD.replace("min_sites: 2", "min_sites: 5"),
            "scheduler.min_sites is 5 but only 2 site(s)",
        ),
        (
            GOOD.replace("id: bank-a", "id: Bank A"),
            "sites[0] (id 'Bank A').id: String should match pattern",
        ),
        (
            GOOD + "task: {features: [hour_of_day, hour_of_day]}\n",
            "feature(s) listed more than once: hour_of_day",
        ),
        (
            GOOD + "task: {features: ['../../etc/passwd']}\n",
            "feature name(s) '../../etc/passwd' are not identifiers",
        ),
        (
            GOOD + "task: {features: [hour_of_day, balance]}\n",
            "site 'bank-a': generated data carry no feature(s) balance",
        ),
    ],
)
def test_bad_scenarios_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value), str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_scenario(tmp_path / "nope.yaml")


def test_missing_csv_data_file(tmp_path: Path) -> None:
    text = GOOD.replace(
        "data: {kind: generated, transactions: 500, fraud_rate: 0.02}",
        "data: {kind: csv, path: data/a.csv, columns: {payer: p, payee: q, amount: a, timestamp: t, label: y}}",
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert "sites[0] (id 'bank-a').data.path: file not found" in msg
    assert str(tmp_path / "data" / "a.csv") in msg  # relative to the scenario file
    load_scenario(path, check_files=False)  # the coordinator does not need site files


def test_csv_site_must_map_task_features(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("p,q,a,t,y\n")
    text = (
        GOOD.replace(
            "data: {kind: generated, transactions: 500, fraud_rate: 0.02}",
            "data: {kind: csv, path: a.csv, columns: {payer: p, payee: q, amount: a, timestamp: t, label: y}}",
        )
        + "task: {features: [channel_online]}\n"
    )
    with pytest.raises(ConfigError, match="lacks task feature.*channel_online"):
        load_scenario(write(tmp_path, text))


def test_site_config_round_trip(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD))
    cfg = SiteConfig.from_scenario(s, "bank-b", state_dir=tmp_path / "st")
    dump_site_config(cfg, tmp_path / "site.yaml")
    back = load_site_config(tmp_path / "site.yaml")
    assert back == cfg and back.seed == 3


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    bad = write(tmp_path, GOOD + "colour: blue\n", "bad.yaml")
    ok = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "validate", str(good)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "ok" in ok.stdout
    res = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "validate", str(bad)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "colour: unknown field" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_validate_prints_paths_and_messages_verbatim(tmp_path: Path) -> None:
    """A file name that looks like rich markup is printed as written, not parsed."""
    bad = write(tmp_path, GOOD + "colour: blue\n", "bad[bold].yaml")
    res = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "validate", str(bad)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr
    assert "bad[bold].yaml" in res.stderr.replace("\n", "")
    assert "MarkupError" not in res.stderr and "Traceback" not in res.stderr


HOSPITALS = textwrap.dedent(
    """
    name: scans
    rounds: 2
    sites:
      - id: hospital-a
        kind: hospital
        data: {kind: synthetic-ct, scans: 4, scanner: canon-thick}
      - id: hospital-b
        kind: hospital
        data: {kind: dicom, path: export, candidates: export/candidates.csv}
    task: {model: nodule-net}
    export: {int8: false}
    """
)


def test_imaging_scenario_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "candidates.csv").write_text("series_uid,x_mm,y_mm,z_mm,nodule\n")
    sc = load_scenario(write(tmp_path, HOSPITALS))
    assert sc.task.is_imaging and sc.task.dataset == "ct-candidates"
    assert sc.task.imaging.patch_size == 32 and sc.task.imaging.dropout == 0.0
    b = sc.sites[1].data
    assert b.kind == "dicom" and b.path == tmp_path / "export"  # type: ignore[union-attr]
    assert b.candidates == tmp_path / "export" / "candidates.csv"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("scanner: canon-thick", "scanner: no-such-ct"), "unknown scanner 'no-such-ct'"),
        (("export: {int8: false}", "export: {int8: true}"), "export.int8 is not available"),
        (("task: {model: nodule-net}", "task: {}"), "data kind synthetic-ct does not fit"),
        (
            ("task: {model: nodule-net}", "task: {model: nodule-net, dataset: transactions}"),
            "model nodule-net trains on dataset ct-candidates",
        ),
        (
            ("task: {model: nodule-net}", "task: {model: nodule-net, imaging: {dim: 30}}"),
            "heads \\(4\\) must divide dim \\(30\\)",
        ),
        (
            ("task: {model: nodule-net}", "task: {model: nodule-net, imaging: {patch_size: 20}}"),
            "patch_size \\(20\\) must be divisible by 2\\*\\*3",
        ),
    ],
)
def test_bad_imaging_scenarios_say_why(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_scenario(write(tmp_path, HOSPITALS.replace(*change)), check_files=False)


def test_missing_dicom_folder_and_candidates_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(write(tmp_path, HOSPITALS))
    msg = str(info.value)
    assert "data.path: no such folder or DICOMDIR" in msg
    assert "data.candidates: file not found" in msg


def test_the_shipped_hospital_scenario_validates() -> None:
    sc = load_scenario(Path(__file__).parents[2] / "scenarios" / "hospital-nodules.yaml")
    assert len(sc.sites) == 3 and sc.privacy.mode in ("secagg+", "ckks")
    assert len({s.data.scanner for s in sc.sites}) == 3  # type: ignore[union-attr]


def test_table_task_defaults_follow_ids_and_graph() -> None:
    from fedcore.config import TaskSpec

    assert TaskSpec(dataset="table").model == "row-mlp"  # no ids, no graph: features alone
    assert TaskSpec(dataset="table").table_graph == "none"
    with_ids = TaskSpec(dataset="table", entities=["card"])
    assert (with_ids.model, with_ids.table_graph) == ("relational-gnn", "entities")
    knn = TaskSpec(dataset="table", graph="knn")
    assert (knn.model, knn.table_graph) == ("relational-gnn", "knn")
    with pytest.raises(ValueError, match="row-mlp uses no graph"):
        TaskSpec(dataset="table", model="row-mlp", graph="knn")
    with pytest.raises(ValueError, match="apply to dataset table"):
        TaskSpec(entities=["card"])
