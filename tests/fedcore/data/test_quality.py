"""The data-quality report, the cleaning step and the gate, on hand-made tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedcore.config.table import CleaningSpec, QualitySpec
from fedcore.data.quality import (
    CleaningCounts,
    clean,
    gate_reasons,
    psi,
    quality_report,
    summary_key_known,
)
from fedcore.data.table import Table
from fedcore.data.transactions import DataError

NAN, INF = float("nan"), float("inf")


def small_table() -> Table:
    """Eight rows, one of each problem (lines 2..9 as in a CSV with a header).

    row 0: clean; 1: amount missing; 2: f inf; 3: f out of range (50 > 10);
    4: exact copy of row 0; 5: category missing and id missing; 6: time earlier than
    row 5 (out of order); 7: time missing.
    """
    return Table(
        label=np.array([0, 1, 0, 0, 0, 1, 0, 0], dtype=np.int64),
        line=np.arange(2, 10, dtype=np.int64),
        timestamp=np.array([0.0, 10.0, 20.0, 30.0, 0.0, 100.0, 40.0, NAN]),
        amount=np.array([5.0, NAN, 7.0, 8.0, 5.0, 9.0, 10.0, 11.0]),
        entities={"payer": np.array(["a", "b", "c", "d", "a", "", "g", "h"], dtype=object)},
        entity_types={"payer": "account"},
        numeric={"f": np.array([1.0, 2.0, INF, 50.0, 1.0, 3.0, 4.0, 5.0])},
        categorical={"mcc": np.array(["x", "y", "x", "y", "x", "", "x", "y"], dtype=object)},
    )


RANGES = {"f": (0.0, 10.0)}


def test_every_problem_is_counted_exactly() -> None:
    r = quality_report(small_table(), RANGES, test_fraction=0.25)
    assert r.rows == 8
    assert r.missing == {"timestamp": 1, "amount": 1, "f": 0, "mcc": 1}
    assert r.missing_ids == {"payer": 1}
    assert r.non_finite == {"timestamp": 0, "amount": 0, "f": 1}
    assert r.out_of_range == {"amount": 0, "f": 1}
    # rows 1 (amount), 5 (category), 7 (time): the missing id of row 5 is no problem
    assert (r.rows_missing, r.rows_non_finite, r.rows_out_of_range) == (3, 1, 1)
    assert r.duplicates == 1
    assert r.missing_share == pytest.approx(3 / 8)
    assert r.duplicate_share == pytest.approx(1 / 8)
    assert r.out_of_range_share == pytest.approx(1 / 8)
    assert r.non_finite_share == pytest.approx(1 / 8)
    # times in file order 0, 10, 20, 30, 0, 100, 40: rows 4 (0 < 30) and 6 (40 < 100)
    assert r.out_of_order == 2
    # sorted 0, 0, 10, 20, 30, 40, 100: gaps 0, 10, 10, 10, 10, 60
    assert r.max_gap_s == 60.0 and r.median_gap_s == 10.0 and r.span_s == 100.0
    assert r.label_rate == pytest.approx(2 / 8)
    # by time (missing last): rows 0, 4, 1, 2, 3, 6, 5, 7; the latest 2 are test (5, 7)
    assert r.train_label_rate == pytest.approx(1 / 6)


def test_amount_default_range_and_label_rate_without_time() -> None:
    t = Table(
        label=np.array([1, 0, 0, 0], dtype=np.int64),
        line=np.arange(1, 5, dtype=np.int64),
        amount=np.array([-1.0, 0.0, 2e12, 5.0]),
    )
    r = quality_report(t, {}, test_fraction=0.5)
    assert r.out_of_range == {"amount": 2}
    assert r.train_label_rate == 0.25 and r.out_of_order is None
    assert "max_gap_s" not in r.summary()


def shifted(shift: float) -> Table:
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(0.0, 1.0, n)
    y = rng.normal(0.0, 1.0, n)
    y[n // 2 :] += shift
    return Table(
        label=np.zeros(n, dtype=np.int64),
        line=np.arange(1, n + 1, dtype=np.int64),
        timestamp=np.arange(n, dtype=np.float64),
        numeric={"stable": x, "moved": y},
    )


def test_psi_sees_a_shifted_column_and_not_a_stable_one() -> None:
    r = quality_report(shifted(1.0), {}, test_fraction=0.3)
    assert r.psi["moved"] > 0.25
    assert r.psi["stable"] < 0.05  # sampling noise of 1000 rows a half: ~0.02
    assert r.max_psi == r.psi["moved"]


def test_psi_against_a_stored_profile() -> None:
    before = quality_report(shifted(0.0), {}, test_fraction=0.3)
    profile = json.loads(json.dumps(before.profile()))  # as the state folder keeps it
    assert len(profile["columns"]["stable"]["edges"]) == 9
    after = Table(
        label=np.zeros(1000, dtype=np.int64),
        line=np.arange(1, 1001, dtype=np.int64),
        numeric={
            "stable": np.random.default_rng(1).normal(0.0, 1.0, 1000),
            "moved": np.random.default_rng(2).normal(2.0, 1.0, 1000),
        },
    )
    r = quality_report(after, {}, test_fraction=0.3, reference=profile)
    assert r.psi_ref["moved"] > 1.0
    assert r.psi_ref["stable"] < 0.05
    assert r.summary()["psi_ref:moved"] == r.psi_ref["moved"]
    # a profile of another shape is ignored
    odd = quality_report(after, {}, test_fraction=0.3, reference={"version": 99})
    assert odd.psi_ref == {}


def test_psi_formula() -> None:
    # (0.6 - 0.5) ln(0.6 / 0.5) + (0.4 - 0.5) ln(0.4 / 0.5)
    expected = 0.1 * np.log(1.2) - 0.1 * np.log(0.8)
    assert psi(np.array([0.5, 0.5]), np.array([0.6, 0.4])) == pytest.approx(expected)
    # an empty bin is floored at 1e-4
    assert psi(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0


def test_clean_default_dedupes_drops_inf_clips_imputes_and_leaves_the_input() -> None:
    t = small_table()
    before = t.numeric["f"].copy()
    out, c = clean(t, CleaningSpec(), RANGES)
    assert np.array_equal(t.numeric["f"], before, equal_nan=True)  # the input is as it was
    # row 4 (copy), row 2 (inf), row 7 (no time) dropped; f 50 -> 10; amount NaN imputed
    assert c == CleaningCounts(
        rows=8,
        rows_after=5,
        dropped_no_time=1,
        dropped_non_finite=1,
        deduplicated=1,
        imputed=1,
        clipped=1,
    )
    assert c.dropped == 3 and c.dropped_share == pytest.approx(3 / 8)
    assert out.line.tolist() == [2, 3, 5, 7, 8]
    assert out.numeric["f"].tolist() == [1.0, 2.0, 10.0, 3.0, 4.0]
    # median of the amounts present after the earlier steps: 5, 8, 9, 10 -> 8.5
    assert out.amount is not None and out.amount[1] == 8.5
    assert out.categorical["mcc"][3] == ""  # an empty category stays its own value


def test_clean_drop_and_impute_and_keep() -> None:
    spec = CleaningSpec(missing="drop", non_finite="impute", out_of_range="drop", duplicates="keep")
    out, c = clean(small_table(), spec, RANGES)
    # inf imputed by the median of f's finite values (1, 2, 50, 1, 3, 4, 5 -> 3), row 3
    # (f 50) dropped out of range, row 1 (amount) and row 7 (time) dropped missing
    assert (c.imputed, c.dropped_out_of_range, c.dropped_missing, c.dropped_no_time) == (
        1,
        1,
        1,
        1,
    )
    assert c.deduplicated == 0 and c.rows_after == 5  # the copy (line 6) is kept
    assert out.line.tolist() == [2, 4, 6, 7, 8]
    assert out.numeric["f"].tolist() == [1.0, 3.0, 1.0, 3.0, 4.0]
    kept, k = clean(small_table(), CleaningSpec(out_of_range="keep"), RANGES)
    assert k.clipped == 0 and 50.0 in kept.numeric["f"].tolist()


@pytest.mark.parametrize(
    ("setting", "what", "count", "first"),
    [
        ({"duplicates": "fail"}, "repeated row", 1, 6),
        ({"non_finite": "fail"}, "infinite number", 1, 4),
        ({"out_of_range": "fail"}, "out of its range", 1, 5),
        ({"missing": "fail"}, "missing number or time", 2, 3),
    ],
)
def test_clean_fail_names_count_and_first_line(
    setting: dict[str, str], what: str, count: int, first: int
) -> None:
    with pytest.raises(DataError) as err:
        clean(small_table(), CleaningSpec(**setting), RANGES)  # type: ignore[arg-type]
    assert what in str(err.value)
    assert f"{count} row(s)" in str(err.value) and f"first at line {first}" in str(err.value)
    assert err.value.total == count


def test_summary_holds_no_value_of_a_row() -> None:
    t = Table(
        label=np.array([1, 0, 0, 1], dtype=np.int64),
        line=np.array([777001, 777002, 777003, 777004], dtype=np.int64),
        timestamp=np.array([1700000123.5, 1700000456.25, 1700000999.75, 1700001234.125]),
        amount=np.array([123456.789, 98765.4321, 55555.5, 31415.9265]),
        entities={"payer": np.array(["acct-secret-1", "acct-secret-2", "", "x9"], dtype=object)},
        entity_types={"payer": "account"},
        numeric={"score": np.array([0.123456789, 0.987654321, NAN, 42.4242])},
        categorical={"city": np.array(["Zanzibar-9", "", "Quito-3", "Zanzibar-9"], dtype=object)},
    )
    r = quality_report(t, {"score": (0.0, 1.0)}, test_fraction=0.25)
    _, counts = clean(t, CleaningSpec(), {"score": (0.0, 1.0)})
    summary = r.with_cleaning(counts).summary()
    blob = json.dumps(summary)
    for secret in (
        "123456.789",
        "98765.4321",
        "0.123456789",
        "42.4242",
        "1700000",
        "777001",
        "acct-secret",
        "Zanzibar",
        "Quito",
    ):
        assert secret not in blob
    assert all(type(v) is float for v in summary.values())
    assert all(summary_key_known(k) for k in summary)
    assert summary["missing:score"] == 1.0 and summary["missing_ids:payer"] == 1.0
    assert summary["out_of_range:score"] == 1.0 and summary["clipped"] == 1.0
    assert not summary_key_known("edges:score") and not summary_key_known("rows:a b")


GOOD = {
    "rows": 1000.0,
    "missing_share": 0.0,
    "duplicate_share": 0.0,
    "out_of_range_share": 0.0,
    "dropped_share": 0.0,
    "rows_after": 1000.0,
    "train_label_rate": 0.05,
    "max_psi": 0.0,
}


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("missing_share", 0.31, "missing_share 0.31 > data_quality.max_missing_share 0.2"),
        ("duplicate_share", 0.2, "duplicate_share 0.2 > data_quality.max_duplicate_share 0.1"),
        ("out_of_range_share", 0.5, "out_of_range_share 0.5 > data_quality.max_out_of_range"),
        ("dropped_share", 0.4, "dropped_share 0.4 > data_quality.max_dropped_share 0.3"),
        ("rows_after", 150.0, "rows_after 150 < data_quality.min_rows 200"),
        ("train_label_rate", 0.0, "train_label_rate 0 < data_quality.min_label_rate 0.01"),
        ("train_label_rate", 0.7, "train_label_rate 0.7 > data_quality.max_label_rate 0.5"),
        ("max_psi", 0.4, "max_psi 0.4 > data_quality.max_drift_psi 0.25"),
    ],
)
def test_gate_names_each_threshold(key: str, value: float, says: str) -> None:
    spec = QualitySpec(min_label_rate=0.01, max_drift_psi=0.25)
    assert gate_reasons(GOOD, spec) == []
    reasons = gate_reasons({**GOOD, key: value}, spec)
    assert len(reasons) == 1 and reasons[0].startswith(says)
    assert "raise the threshold" in reasons[0] or "lower the threshold" in reasons[0]
    assert gate_reasons({**GOOD, key: value}, QualitySpec(enabled=False)) == []


def test_gate_without_cleaning_uses_rows_and_skips_absent_measures() -> None:
    reasons = gate_reasons({"rows": 10.0, "label_rate": 0.9}, QualitySpec())
    assert reasons == [
        "rows 10 < data_quality.min_rows 200: add rows to the site's table or lower the threshold",
        "label_rate 0.9 > data_quality.max_label_rate 0.5: check columns.label.positive / "
        "negative or raise the threshold",
    ]
    assert gate_reasons({}, QualitySpec()) == []
