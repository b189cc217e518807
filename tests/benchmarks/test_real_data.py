"""benchmarks/real_data.py and real_data_sets.py: the fixed 3-site split of each public data set, idempotent preparation, the scikit-learn references, the targets' arithmetic and the shipped scenarios."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = _load("real_data_bench", ROOT / "benchmarks" / "real_data.py")
rds = bench.sets()


# --------------------------------------------------------------------------- tiny sources

CARD_HEADER = ",".join(['"Time"', *(f'"V{i}"' for i in range(1, 29)), '"Amount"', '"Class"'])


def _card_csv(path: Path, rows: int) -> Path:
    """A creditcard.csv of ``rows`` rows in the source's shape; row r: Time r, V1 r / 10, fraud when r % 5 == 4."""
    lines = [CARD_HEADER]
    for r in range(rows):
        v = [f"{r / 10:.1f}", *("0.5" for _ in range(27))]
        lines.append(",".join([str(r), *v, f"{r + 0.25}", f'"{int(r % 5 == 4)}"']))
    path.write_text("\n".join(lines) + "\n")
    return path


def _reviews_gz(path: Path) -> Path:
    """A metadata.gz of 8 reviews: user, business, None, label, None."""
    reviews = [(201, 0, -1), (202, 1, 1), (203, 2, 1), (201, 3, 1), (204, 4, -1), (205, 5, 1)]
    reviews += [(202, 0, 1), (206, 2, -1)]
    text = "".join(f"{u} {p} None {lab} None\n" for u, p, lab in reviews)
    with gzip.open(path, "wt", encoding="ascii") as fh:
        fh.write(text)
    return path


# --------------------------------------------------------------------------- the split


def test_card_rows_go_to_site_row_number_mod_3() -> None:
    np.testing.assert_array_equal(rds.card_site_of_row(np.arange(7)), [0, 1, 2, 0, 1, 2, 0])


def test_reviews_go_to_site_business_id_mod_3() -> None:
    np.testing.assert_array_equal(
        rds.review_site_of_business([0, 1, 2, 3, 200, 7]), [0, 1, 2, 0, 2, 1]
    )


@pytest.mark.parametrize(
    ("k", "site_rows", "limit", "expected"),
    [
        # file rows 0, 3, ..., 99999: 33,334 of them
        (0, 94_936, 100_000, 33_334),
        # file rows 1, 4, ..., 99997: 33,333
        (1, 94_936, 100_000, 33_333),
        # file rows 2, 5, ..., 99998: 33,333
        (2, 94_935, 100_000, 33_333),
        # a limit past the site's rows keeps them all
        (1, 10, 100_000, 10),
        # limit 1: only file row 0, at site 0
        (0, 5, 1, 1),
        (1, 5, 1, 0),
    ],
)
def test_quick_rows_are_the_site_rows_among_the_files_first(
    k: int, site_rows: int, limit: int, expected: int
) -> None:
    assert rds.quick_rows(k, site_rows, limit) == expected


def test_prepare_card_splits_rows_and_keeps_the_sources_columns(tmp_path: Path) -> None:
    src = _card_csv(tmp_path / "creditcard.csv", 20)
    done = rds.prepare("card", src, tmp_path / "real")
    assert done["written"] is True
    # rows 0..19: site 0 holds 0,3,..,18 (7 rows), sites 1 and 2 hold 7 and 6
    assert [done["sites"][f"site-{k}"]["rows"] for k in range(3)] == [7, 7, 6]
    # frauds at rows 4, 9, 14, 19: 9 -> site 0; 4, 19 -> site 1; 14 -> site 2
    assert [done["sites"][f"site-{k}"]["positives"] for k in range(3)] == [1, 2, 1]
    site1 = pq.read_table(rds.site_file(tmp_path / "real", "card", 1))
    assert site1.column_names == ["Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"]
    np.testing.assert_array_equal(site1["Time"].to_numpy(), [1, 4, 7, 10, 13, 16, 19])
    np.testing.assert_allclose(site1["V1"].to_numpy(), [0.1, 0.4, 0.7, 1.0, 1.3, 1.6, 1.9])
    np.testing.assert_array_equal(site1["Class"].to_numpy(), [0, 1, 0, 0, 0, 0, 1])


