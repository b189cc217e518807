"""A site's transactions CSV as hostile input: every problem named by file, line and column, bounded."""

from __future__ import annotations

import dataclasses
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from fedcore.config import CsvData, GeneratedData, SiteConfig, TaskSpec
from fedcore.data.checks import label_problem, site_data_problems, train_rows
from fedcore.data.csv_loader import (
    CSV_FIELD_LIMIT,
    MAX_LINE_CHARS,
    MAX_PROBLEMS,
    load_transactions_csv,
    parse_number,
    write_transactions_csv,
)
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import time_split
from fedcore.data.sites import load_site_data, load_site_transactions
from fedcore.data.transactions import DataError

FEATURES = ["channel_online", "account_age_days"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> CsvData:
    tx = generate_transactions(GeneratedData(transactions=300, fraud_rate=0.05), seed=3)
    path = tmp_path_factory.mktemp("csv") / "good.csv"
    mapping = write_transactions_csv(tx, path)
    return CsvData(path=path, columns=mapping)


def _variant(good: CsvData, tmp_path: Path, lines: list[str] | bytes) -> CsvData:
    path = tmp_path / "bank.csv"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return good.model_copy(update={"path": path})


def _lines(good: CsvData) -> list[str]:
    return good.path.read_text(encoding="utf-8").splitlines()


def _set(good: CsvData, line: int, column: str, value: str) -> list[str]:
    """The good file's lines with ``column`` of 1-based ``line`` set to ``value``."""
    lines = _lines(good)
    header = lines[0].split(",")
    row = lines[line - 1].split(",")
    row[header.index(column)] = value
    lines[line - 1] = ",".join(row)
    return lines


def _refused(src: CsvData) -> DataError:
    with pytest.raises(DataError) as err:
        load_transactions_csv(src, FEATURES)
    for problem in err.value.problems:
        assert str(src.path) in problem
    return err.value


def test_the_generated_file_loads(good: CsvData) -> None:
    assert len(load_transactions_csv(good, FEATURES)) == 300
    assert site_data_problems(good, FEATURES) == []


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("amount", "1_000", "cannot read amount '1_000'"),
        ("amount", "0x10", "cannot read amount '0x10'"),
        ("amount", "nan", "expected a finite number"),
        ("amount", "-Infinity", "expected a finite number"),
        ("amount", "1e400", "cannot read amount '1e400'"),
        ("amount", "-5", "amount '-5' is out of range; expected 0 <= amount <= 1e+12"),
        ("amount", "1e300", "amount '1e300' is out of range"),
        ("channel_online", "1e308", "feature channel_online '1e308' is out of range"),
        ("channel_online", "-1e308", "feature channel_online '-1e308' is out of range"),
        ("timestamp", "9999-12-31T00:00:00Z", "lies in the future"),
        ("timestamp", "1709296200000", "UNIX milliseconds? divide by 1000"),
        ("timestamp", "1980-01-01T00:00:00Z", "is before 1990-01-01"),
        ("timestamp", "1_709_296_200", "cannot read timestamp"),
        ("timestamp", "2024-02-30T00:00:00Z", "cannot read timestamp"),
        ("label", "2", "cannot read label '2'"),
        ("tx_id", "", "transaction id is empty"),
    ],
)
def test_bad_values_name_line_and_column(
    good: CsvData, tmp_path: Path, column: str, value: str, expected: str
) -> None:
    err = _refused(_variant(good, tmp_path, _set(good, 7, column, value)))
    assert err.total == 1
    assert f"line 7, column {column!r}" in str(err) and expected in str(err)


def test_parse_number_is_strict() -> None:
    assert parse_number(" -12.5e3 ") == -12500.0 and parse_number(".5") == 0.5
    for text in ("1_000", "0x1f", "nan", "inf", "1e999", "12,5", "", "1.2.3", "\u0661"):
        with pytest.raises(ValueError):
            parse_number(text)


def test_a_duplicate_id_and_a_repeated_row_are_named(good: CsvData, tmp_path: Path) -> None:
    lines = _lines(good)
    other = lines[9].split(",")
    other[0] = lines[4].split(",")[0]  # line 10 takes line 5's id, other values differ
    lines[9] = ",".join(other)
    lines.append(lines[2])  # line 3 again, whole
    err = _refused(_variant(good, tmp_path, lines))
    text = str(err)
    assert "line 10, column 'tx_id': transaction id" in text and "also on line 5" in text
    assert f"line {len(lines)}: repeats line 3 exactly" in text
    assert err.total == 2


def test_a_repeated_row_without_an_id_column(good: CsvData, tmp_path: Path) -> None:
    lines = _lines(good)
    lines.insert(20, lines[11])
    src = _variant(good, tmp_path, lines)
    src = src.model_copy(
        update={"columns": src.columns.model_copy(update={"transaction_id": None})}
    )
    assert "line 21: repeats line 12 exactly" in str(_refused(src))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda ls: [ls[0] + ",amount", *ls[1:]], "names column 'amount' twice (columns 6 and"),
        (lambda ls: [ls[0], ls[1] + ",extra", *ls[2:]], "line 2: expected 12 fields"),
        (
            lambda ls: [ls[0], ls[1].rsplit(",", 1)[0], *ls[2:]],
            "line 2: expected 12 fields as in the header",
        ),
        (lambda ls: [ls[0], ls[1] + "\x00", *ls[2:]], "line 2, character"),
        (lambda ls: [ls[0].replace(",", ";"), *ls[1:]], "looks delimited by ';', not ','"),
        (lambda ls: [ls[0].replace(",", "\t"), *ls[1:]], "looks delimited by '\\t', not ','"),
        (lambda ls: [], "file is empty"),
        (lambda ls: [ls[0]], "has a header but no transactions"),
        (lambda ls: ["", "  ", ""], "file is empty"),
    ],
)
def test_structure_problems(good: CsvData, tmp_path: Path, edit: object, expected: str) -> None:
    assert callable(edit)
    assert expected in str(_refused(_variant(good, tmp_path, edit(_lines(good)))))


