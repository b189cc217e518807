"""Tests of the bank CSV loader and writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.config import ColumnMapping, CsvData, GeneratedData
from fedcore.data.csv_loader import load_transactions_csv, parse_timestamp, write_transactions_csv
from fedcore.data.generator import generate_transactions
from fedcore.data.transactions import DataError

MAPPING = ColumnMapping(
    transaction_id="Txn Ref",
    payer="Debtor IBAN",
    payee="Creditor IBAN",
    merchant="MCC Merchant",
    device="Device FP",
    amount="Amt (EUR)",
    timestamp="Booked At",
    label="is_fraud",
    features={"channel_online": "Online?", "account_age_days": "AcctAge"},
)
HEADER = "Txn Ref;Debtor IBAN;Creditor IBAN;MCC Merchant;Device FP;Amt (EUR);Booked At;is_fraud;Online?;AcctAge;Branch"
ROWS = [
    "T1;DE01;DE02;;dev-9;120.50;2024-03-01T12:30:00Z;0;1;400;Berlin",
    "T2;DE03;DE02;M-77;;19.99;2024-03-01 08:00:00;false;0;35.5;Munich",
    "T3;DE01;DE04;;dev-9;990;1709300000;1;1;400;Berlin",
    "",
    "T4;DE05;DE02;;dev-1;50;2024-03-01T10:00:00+02:00;TRUE;1;12;Hamburg",
]
FEATURES = ["channel_online", "account_age_days"]


def _write(tmp_path: Path, lines: list[str], name: str = "bank.csv") -> CsvData:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CsvData(path=path, columns=MAPPING, delimiter=";")


def test_loads_odd_columns_mixed_timestamps_sorted(tmp_path: Path) -> None:
    tx = load_transactions_csv(_write(tmp_path, [HEADER, *ROWS]), FEATURES)
    assert len(tx) == 4
    # sorted by time: T2 (08:00Z), T4 (08:00Z, +02:00 offset; stable after T2), T1 (12:30Z), T3 (13:33:20Z)
    assert tx.tx_id.tolist() == ["T2", "T4", "T1", "T3"]
    assert tx.timestamp.tolist() == [1709280000.0, 1709280000.0, 1709296200.0, 1709300000.0]
    assert tx.label.tolist() == [0, 1, 0, 1]
    assert tx.merchant.tolist() == ["M-77", "", "", ""]
    assert tx.device.tolist() == ["", "dev-1", "dev-9", "dev-9"]
    assert tx.amount.tolist() == [19.99, 50.0, 120.5, 990.0]
    assert tx.features["account_age_days"].tolist() == [35.5, 12.0, 400.0, 400.0]
    assert tx.features["channel_online"].dtype == np.float64


def test_optional_columns_unmapped(tmp_path: Path) -> None:
    mapping = MAPPING.model_copy(update={"merchant": None, "device": None, "transaction_id": None})
    path = tmp_path / "b.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    tx = load_transactions_csv(CsvData(path=path, columns=mapping, delimiter=";"), [])
    assert set(tx.merchant.tolist()) == {""} and set(tx.device.tolist()) == {""}
    assert tx.tx_id.tolist()[0].startswith("line-")
    assert tx.features == {}


def test_parse_timestamp() -> None:
    assert parse_timestamp("1709296200") == 1709296200.0
    assert parse_timestamp("2024-03-01T12:30:00Z") == 1709296200.0
    assert parse_timestamp("2024-03-01T12:30:00") == 1709296200.0  # naive = UTC
    assert parse_timestamp("2024-03-01T14:30:00+02:00") == 1709296200.0
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


@pytest.mark.parametrize(
    ("bad_row", "column", "value"),
    [
        ("T9;DE01;DE02;;d;12,50;2024-03-01T12:30:00Z;0;1;4;X", "Amt (EUR)", "12,50"),
        ("T9;DE01;DE02;;d;nan;2024-03-01T12:30:00Z;0;1;4;X", "Amt (EUR)", "nan"),
        ("T9;DE01;DE02;;d;inf;2024-03-01T12:30:00Z;0;1;4;X", "Amt (EUR)", "inf"),
        ("T9;DE01;DE02;;d;12;01/03/2024;0;1;4;X", "Booked At", "01/03/2024"),
        ("T9;DE01;DE02;;d;12;2024-03-01T12:30:00Z;maybe;1;4;X", "is_fraud", "maybe"),
        ("T9;DE01;DE02;;d;12;2024-03-01T12:30:00Z;0;1;old;X", "AcctAge", "old"),
        ("T9;;DE02;;d;12;2024-03-01T12:30:00Z;0;1;4;X", "Debtor IBAN", None),
    ],
)
def test_malformed_value_names_line_column_value(
    tmp_path: Path, bad_row: str, column: str, value: str | None
) -> None:
    src = _write(tmp_path, [HEADER, ROWS[0], ROWS[1], bad_row])
    with pytest.raises(DataError) as err:
        load_transactions_csv(src, FEATURES)
    msg = str(err.value)
    assert str(src.path) in msg
    assert "line 4" in msg
    assert repr(column) in msg
    if value is not None:
        assert repr(value) in msg


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    src = _write(tmp_path, [HEADER, ROWS[0], "", "", "T9;A;B;;d;oops;1709296200;0;1;4;X"])
    with pytest.raises(DataError, match="line 5"):
        load_transactions_csv(src, FEATURES)


def test_short_row(tmp_path: Path) -> None:
    src = _write(tmp_path, [HEADER, "T9;DE01;DE02"])
    with pytest.raises(DataError, match=r"line 2: expected 11 fields .* found 3"):
        load_transactions_csv(src, FEATURES)


def test_missing_header_columns_listed(tmp_path: Path) -> None:
    header = HEADER.replace("Amt (EUR)", "Amount").replace("is_fraud", "fraud")
    src = _write(tmp_path, [header, ROWS[0]])
    with pytest.raises(DataError) as err:
        load_transactions_csv(src, FEATURES)
    msg = str(err.value)
    assert "'Amt (EUR)' (for amount)" in msg and "'is_fraud' (for label)" in msg
    assert "columns found" in msg and "'Amount'" in msg


def test_wrong_delimiter_hint(tmp_path: Path) -> None:
    path = tmp_path / "comma.csv"
    path.write_text(HEADER.replace(";", ",") + "\n")
    with pytest.raises(DataError, match="looks delimited by ',', not ';': set data.delimiter: ','"):
        load_transactions_csv(CsvData(path=path, columns=MAPPING, delimiter=";"), FEATURES)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_transactions_csv(CsvData(path=tmp_path / "nope.csv", columns=MAPPING), FEATURES)
    with pytest.raises(DataError, match="empty"):
        load_transactions_csv(_write(tmp_path, [], "empty.csv"), FEATURES)
    with pytest.raises(DataError, match="no transactions"):
        load_transactions_csv(_write(tmp_path, [HEADER], "header.csv"), FEATURES)


def test_unmapped_task_feature(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="card_present"):
        load_transactions_csv(_write(tmp_path, [HEADER, *ROWS]), ["card_present"])


def test_single_class_is_not_an_error(tmp_path: Path) -> None:
    rows = [r.replace(";1;1;400", ";0;1;400").replace("TRUE", "0") for r in ROWS]
    tx = load_transactions_csv(_write(tmp_path, [HEADER, *rows]), FEATURES)
    assert tx.num_fraud == 0


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    tx = generate_transactions(GeneratedData(transactions=500, fraud_rate=0.02), 3)
    mapping = write_transactions_csv(tx, tmp_path / "out" / "tx.csv")
    back = load_transactions_csv(
        CsvData(path=tmp_path / "out" / "tx.csv", columns=mapping), sorted(tx.features)
    )
    assert back.tx_id.tolist() == tx.tx_id.tolist()
    for col in ("payer", "payee", "merchant", "device"):
        assert getattr(back, col).tolist() == getattr(tx, col).tolist()
    assert np.array_equal(back.amount, tx.amount)
    assert np.array_equal(back.label, tx.label)
    assert np.allclose(back.timestamp, tx.timestamp, atol=1e-3)
    for k, v in tx.features.items():
        assert np.array_equal(back.features[k], v)


def test_write_with_custom_mapping(tmp_path: Path) -> None:
    tx = generate_transactions(GeneratedData(transactions=300), 1)
    mapping = MAPPING.model_copy(update={"device": None})
    write_transactions_csv(tx, tmp_path / "c.csv", mapping)
    header = (tmp_path / "c.csv").read_text().splitlines()[0].split(",")
    assert "Debtor IBAN" in header and "Device FP" not in header and "Online?" in header
    back = load_transactions_csv(CsvData(path=tmp_path / "c.csv", columns=mapping), FEATURES)
    assert len(back) == 300 and set(back.device.tolist()) == {""}