def test_prepare_is_skipped_when_the_files_are_there_with_their_sizes(tmp_path: Path) -> None:
    src = _card_csv(tmp_path / "creditcard.csv", 20)
    out = tmp_path / "real"
    rds.prepare("card", src, out)
    path = rds.site_file(out, "card", 2)
    stamp = path.stat().st_mtime_ns
    assert rds.prepare("card", src, out)["written"] is False
    assert path.stat().st_mtime_ns == stamp
    # a truncated file is written again
    path.write_bytes(path.read_bytes()[:100])
    again = rds.prepare("card", src, out)
    assert again["written"] is True
    assert pq.read_table(path).num_rows == 6
    # another source (another size) is split again
    _card_csv(src, 23)
    assert rds.prepare("card", src, out)["sites"]["site-2"]["rows"] == 7


def test_prepare_review_splits_by_business(tmp_path: Path) -> None:
    done = rds.prepare("review", _reviews_gz(tmp_path / "metadata.gz"), tmp_path / "real")
    # businesses 0, 3 -> site 0 (3 reviews); 1, 4 -> site 1 (2); 2, 5 -> site 2 (3)
    assert [done["sites"][f"site-{k}"]["rows"] for k in range(3)] == [3, 2, 3]
    assert [done["sites"][f"site-{k}"]["positives"] for k in range(3)] == [1, 1, 1]
    site0 = pa_csv.read_csv(rds.site_file(tmp_path / "real", "review", 0))
    assert site0.column_names == ["user_id", "prod_id", "label"]
    assert site0.to_pydict() == {
        "user_id": [201, 201, 202],
        "prod_id": [0, 3, 0],
        "label": [-1, 1, 1],
    }


def test_a_malformed_review_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metadata.gz"
    with gzip.open(path, "wt", encoding="ascii") as fh:
        fh.write("201 0 None 1 None\n202 x None 1 None\n")
    with pytest.raises(ValueError, match=r"metadata.gz:2: expected integer user_id"):
        rds.read_reviews(path)


def test_quick_card_subset_keeps_the_files_first_rows(tmp_path: Path) -> None:
    out = tmp_path / "real"
    rds.prepare("card", _card_csv(tmp_path / "creditcard.csv", 20), out)
    paths = rds.write_card_quick(out, limit=10)
    # file rows 0..9: site 0 holds 0, 3, 6, 9; site 1: 1, 4, 7; site 2: 2, 5, 8
    times = [pq.read_table(p)["Time"].to_numpy().tolist() for p in paths]
    assert times == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_a_missing_package_names_its_pip_command_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = rds.Source(
        name="card",
        distribution="fedcore-no-such-distribution",
        file="x.csv",
        pip="pip install --no-deps fedcore-no-such-distribution==1.0",
        split_rule="",
        site_suffix=".parquet",
    )
    with pytest.raises(rds.MissingData, match="pip install --no-deps fedcore-no-such"):
        rds.locate(absent)
    monkeypatch.setitem(rds.SOURCES, "card", absent)
    with pytest.raises(bench.typer.Exit) as info:
        bench.prepare_all(tmp_path, ["card"])
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------- references


def test_sklearn_references_rank_a_separable_signal_first() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 3))
    y = (x[:, 0] + 0.1 * rng.normal(size=600) > 1.0).astype(np.int64)
    refs = rds.sklearn_references(x[:400], y[:400], x[400:], y[400:], seed=0)
    variants = {"lr_balanced", "lr_plain", "gbm_default", "gbm_regularized"}
    assert set(refs) == {"central_lr", "central_gbm", *variants}
    # the reference of each family is its better variant
    for family, pair in (
        ("central_lr", ("lr_balanced", "lr_plain")),
        ("central_gbm", ("gbm_default", "gbm_regularized")),
    ):
        assert refs[family]["variant"] in pair
        assert refs[family]["pr_auc"] == max(refs[v]["pr_auc"] for v in pair)
    assert refs["central_lr"]["pr_auc"] > 0.95
    assert refs["central_gbm"]["pr_auc"] > 0.85
    assert 0.5 < refs["central_lr"]["roc_auc"] <= 1.0
    # seeded: the same figures again
    again = rds.sklearn_references(x[:400], y[:400], x[400:], y[400:], seed=0)
    assert again["central_gbm"]["pr_auc"] == refs["central_gbm"]["pr_auc"]