def test_binary_garbage_names_the_line(good: CsvData, tmp_path: Path) -> None:
    raw = ("\n".join(_lines(good)[:5]) + "\n").encode() + bytes(range(128, 256)) + b"\n"
    err = _refused(_variant(good, tmp_path, raw))
    assert "not UTF-8 text: byte b'\\x80' at line 6, byte 1 of the line" in str(err)


def test_a_bom_is_accepted(good: CsvData, tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbf" + good.path.read_bytes()
    assert len(load_transactions_csv(_variant(good, tmp_path, raw), FEATURES)) == 300


def test_rows_in_any_order_are_sorted(good: CsvData, tmp_path: Path) -> None:
    lines = _lines(good)
    shuffled = [lines[0], *reversed(lines[1:])]
    tx = load_transactions_csv(_variant(good, tmp_path, shuffled), FEATURES)
    assert np.all(np.diff(tx.timestamp) >= 0) and len(tx) == 300


def test_a_10mb_line_is_skipped_in_bounded_time(good: CsvData, tmp_path: Path) -> None:
    lines = _lines(good)
    lines.insert(3, "x" * 10_000_000)
    src = _variant(good, tmp_path, lines)
    start = time.perf_counter()
    err = _refused(src)
    assert time.perf_counter() - start < 10
    assert f"line 4: longer than {MAX_LINE_CHARS} characters (10000001)" in str(err)
    assert err.total == 1  # the lines after it are still read, and are fine


def test_an_unclosed_quote_stops_at_the_field_limit(good: CsvData, tmp_path: Path) -> None:
    lines = _lines(good)
    lines[5] = lines[5].replace(",", ',"', 1)  # opens a quote never closed
    lines += [",".join(["y" * 1000] * 8)] * (2 * CSV_FIELD_LIMIT // 8000)
    err = _refused(_variant(good, tmp_path, lines))
    assert "malformed CSV" in str(err) and "an unclosed quote?" in str(err)


def test_messages_are_bounded(good: CsvData, tmp_path: Path) -> None:
    lines = _lines(good)
    for i in range(1, 61):
        lines[i] = lines[i].replace(lines[i].split(",")[5], "abc", 1)  # amount of 60 rows
    err = _refused(_variant(good, tmp_path, lines))
    assert err.total == 60 and len(err.problems) == MAX_PROBLEMS
    assert f"... and {60 - MAX_PROBLEMS} more (the first {MAX_PROBLEMS} are shown)" in str(err)
    listed = site_data_problems(_variant(good, tmp_path, lines), FEATURES)
    assert len(listed) == MAX_PROBLEMS + 1 and listed[-1].endswith(
        "40 more problem(s) in this file"
    )


def test_train_rows_is_the_graph_split() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 333):
        ts = np.sort(rng.integers(0, 20, n)).astype(float)  # many ties
        for fraction in (0.1, 0.3, 0.5, 0.85):
            np.testing.assert_array_equal(train_rows(ts, fraction), ~time_split(ts, fraction))


@pytest.mark.parametrize("one", [0, 1])
def test_a_site_with_one_label_cannot_train(good: CsvData, tmp_path: Path, one: int) -> None:
    tx = generate_transactions(GeneratedData(transactions=300, fraud_rate=0.05), seed=3)
    tx = dataclasses.replace(tx, label=np.full(len(tx), one, dtype=np.int64))
    path = tmp_path / "one.csv"
    src = CsvData(path=path, columns=write_transactions_csv(tx, path))
    why = label_problem(load_transactions_csv(src, FEATURES), 0.3, path)
    assert why is not None and f"are labelled {one}" in why and str(path) in why
    assert site_data_problems(src, FEATURES, 0.3) == [why]
    cfg = SiteConfig(id="bank-x", data=src)
    with pytest.raises(DataError, match=f"are labelled {one}"):
        load_site_transactions(cfg, TaskSpec(features=FEATURES))


def test_fraud_only_in_the_test_rows_cannot_train(good: CsvData, tmp_path: Path) -> None:
    tx = load_transactions_csv(good, FEATURES)
    train = train_rows(tx.timestamp, 0.3)
    labels = np.where(train, 0, tx.label)
    assert label_problem(dataclasses.replace(tx, label=labels), 0.3, "f.csv") is not None
    assert label_problem(tx, 0.3, "f.csv") is None


def test_the_graph_cache_is_private(good: CsvData, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = SiteConfig(id="bank-x", data=good, state_dir=state)
    load_site_data(cfg, TaskSpec(features=FEATURES))
    cached = list((state / "cache").glob("graph-*.pt"))
    assert len(cached) == 1
    assert stat.S_IMODE(cached[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_feature_named_twice_is_read_once(good: CsvData) -> None:
    tx = load_transactions_csv(good, [*FEATURES, FEATURES[0]])
    assert list(tx.features) == FEATURES and len(tx.features[FEATURES[0]]) == 300
