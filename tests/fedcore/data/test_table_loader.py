"""The table loader: CSV and Parquet in a site's own schema, every timestamp format, problems reported by line and column."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedcore.config import TableData, TaskSpec
from fedcore.data.checks import site_data_problems
from fedcore.data.table import Table
from fedcore.data.table_loader import check_table, load_table
from fedcore.data.transactions import DataError, DataFileMissing

CSV = textwrap.dedent(
    """\
    txn,when,amt,card,shop,income,country,is_fraud
    t1,2024-03-01T00:00:00Z,10.5,c1,m1,100,DE,yes
    t2,2024-03-01T01:00:00Z,,c2,m1,na,FR,no
    t3,2024-03-01T02:00:00Z,3,c1,,inf,,no
    t4,2024-03-01T03:00:00Z,7.25,c3,m2,-inf,DE,yes
    """
)


def columns(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "label": {"column": "is_fraud", "positive": ["yes"], "negative": ["no"]},
        "timestamp": {"column": "when", "format": "iso"},
        "amount": "amt",
        "entities": {"card": {"column": "card", "type": "card"}, "merchant": {"column": "shop"}},
        "features": {"income": "income"},
        "categorical": {"country": "country"},
    }
    base.update(over)
    return base


def src(path: Path, **over: Any) -> TableData:
    return TableData(path=path, columns=columns(**over))  # type: ignore[arg-type]


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def times(tmp_path: Path, cells: list[str], fmt: str, origin: str | None = None) -> list[float]:
    body = "".join(f"{c},1\n" for c in cells)
    path = write(tmp_path, "ts,y\n" + body)
    stamp = {"column": "ts", "format": fmt, "origin": origin}
    table = load_table(
        TableData(path=path, columns={"label": {"column": "y"}, "timestamp": stamp})  # type: ignore[arg-type]
    )
    assert table.timestamp is not None
    return [float(v) for v in table.timestamp]


def test_iso_with_z_offset_and_naive(tmp_path: Path) -> None:
    got = times(
        tmp_path,
        ["2024-03-01T12:30:00Z", "2024-03-01T13:30:00+01:00", "2024-03-01T12:30:00", "1970-01-01"],
        "iso",
    )
    assert got == [1709296200.0, 1709296200.0, 1709296200.0, 0.0]


def test_unix_seconds_and_milliseconds(tmp_path: Path) -> None:
    assert times(tmp_path, ["1709296200", "1709296200.5"], "unix_s") == [1709296200.0, 1709296200.5]
    assert times(tmp_path, ["1709296200000", "1500"], "unix_ms") == [1709296200.0, 1.5]


def test_offsets_with_and_without_origin(tmp_path: Path) -> None:
    assert times(tmp_path, ["0", "3600", "86400.5"], "offset_s") == [0.0, 3600.0, 86400.5]
    got = times(tmp_path, ["0", "3600"], "offset_s", "2013-09-01T00:00:00Z")
    assert got == [1377993600.0, 1377997200.0]  # 2013-09-01T00:00:00Z = 1377993600


def test_missing_timestamp_is_nan_and_milliseconds_as_seconds_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "ts,y\n,1\nNULL,0\n1709296200000,1\n")
    data = TableData(
        path=path,
        columns={"label": {"column": "y"}, "timestamp": {"column": "ts", "format": "unix_s"}},  # type: ignore[arg-type]
    )
    with pytest.raises(DataError) as err:
        load_table(data)
    assert err.value.total == 1
    msg = str(err.value)
    assert (
        f"{path}, line 4, column 'ts': timestamp '1709296200000' looks like UNIX milliseconds"
        in msg
    )
    assert "format: unix_ms" in msg
    path.write_text("ts,y\n,1\nNULL,0\n1709296200,1\n")
    table = load_table(data)
    assert table.timestamp is not None
    assert np.isnan(table.timestamp[:2]).all() and table.timestamp[2] == 1709296200.0


def test_bad_iso_names_the_expected_form(tmp_path: Path) -> None:
    path = write(tmp_path, "ts,y\nyesterday,1\n")
    data = TableData(path=path, columns={"label": {"column": "y"}, "timestamp": {"column": "ts"}})  # type: ignore[arg-type]
    assert check_table(data) == [
        f"{path}, line 2, column 'ts': cannot read timestamp 'yesterday'; expected ISO 8601 "
        "such as 2024-03-01T12:30:00Z (no zone: UTC; Z or +01:00 allowed)"
    ]


def test_csv_values_missing_and_infinite(tmp_path: Path) -> None:
    table = load_table(src(write(tmp_path, CSV)))
    assert table.label.tolist() == [1, 0, 0, 1]
    assert table.line.tolist() == [2, 3, 4, 5]
    assert table.amount is not None
    assert table.amount[[0, 2, 3]].tolist() == [10.5, 3.0, 7.25] and np.isnan(table.amount[1])
    income = table.numeric["income"]
    assert income[0] == 100.0 and np.isnan(income[1]) and income[2] == math.inf
    assert income[3] == -math.inf
    assert table.entities["card"].tolist() == ["c1", "c2", "c1", "c3"]
    assert table.entities["merchant"].tolist() == ["m1", "m1", "", "m2"]
    assert table.entity_types == {"card": "card", "merchant": "other"}
    assert table.categorical["country"].tolist() == ["DE", "FR", "", "DE"]
    assert table.timestamp is not None and table.timestamp[1] - table.timestamp[0] == 3600.0


def to_parquet(csv_path: Path, out: Path) -> None:
    """The CSV's columns as Parquet: numbers as float64 (nulls where missing), the rest as text."""
    import csv

    with csv_path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    arrays = {}
    for i, name in enumerate(header):
        cells = [r[i] for r in body]
        if name in ("amt", "income"):
            arrays[name] = pa.array(
                [None if c in ("", "na") else float(c) for c in cells], type=pa.float64()
            )
        else:
            arrays[name] = pa.array(cells, type=pa.string())
    pq.write_table(pa.table(arrays), out, row_group_size=2)