def test_auc_pair_is_nan_without_both_classes() -> None:
    out = rds.auc_pair(np.zeros(4, np.int64), np.arange(4.0))
    assert np.isnan(out["pr_auc"]) and np.isnan(out["roc_auc"])
    # labels 0 0 1 1 ranked 0.1 0.4 0.35 0.8: AP = (1/1 + 2/3) / 2 = 0.8333; ROC-AUC 3/4
    out = rds.auc_pair(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert out["pr_auc"] == pytest.approx(5 / 6)
    assert out["roc_auc"] == pytest.approx(0.75)


# --------------------------------------------------------------------------- targets


def _entry(
    name: str, kind: str, model: str, pr: float, mean: float | None = None
) -> dict[str, Any]:
    return {"name": name, "kind": kind, "model": model, "pr_auc": pr, "mean_pr_auc": mean}


def test_targets_compare_the_best_federated_choice_with_each_reference() -> None:
    entries = {
        "card": [
            _entry("federated/row-mlp", "federated", "row-mlp", 0.80, 0.78),
            _entry("local_only/row-mlp", "local_only", "row-mlp", 0.70, 0.65),
            _entry("federated/gnn", "federated", "relational-gnn", 0.60, 0.90),
            _entry("local_only/gnn", "local_only", "relational-gnn", 0.50, 0.20),
            _entry("central_lr", "sklearn", "central_lr", 0.75),
            _entry("central_gbm", "sklearn", "central_gbm", 0.88),
        ]
    }
    t = rds.build_targets(entries)
    # the best federated by pooled PR-AUC is row-mlp (0.80), whatever the GNN's mean
    assert t["card.fed_vs_central_lr"]["best_federated"] == "federated/row-mlp"
    # 0.80 / 0.75 = 1.0667 >= 1.0
    assert t["card.fed_vs_central_lr"]["value"] == pytest.approx(1.0667)
    assert t["card.fed_vs_central_lr"]["met"] is True
    # 0.80 / 0.88 = 0.9091 < 0.95
    assert t["card.fed_vs_central_gbm"]["value"] == pytest.approx(0.9091)
    assert t["card.fed_vs_central_gbm"]["met"] is False
    # federated pooled 0.80 / the same model alone at each site, mean 0.65 = 1.2308
    assert t["card.fed_vs_local_mean"]["value"] == pytest.approx(1.2308)
    assert t["card.fed_vs_local_mean"]["reference"] == "local_only/row-mlp"
    # context: means 0.78 / 0.65 = 1.2; pooled 0.80 / 0.70 = 1.1429
    assert t["card.fed_vs_local_mean"]["mean_ratio"] == pytest.approx(1.2)
    assert t["card.fed_vs_local_mean"]["pooled_ratio"] == pytest.approx(1.1429)
    assert t["card.fed_vs_local_mean"]["goal"].startswith(">= 1.0 ")


def test_targets_are_unmeasured_without_their_entries() -> None:
    t = rds.build_targets({"review": [_entry("federated/x", "federated", "x", float("nan"), 0.3)]})
    assert {k: v["met"] for k, v in t.items()} == {
        "review.fed_vs_central_lr": None,
        "review.fed_vs_central_gbm": None,
        "review.fed_vs_local_mean": None,
    }


# --------------------------------------------------------------------------- scenarios


def test_scenario_spec_sets_the_choice_and_absolute_site_files(tmp_path: Path) -> None:
    files = [tmp_path / f"site-{k}.parquet" for k in range(3)]
    spec = bench.scenario_spec("card", "relational-gnn+knn", files, rounds=4)
    assert spec["name"] == "card-anonymized-relational-gnn-knn"
    assert spec["rounds"] == 4
    assert (spec["task"]["model"], spec["task"]["graph"]) == ("relational-gnn", "knn")
    assert [s["data"]["path"] for s in spec["sites"]] == [str(f) for f in files]
    assert spec["baselines"] == {"local_only": True, "centralized": True, "non_graph": False}
    assert spec["export"] == {"enabled": False}
    mlp = bench.scenario_spec("card", "row-mlp", files, rounds=None)
    assert mlp["task"]["model"] == "row-mlp" and "graph" not in mlp["task"]
    assert mlp["rounds"] == 20
    with pytest.raises(ValueError, match="lists 3 sites; expected 2"):
        bench.scenario_spec("card", "row-mlp", files[:2], rounds=None)


def test_shipped_scenarios_map_the_documented_columns() -> None:
    from fedcore.config import TableData, load_scenario

    card = load_scenario(ROOT / "scenarios" / "card-anonymized.yaml")
    assert card.task.is_table and card.task.features == [f"V{i}" for i in range(1, 29)]
    assert not card.task.entities and card.export.int8 is False
    for site in card.sites:
        assert isinstance(site.data, TableData)
        cols = site.data.columns
        assert cols.label.column == "Class" and cols.amount == "Amount"
        assert cols.timestamp is not None
        assert (cols.timestamp.column, cols.timestamp.format) == ("Time", "offset_s")
        assert cols.timestamp.origin == "2013-09-01T00:00:00Z"
    review = load_scenario(ROOT / "scenarios" / "review-graph.yaml")
    assert review.task.model == "relational-gnn" and review.task.entities == ["user", "business"]
    assert review.task.structural is True and not review.task.features
    assert review.export.int8 is False
    for k, site in enumerate(review.sites):
        assert isinstance(site.data, TableData)
        cols = site.data.columns
        assert (cols.label.positive, cols.label.negative) == (["-1"], ["1"])
        assert cols.timestamp is None
        assert {r: (e.column, e.type) for r, e in cols.entities.items()} == {
            "user": ("user_id", "user"),
            "business": ("prod_id", "item"),
        }
        assert Path(site.data.path).name == f"site-{k}.csv"
        assert "data/real/review" in Path(site.data.path).as_posix()


# --------------------------------------------------------------------------- the run path


def test_one_choice_runs_through_fedcore_run_and_the_references_get_its_rows(
    tmp_path: Path,
) -> None:
    """A tiny review graph (3 x ~300 reviews), row-mlp for 1 round, as ``run`` does it."""
    rng = np.random.default_rng(0)
    pairs = rng.choice(300 * 30, size=900, replace=False)  # distinct (user, business) pairs
    users, prods = 1000 + pairs // 30, pairs % 30
    labels = np.where(rng.random(900) < 0.2, -1, 1)
    src = tmp_path / "metadata.gz"
    with gzip.open(src, "wt", encoding="ascii") as fh:
        fh.write(
            "".join(
                f"{u} {p} None {lab} None\n" for u, p, lab in zip(users, prods, labels, strict=True)
            )
        )
    done = rds.prepare("review", src, tmp_path / "real")
    files = [rds.site_file(tmp_path / "real", "review", k) for k in range(3)]
    entries, scenario = bench.run_choice("review", "row-mlp", files, 1, tmp_path / "work")
    assert [(e["name"], e["rounds"]) for e in entries] == [
        ("federated/row-mlp", 1),
        ("local_only/row-mlp", 1),
        ("centralized/row-mlp", 1),
    ]
    for e in entries:
        assert 0.0 < e["pr_auc"] <= 1.0 and 0.0 <= e["roc_auc"] <= 1.0
    local = entries[1]
    assert local["mean_pr_auc"] == pytest.approx(np.mean(list(local["per_site_pr_auc"].values())))
    rows = bench.row_inputs(scenario, scenario.parent / "out" / "sites")
    # every review is a row: 900 in all, each site holding out round(30%) of its own
    site_rows = [done["sites"][f"site-{k}"]["rows"] for k in range(3)]
    assert len(rows["train_y"]) + len(rows["test_y"]) == 900
    assert len(rows["test_y"]) == sum(round(0.3 * n) for n in site_rows)
    assert int(rows["train_y"].sum() + rows["test_y"].sum()) == int((labels == -1).sum())
    # row-mlp's inputs: log_amount, has_amount, then 5 structural inputs per entity role
    assert rows["train_x"].shape[1] == 2 + 2 * 5
