"""Tests of the generator's later streams of a bank's transactions, shifted or not."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.config import GeneratedData
from fedcore.data.generator import GENERATED_FEATURES, generate_stream, generate_transactions
from fedcore.data.transactions import Transactions

DAY = 86_400.0
T0 = 1_704_067_200.0


def _spec() -> GeneratedData:
    return GeneratedData(transactions=4000, fraud_rate=0.01, days=30)


def test_stream_continues_the_same_bank() -> None:
    spec = _spec()
    history = generate_transactions(spec, 4)
    stream = generate_stream(spec, 4, transactions=2000, days=5)
    assert len(stream) == 2000
    assert np.all(np.diff(stream.timestamp) >= 0)
    # right after the history, over 5 days
    assert stream.timestamp.min() >= T0 + 30 * DAY
    assert stream.timestamp.max() < T0 + 35 * DAY
    assert not set(stream.tx_id.tolist()) & set(history.tx_id.tolist())
    assert len(set(stream.tx_id.tolist())) == len(stream)
    # the same customers pay: almost every payer is one of the history's accounts
    assert np.isin(stream.payer, history.payer).mean() > 0.95
    merchants = stream.merchant[stream.merchant != ""]
    assert np.isin(merchants, history.merchant).mean() > 0.95  # a rare merchant may be new
    assert tuple(sorted(stream.features)) == tuple(sorted(GENERATED_FEATURES))
    assert stream.num_fraud == round(2000 * spec.fraud_rate)
    # a customer's account is as old in the stream as the history's clock says
    checked = 0
    for payer, age, ts in zip(
        stream.payer[:50],
        stream.features["account_age_days"][:50],
        stream.timestamp[:50],
        strict=True,
    ):
        rows = history.payer == payer
        if rows.any():
            h_age = history.features["account_age_days"][rows][-1]
            h_ts = history.timestamp[rows][-1]
            assert age == pytest.approx(h_age + (ts - h_ts) / DAY, abs=0.11)
            checked += 1
    assert checked > 40


def test_stream_is_seeded() -> None:
    a = generate_stream(_spec(), 9, transactions=1500, shift=0.3)
    b = generate_stream(_spec(), 9, transactions=1500, shift=0.3)
    c = generate_stream(_spec(), 9, transactions=1500, start_day=40, shift=0.3)
    assert np.array_equal(a.amount, b.amount) and np.array_equal(a.device, b.device)
    assert not np.array_equal(a.timestamp, c.timestamp)
    assert c.timestamp.min() >= T0 + 40 * DAY


def test_history_unchanged_by_streams() -> None:
    before = generate_transactions(_spec(), 11)
    generate_stream(_spec(), 11, transactions=1000, shift=1.0)
    after = generate_transactions(_spec(), 11)
    assert np.array_equal(before.amount, after.amount)
    assert np.array_equal(before.device, after.device)


def test_shift_changes_the_population_as_documented() -> None:
    spec = _spec()
    history = generate_transactions(spec, 2)
    base = generate_stream(spec, 2, transactions=4000, shift=0.0)
    full = generate_stream(spec, 2, transactions=4000, shift=1.0)
    # amounts twice as large (shift 1: factor 1 + 1)
    assert np.median(full.amount) / np.median(base.amount) == pytest.approx(2.0, rel=0.1)
    # the fraud share stays; its structured patterns become lone fraud
    assert full.num_fraud == base.num_fraud == round(4000 * 0.01)

    # about half the legitimate rows with a device come from a device never seen before
    def new_device_share(tx: Transactions) -> float:
        legit = (tx.label == 0) & (tx.device != "")
        return float(np.mean(~np.isin(tx.device[legit], history.device)))

    assert new_device_share(full) > new_device_share(base) + 0.3


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"transactions": 0}, "transactions"),
        ({"transactions": 10, "days": 0}, "days"),
        ({"transactions": 10, "start_day": -1}, "start_day"),
        ({"transactions": 10, "shift": 1.5}, "shift"),
        ({"transactions": 10, "shift": float("nan")}, "shift"),
    ],
)
def test_stream_arguments_checked(kw: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        generate_stream(_spec(), 1, **kw)  # type: ignore[arg-type]