def assert_same(a: Table, b: Table) -> None:
    assert a.label.tolist() == b.label.tolist()
    assert a.timestamp is not None and b.timestamp is not None
    np.testing.assert_array_equal(a.timestamp, b.timestamp)
    assert a.amount is not None and b.amount is not None
    np.testing.assert_array_equal(a.amount, b.amount)
    assert a.numeric.keys() == b.numeric.keys()
    for k in a.numeric:
        np.testing.assert_array_equal(a.numeric[k], b.numeric[k])
    for k in a.entities:
        assert a.entities[k].tolist() == b.entities[k].tolist()
    for k in a.categorical:
        assert a.categorical[k].tolist() == b.categorical[k].tolist()
    assert a.entity_types == b.entity_types


def test_csv_and_parquet_load_to_equal_tables(tmp_path: Path) -> None:
    csv_path = write(tmp_path, CSV)
    to_parquet(csv_path, tmp_path / "t.parquet")
    from_csv = load_table(src(csv_path))
    from_parquet = load_table(src(tmp_path / "t.parquet"))
    assert_same(from_csv, from_parquet)
    assert from_parquet.line.tolist() == [1, 2, 3, 4]  # Parquet: 1-based row numbers


def test_parquet_timestamp_type_is_read_as_unix_seconds(tmp_path: Path) -> None:
    path = tmp_path / "t.pq"
    stamps = pa.array([1709296200_000_000, None], type=pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"ts": stamps, "y": pa.array([True, False])}), path)
    data = TableData(
        path=path,
        columns={"label": {"column": "y"}, "timestamp": {"column": "ts", "format": "unix_ms"}},  # type: ignore[arg-type]
    )
    table = load_table(data)
    assert table.timestamp is not None
    assert table.timestamp[0] == 1709296200.0 and np.isnan(table.timestamp[1])
    assert table.label.tolist() == [1, 0]  # str(True) == "True" matches "true"


