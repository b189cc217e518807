"""Tests of the seeded transaction generator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedcore.config import GeneratedData
from fedcore.data.generator import (
    FRAUD_PATTERNS,
    GENERATED_FEATURES,
    generate_transactions,
    generate_with_patterns,
)


def _spec(**kw: object) -> GeneratedData:
    base: dict[str, object] = {"transactions": 3000, "fraud_rate": 0.01, "customer_mix": "retail"}
    base.update(kw)
    return GeneratedData.model_validate(base)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b))


def test_same_seed_identical() -> None:
    a = generate_transactions(_spec(), 5)
    b = generate_transactions(_spec(), 5)
    for col in ("tx_id", "payer", "payee", "merchant", "device", "amount", "timestamp", "label"):
        assert _same(getattr(a, col), getattr(b, col)), col
    assert a.features.keys() == b.features.keys()
    for k in a.features:
        assert _same(a.features[k], b.features[k])


def test_different_seed_differs() -> None:
    a = generate_transactions(_spec(), 5)
    b = generate_transactions(_spec(), 6)
    assert not _same(a.amount, b.amount)
    assert not _same(a.timestamp, b.timestamp)


@pytest.mark.parametrize("mix", ["retail", "business", "mixed"])
@pytest.mark.parametrize("rate", [0.002, 0.01, 0.02])
def test_size_fraud_rate_order_and_columns(mix: str, rate: float) -> None:
    spec = _spec(customer_mix=mix, fraud_rate=rate, transactions=4000)
    tx = generate_transactions(spec, 1)
    assert len(tx) == 4000
    assert tx.num_fraud == round(4000 * rate)
    assert np.all(np.diff(tx.timestamp) >= 0)
    assert tx.timestamp.min() >= 1_704_067_200.0
    assert tx.timestamp.max() < 1_704_067_200.0 + spec.days * 86_400
    assert tx.tx_id.dtype == object and tx.payer.dtype == object
    assert tx.amount.dtype == np.float64 and tx.label.dtype == np.int64
    assert set(np.unique(tx.label)) <= {0, 1}
    assert len(set(tx.tx_id.tolist())) == len(tx)
    assert tuple(sorted(tx.features)) == tuple(sorted(GENERATED_FEATURES))
    assert np.all(tx.amount > 0)
    f = tx.features
    assert set(np.unique(f["channel_online"])) <= {0.0, 1.0}
    assert set(np.unique(f["card_present"])) <= {0.0, 1.0}
    assert f["hour_of_day"].min() >= 0 and f["hour_of_day"].max() <= 23
    assert f["account_age_days"].min() >= 0


def test_customer_mix_changes_amounts() -> None:
    retail = generate_transactions(_spec(customer_mix="retail", transactions=5000), 3)
    business = generate_transactions(_spec(customer_mix="business", transactions=5000), 3)
    assert np.median(business.amount) > 1.5 * np.median(retail.amount)


def test_fraud_patterns_present() -> None:
    tx, pattern = generate_with_patterns(
        _spec(transactions=20000, fraud_rate=0.01, customer_mix="mixed"), 2
    )
    assert set(pattern[tx.label == 1]) == set(FRAUD_PATTERNS)
    assert np.all(pattern[tx.label == 0] == "")

    # account takeover: some fraud device is used by several distinct payers
    ato = (pattern == "ato") & (tx.device != "")
    payers_per_device = {d: len(set(tx.payer[ato & (tx.device == d)])) for d in set(tx.device[ato])}
    assert max(payers_per_device.values()) >= 2

    # rings: accounts sharing a device pay each other
    ring = pattern == "ring"
    ring_accounts = set(tx.payer[ring])
    assert len(ring_accounts & set(tx.payee[ring])) >= 3
    devices = set(tx.device[ring])
    assert any(len(set(tx.payer[ring & (tx.device == d)])) >= 2 for d in devices)

    # mules: a payee receives fraud from several distinct payers, then pays out itself
    mule = pattern == "mule"
    fan_in = {p: len(set(tx.payer[mule & (tx.payee == p)])) for p in set(tx.payee[mule])}
    hub = max(fan_in, key=lambda p: fan_in[p])
    assert fan_in[hub] >= 3
    assert np.any(mule & (tx.payer == hub))

    # bursts: several purchases by one payer within two hours
    burst = pattern == "burst"
    payers, counts = np.unique(tx.payer[burst].astype(str), return_counts=True)
    times = tx.timestamp[burst & (tx.payer == payers[np.argmax(counts)])]
    assert len(times) >= 3 and times.max() - times.min() < 2 * 3600


def test_per_row_features_only_weakly_informative() -> None:
    tx = generate_transactions(_spec(transactions=20000, fraud_rate=0.01, customer_mix="mixed"), 4)
    fraud, legit = np.log(tx.amount[tx.label == 1]), np.log(tx.amount[tx.label == 0])
    # fraud amounts sit inside the legitimate range: no threshold isolates them
    assert np.percentile(legit, 5) < np.median(fraud) < np.percentile(legit, 95)


def test_fast() -> None:
    start = time.perf_counter()
    generate_transactions(_spec(transactions=20000), 0)
    assert time.perf_counter() - start < 2.0  # typically ~0.2 s
