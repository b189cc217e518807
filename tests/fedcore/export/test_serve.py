"""`fed-client predict` on a real export: row order, the path taken, messages that name the user's file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcore.cli.client_cmd import app as client_app
from fedcore.config import GeneratedData, TaskSpec
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import GENERATED_FEATURES, generate_transactions
from fedcore.data.graph import build_graph, feature_dim
from fedcore.export import CPU_PROVIDER, ExportManifest, export_for_site
from fedcore.export.serve import score_csv
from fedcore.models.fraud_gnn import build_model
from fedcore.training import seed_everything

TASK = TaskSpec(hidden=8, layers=1, features=list(GENERATED_FEATURES))
ENV = {"COLUMNS": "80"}  # what rich assumes when the output is not a terminal


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site's export of an untrained GNN (INT8 accepted at any drop: tolerance 1)."""
    tx = generate_transactions(GeneratedData(transactions=400, fraud_rate=0.05), seed=1)
    seed_everything(0)
    model = build_model(TASK, feature_dim(TASK)).eval()
    out = tmp_path_factory.mktemp("site") / "export"
    m = export_for_site(
        model,
        build_graph(tx, TASK),
        out,
        task=TASK,
        providers=[CPU_PROVIDER],
        tolerance=1.0,
        latency_runs=1,
    )
    assert m.path_taken == "onnx-dynamic" and m.fp32_file is not None
    return out


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def in_time_order(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 unlabeled transactions, as written by fedcore (time order)."""
    tx = generate_transactions(GeneratedData(transactions=200, fraud_rate=0.05), seed=9)
    path = tmp_path_factory.mktemp("csv") / "labeled.csv"
    write_transactions_csv(tx, path)
    header, rows = _rows(path)
    keep = [i for i, h in enumerate(header) if h != "label"]
    return _write(
        path.with_name("time-order.csv"),
        [header[i] for i in keep],
        [[r[i] for i in keep] for r in rows],
    )


@pytest.fixture(scope="module")
def shuffled(in_time_order: Path) -> Path:
    header, rows = _rows(in_time_order)
    order = np.random.default_rng(0).permutation(len(rows))
    return _write(in_time_order.with_name("shuffled.csv"), header, [rows[i] for i in order])


def _predict(*args: str) -> tuple[int, str, str]:
    """``fed-client predict`` on the file alone (this export has no history beside it)."""
    res = CliRunner().invoke(client_app, ["predict", "--no-history", *args], env=ENV)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def test_scores_are_written_in_the_files_row_order(
    export_dir: Path, shuffled: Path, in_time_order: Path, tmp_path: Path
) -> None:
    dest = tmp_path / ("a-rather-long-folder-name-" * 3) / "for-the-scores" / "scores.csv"
    code, out, err = _predict(
        "--model", str(export_dir / "model.int8.onnx"), "--input", str(shuffled), "--out", str(dest)
    )
    assert code == 0, out + err
    header, rows = _rows(shuffled)
    _, scored = _rows(dest)
    assert [r[0] for r in scored] == [r[header.index("tx_id")] for r in rows]
    # the same transactions in time order get the same scores: the order only changes the output
    by_time = score_csv(export_dir, in_time_order)
    expected = dict(zip(by_time.tx_id, by_time.score, strict=True))
    assert np.allclose([float(r[1]) for r in scored], [expected[r[0]] for r in scored], atol=1e-5)
    # not a terminal: the line is not wrapped at 80 columns, the path stays whole
    assert len(str(dest)) > 80 and f"wrote {dest}\n" in out
    assert "(onnx-dynamic)" in out


def test_the_fp32_model_says_fp32(export_dir: Path, in_time_order: Path, tmp_path: Path) -> None:
    code, out, err = _predict(
        "--model",
        str(export_dir / "model.fp32.onnx"),
        "--input",
        str(in_time_order),
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert code == 0, out + err
    assert "with model.fp32.onnx (fp32)" in out and "onnx-dynamic" not in out


def test_a_bad_value_names_the_users_file_and_line(
    export_dir: Path, shuffled: Path, tmp_path: Path
) -> None:
    header, rows = _rows(shuffled)
    rows[1][header.index("amount")] = "12,50 EUR"  # line 3 of the file
    bad = _write(tmp_path / "bad.csv", header, rows)
    code, out, err = _predict("--model", str(export_dir), "--input", str(bad))
    assert code == 2, out + err
    assert f"{bad}, line 3, column 'amount': cannot read amount '12,50 EUR'" in err
    short = _write(tmp_path / "short.csv", header, [rows[0], rows[2][:3]])
    code, out, err = _predict("--model", str(export_dir), "--input", str(short))
    assert code == 2 and f"{short}, line 3: expected {len(header)} fields" in err, err


def test_the_global_model_is_refused_with_where_exports_are(tmp_path: Path, shuffled: Path) -> None:
    weights = tmp_path / "runs" / "bank-fraud" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not an export")
    code, out, err = _predict("--model", str(weights), "--input", str(shuffled))
    text = " ".join(err.split())
    assert code == 2, out + err
    assert "the global model's weights, not a site's exported model" in text
    assert "OUT/sites/<site>/export/<run>/" in text and "fed-client start" in text
    assert "export_for_site" not in text


def test_manifest_and_cli_name_the_id_column_tx_id(
    export_dir: Path, shuffled: Path, tmp_path: Path
) -> None:
    assert ExportManifest.read(export_dir).optional_columns == ("tx_id", "merchant", "device")
    header, rows = _rows(shuffled)
    renamed = _write(
        tmp_path / "renamed.csv", ["transaction_id" if h == "tx_id" else h for h in header], rows
    )
    dest = tmp_path / "s.csv"
    code, out, err = _predict(
        "--model", str(export_dir), "--input", str(renamed), "--out", str(dest)
    )
    assert code == 0, out + err
    assert "read transaction ids from column transaction_id (fedcore's name is tx_id)" in err
    assert [r[0] for r in _rows(dest)[1]] == [r[header.index("tx_id")] for r in rows]


def test_help_says_scores_depend_on_the_sites_history() -> None:
    res = CliRunner().invoke(client_app, ["predict", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.replace("│", " ").split())
    assert "OUT/sites/SITE/export/RUN/" in text
    assert "scored in the context of the site's history" in text
    assert "--no-history" in text and "Score the file alone" in text
    assert "written in the file's row order" in text


def test_without_a_history_predict_says_where_it_looked_and_what_to_do(
    export_dir: Path, in_time_order: Path
) -> None:
    res = CliRunner().invoke(
        client_app, ["predict", "--model", str(export_dir), "--input", str(in_time_order)], env=ENV
    )
    text = " ".join(res.stderr.split())
    assert res.exit_code == 2, res.output
    assert "no transaction history at" in text and "--no-history" in text
    assert str(export_dir.parent / "history" / "history.sqlite") in text.replace(" ", "") or (
        "history.sqlite" in text
    )