def test_parquet_column_of_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"y": ["1", "0"], "income": ["12,5$", "3"]}), path)
    data = TableData(
        path=path, columns={"label": {"column": "y"}, "features": {"income": "income"}}
    )  # type: ignore[arg-type]
    assert check_table(data) == [
        f"{path}, column 'income' (features.income): Parquet type string; expected a numeric "
        "type (integer, floating point or decimal): convert the column or map another"
    ]


def test_malformed_value_names_file_line_column_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, CSV.replace(",100,", ',"12,5$",'))
    with pytest.raises(DataError) as err:
        load_table(src(path))
    assert err.value.total == 1
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 2, column 'income': feature income '12,5$' cannot be read")
    assert "expected a plain number such as 12.5" in msg


def test_several_problems_counted_in_file_order(tmp_path: Path) -> None:
    text = (
        CSV.replace("10.5,c1", "ten,c1")  # line 2: amount
        .replace(",no\n", ",maybe\n", 1)  # line 3: label
        .replace("t4,2024-03-01T03:00:00Z,7.25", "t4,soon,1e400")  # line 5: time and amount
    )
    path = write(tmp_path, text + "t5,2024-03-01T04:00:00Z,1\n")  # line 6: too few fields
    with pytest.raises(DataError) as err:
        load_table(src(path))
    assert err.value.total == 5
    assert [p.split(": ", 1)[0] for p in err.value.problems] == [
        f"{path}, line 2, column 'amt'",
        f"{path}, line 3, column 'is_fraud'",
        f"{path}, line 5, column 'when'",
        f"{path}, line 5, column 'amt'",
        f"{path}, line 6",
    ]
    assert "label 'maybe' is unknown; expected 'yes' (fraud) or 'no' (legitimate)" in str(err.value)
    assert "amount '1e400' overflows to infinity" in str(err.value)
    assert str(err.value).startswith(f"{path}: 5 problems:")


def test_only_the_first_problems_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "y\n" + "x\n" * 30)
    data = TableData(path=path, columns={"label": {"column": "y"}})  # type: ignore[arg-type]
    listed = check_table(data)
    assert len(listed) == 21 and listed[-1] == "... and 10 more problem(s) in this file"
    assert listed[0].startswith(f"{path}, line 2, column 'y': label 'x' is unknown")


def test_yelpchi_style_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "rating,label\n5,1\n1,-1\n3, 1 \n")
    label = {"column": "label", "positive": ["-1"], "negative": ["1"]}
    data = TableData(path=path, columns={"label": label, "features": {"rating": "rating"}})  # type: ignore[arg-type]
    table = load_table(data)
    assert table.label.tolist() == [0, 1, 0] and table.numeric["rating"].tolist() == [5.0, 1.0, 3.0]
    assert table.timestamp is None and table.amount is None


def test_missing_label_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "y,v\n,1\n")
    data = TableData(path=path, columns={"label": {"column": "y"}})  # type: ignore[arg-type]
    (msg,) = check_table(data)
    assert msg.startswith(f"{path}, line 2, column 'y': label is missing; expected '1' / 'true'")


def test_task_roles_select_columns_and_unmapped_entity_gives_empty_ids(tmp_path: Path) -> None:
    path = write(tmp_path, CSV)
    task = TaskSpec(dataset="table", entities=["card", "device"], features=["income"])
    table = load_table(src(path), task)
    assert sorted(table.entities) == ["card", "device"]
    assert table.entities["device"].tolist() == ["", "", "", ""]
    assert table.categorical == {}  # the task names no categorical role
    assert table.entity_types["device"] == "other"


def test_unmapped_feature_role_says_map_it(tmp_path: Path) -> None:
    task = TaskSpec(dataset="table", entities=["card"], features=["income", "age"])
    with pytest.raises(DataError, match=r"role\(s\) features.age have no column at this site"):
        load_table(src(write(tmp_path, CSV)), task)


def test_missing_header_columns(tmp_path: Path) -> None:
    path = write(tmp_path, CSV.replace("amt", "amount").replace("income", "inc"))
    (msg,) = check_table(src(path))
    assert msg.startswith(
        f"{path}, line 1: header lacks column(s) 'amt' (for amount), 'income' (for features.income); "
        "columns found: 'txn', 'when', 'amount'"
    )


def test_duplicate_header(tmp_path: Path) -> None:
    path = write(tmp_path, "y,y\n1,0\n")
    data = TableData(path=path, columns={"label": {"column": "y"}})  # type: ignore[arg-type]
    (msg,) = check_table(data)
    assert "the header names column 'y' twice (columns 1 and 2)" in msg


def test_missing_empty_directory_and_binary_files(tmp_path: Path) -> None:
    cols = {"label": {"column": "y"}}
    with pytest.raises(DataFileMissing, match="file not found"):
        load_table(TableData(path=tmp_path / "no.csv", columns=cols))  # type: ignore[arg-type]
    assert "is not a regular file" in check_table(TableData(path=tmp_path, columns=cols))[0]  # type: ignore[arg-type]
    empty = write(tmp_path, "")
    assert check_table(TableData(path=empty, columns=cols)) == [  # type: ignore[arg-type]
        f"{empty}: file is empty; expected a header line and rows"
    ]
    header = write(tmp_path, "y\n", "h.csv")
    assert check_table(TableData(path=header, columns=cols)) == [  # type: ignore[arg-type]
        f"{header}: has a header but no rows; expected rows after line 1"
    ]
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"y\n1\n\xff\xfe\n")
    assert "not UTF-8 text" in check_table(TableData(path=binary, columns=cols))[0]  # type: ignore[arg-type]
    bad = write(tmp_path, "not parquet", "x.parquet")
    assert "not a readable Parquet file" in check_table(TableData(path=bad, columns=cols))[0]  # type: ignore[arg-type]


def test_a_200k_row_csv_streams(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 200_000
    income = rng.normal(50, 10, n).round(3)
    label = (rng.random(n) < 0.05).astype(int)
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write("ts,income,y\n")
        fh.writelines(f"{i},{v},{y}\n" for i, (v, y) in enumerate(zip(income, label, strict=True)))
    data = TableData(
        path=path,
        columns={  # type: ignore[arg-type]
            "label": {"column": "y"},
            "timestamp": {"column": "ts", "format": "offset_s"},
            "features": {"income": "income"},
        },
    )
    table = load_table(data)
    assert len(table) == n and table.num_fraud == int(label.sum())
    np.testing.assert_array_equal(table.numeric["income"], income)
    assert table.timestamp is not None and table.timestamp[-1] == n - 1
    assert table.line[-1] == n + 1


def test_site_data_problems_checks_labels_of_training_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "y\n" + "0\n" * 9 + "1\n")
    data = TableData(path=path, columns={"label": {"column": "y"}})  # type: ignore[arg-type]
    assert site_data_problems(data) == []  # no timestamp: every row trains
    timed = write(tmp_path, "t,y\n" + "".join(f"{i},0\n" for i in range(9)) + "9,1\n", "u.csv")
    data = TableData(
        path=timed,
        columns={"label": {"column": "y"}, "timestamp": {"column": "t", "format": "unix_s"}},  # type: ignore[arg-type]
    )
    (msg,) = site_data_problems(data, test_fraction=0.2)
    assert msg.startswith(f"{timed}, column 'y': all 8 training rows")


def invoke_validate(path: Path) -> tuple[int, str]:
    import typer
    from typer.testing import CliRunner

    from fedcore.cli.validate_cmd import validate

    app = typer.Typer()
    app.command()(validate)
    res = CliRunner().invoke(app, [str(path)], env={"COLUMNS": "1000"})  # rich: no wrapping
    return res.exit_code, " ".join(res.output.split())


TABLE_SITE = "data: {kind: table, path: t.csv, columns: {label: {column: is_fraud, positive: ['yes'], negative: ['no']}, amount: amt, features: {income: income}}}"


def test_validate_site_file_prints_the_table_problems(tmp_path: Path) -> None:
    data = write(tmp_path, CSV.replace(",100,", ',"12,5$",').replace(",no\n", ",maybe\n", 1))
    site = tmp_path / "bank-t.yaml"
    site.write_text(f"id: bank-t\n{TABLE_SITE}\n")
    code, out = invoke_validate(site)
    assert code == 2
    assert "invalid site data" in out and "site 'bank-t' (data kind table)" in out
    assert f"{data}, line 2, column 'income': feature income '12,5$' cannot be read" in out
    assert f"{data}, line 3, column 'is_fraud': label 'maybe' is unknown" in out
    data.write_text(CSV)
    code, out = invoke_validate(site)
    assert code == 0, out
    assert "ok" in out and "data table" in out


def test_validate_scenario_prints_the_table_problems(tmp_path: Path) -> None:
    data = write(tmp_path, CSV.replace("t2,2024-03-01T01:00:00Z,,", "t2,2024-03-01T01:00:00Z,12$,"))
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        textwrap.dedent(
            """
            name: tables
            rounds: 1
            task: {dataset: table, model: row-mlp, features: [income]}
            scheduler: {min_sites: 2}
            export: {int8: false}
            sites:
            """
        )
        + "".join(f"  - id: {site}\n    {TABLE_SITE}\n" for site in ("bank-t", "bank-u"))
    )
    code, out = invoke_validate(scenario)
    assert code == 2, out
    assert "2 of 2 site(s) have data a run cannot use" in out
    assert "site 'bank-t' (data kind table)" in out and "site 'bank-u' (data kind table)" in out
    bad = f"{data}, line 3, column 'amt': amount '12$' cannot be read; expected a plain number"
    assert out.count(bad) == 2


def test_parse_numbers_takes_plain_numbers_only() -> None:
    from fedcore.data.table_values import parse_numbers

    values, found = parse_numbers(["5.", " .5", "+1e+5", "-3"], "feature x")
    assert values.tolist() == [5.0, 0.5, 100000.0, -3.0] and found == []  # parsed at once
    values, found = parse_numbers(["1_000", "0x10", "NA", "-Infinity", "1e400", "7"], "amount")
    assert [i for i, _ in found] == [0, 1, 4]
    assert found[2][1].startswith("amount '1e400' overflows to infinity")
    assert np.isnan(values[:3]).all() and values[3] == -math.inf and values[5] == 7.0


def test_parquet_float_labels_and_categories_read_as_a_csv_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"y": [1.0, 0.0, 1.0], "g": [3.0, 2.5, None]}), path)
    src = TableData(path=path, columns={"label": {"column": "y"}, "categorical": {"g": "g"}})
    table = load_table(src)
    assert table.label.tolist() == [1, 0, 1]  # 1.0 is the label "1"
    assert table.categorical["g"].tolist() == ["3", "2.5", ""]


def test_validate_refuses_what_the_cleaning_step_would_fail(tmp_path: Path) -> None:
    path = write(tmp_path, "amt,y\n10,0\n999999,1\n20,0\n30,1\n")
    src = TableData(
        path=path,
        columns={"label": {"column": "y"}, "amount": "amt", "ranges": {"amount": [0, 1000]}},
    )
    strict = TaskSpec(dataset="table", cleaning={"out_of_range": "fail"})
    problems = site_data_problems(src, task=strict, test_fraction=0.25)
    assert problems == [f"{path}, line 3: a number out of its range (amount outside [0, 1000])"]
    clip = TaskSpec(dataset="table")  # the default clips, and says so in its report
    assert site_data_problems(src, task=clip, test_fraction=0.25) == []
