"""Seeded generator of realistic bank transactions with graph-visible fraud patterns (rings, mules, device sharing, bursts)."""

from __future__ import annotations

import logging

import numpy as np

from fedcore.config import GeneratedData
from fedcore.config.data import GENERATED_FEATURES
from fedcore.data.generator.fraud import _FRAUD, _PATTERNS, FRAUD_PATTERNS
from fedcore.data.generator.legitimate import (
    _collections,
    _payroll,
    _regular,
    _shared_computers,
    _sprees,
)
from fedcore.data.generator.population import (
    _FRAUD_HOURS,
    _RETAIL_WEEKDAYS,
    DAY,
    HOUR,
    T0,
    _Bank,
    _lognormal,
    _names,
    _population,
    _Rows,
    _times,
)
from fedcore.data.transactions import Transactions

__all__ = [
    "FRAUD_PATTERNS",
    "GENERATED_FEATURES",
    "generate_transactions",
    "generate_with_patterns",
]

log = logging.getLogger(__name__)


_GOLDEN = 0.6180339887498949


def generate_transactions(spec: GeneratedData, seed: int) -> Transactions:
    """Generate one bank's transaction history, fully determined by ``spec`` and ``seed``.

    Legitimate activity: card purchases in store and online (merchant and its acquiring
    account as payee), transfers to regular contacts and to one-off payees, bill payments
    to utilities (very high fan-in), B2B payments, and legitimate look-alikes of every
    fraud pattern: payroll batches and shopping sprees (bursts), households sharing a
    device and paying each other (rings), short-lived shared computers and branch kiosks
    (device sharing), and money collections among friends (fan-in then pay-out, like a
    mule). Customers change phones and sometimes use one-off devices.

    Fraud (labelled 1, ``round(spec.fraud_rate * transactions)`` rows), with per-row
    amounts and times that overlap the legitimate ones:

    * ``ato`` account takeover: one fraudster device logs into a few unrelated victims'
      accounts and moves money to shared cash-out accounts;
    * ``mule``: a young account receives scam payments from several distinct victims
      (sent from the victims' own devices) and passes the money on within hours;
    * ``ring``: young accounts sharing one or two devices cycle money among themselves,
      then cash out;
    * ``burst``: stolen cards used several times within an hour at online merchants from
      a fraudster device;
    * ``lone``: single scam transfers with no structural trace (caps attainable recall).

    Args:
        spec: Size, fraud rate, customer mix and history length.
        seed: Seed of ``numpy.random.default_rng``; same seed and spec, same output.

    Returns:
        Exactly ``spec.transactions`` rows sorted by time, with the features of
        :data:`GENERATED_FEATURES`.
    """
    return generate_with_patterns(spec, seed)[0]


def generate_with_patterns(spec: GeneratedData, seed: int) -> tuple[Transactions, np.ndarray]:
    """Like :func:`generate_transactions`, also returning each row's fraud pattern.

    Returns:
        ``(transactions, pattern)`` where ``pattern`` is an ``object`` array of ``str``
        aligned with the rows: one of :data:`FRAUD_PATTERNS` for fraud, ``""`` for
        legitimate rows. For analysis and tests only: never a model feature.
    """
    rng = np.random.default_rng(seed)
    n, days = spec.transactions, spec.days
    n_fraud = max(1, int(round(n * spec.fraud_rate)))
    bank = _population(rng, spec)

    # --- fraud: groups start on a golden-ratio sequence, spread over the whole history,
    # so that every pattern shows up in both the train and the test period
    fraud = _Rows()
    kinds: list[str] = []
    phase = rng.random()
    for name, share in _PATTERNS.items():
        budget = int(np.floor(n_fraud * share))
        chunk = _Rows()
        while len(chunk) < budget:
            phase = (phase + _GOLDEN) % 1.0
            _FRAUD[name](bank, chunk, phase * (days - 3.0))
        cols = chunk.head(budget)
        fraud.add(*(cols[k] for k in _Rows.NAMES))
        kinds.extend([name] * (len(fraud) - len(kinds)))
    lone = n_fraud - len(fraud)
    if lone > 0:
        payer = rng.choice(bank.cust, size=lone, p=bank.victim_w)
        ts = _times(rng, lone, days, _FRAUD_HOURS, _RETAIL_WEEKDAYS)
        fraud.add(
            payer,
            bank.accounts.new(lone),
            -1,
            bank.device_at(payer, ts),
            _lognormal(rng, 300.0, 1.0, lone),
            ts,
            1.0,
            0.0,
        )
        kinds.extend(["lone"] * lone)

    # --- legitimate
    rows = bank.cover  # fraud accounts' own everyday purchases are legitimate rows
    n_legit = n - n_fraud
    _payroll(bank, rows, int(0.12 * n_legit * float(bank.is_biz.mean())))
    _sprees(bank, rows, int(0.025 * n_legit))
    _collections(bank, rows, int(0.015 * n_legit))
    _shared_computers(bank, rows, int(0.025 * n_legit))
    _regular(bank, rows, max(0, n_legit - len(rows)))
    legit = rows.columns()
    if len(legit["ts"]) > n_legit:  # the look-alikes overshot: drop surplus rows at random
        keep = np.sort(rng.choice(len(legit["ts"]), size=n_legit, replace=False))
        legit = {k: v[keep] for k, v in legit.items()}

    fraud_cols = fraud.columns()
    cols = {k: np.concatenate([legit[k], fraud_cols[k]]) for k in legit}
    label = np.concatenate(
        [np.zeros(len(legit["ts"]), np.int64), np.ones(len(fraud_cols["ts"]), np.int64)]
    )
    pattern = np.array([""] * len(legit["ts"]) + kinds, dtype=object)
    tx, order = _assemble(bank, cols, label, seed)
    return tx, pattern[order]


def _assemble(
    bank: _Bank, cols: dict[str, np.ndarray], label: np.ndarray, seed: int
) -> tuple[Transactions, np.ndarray]:
    """Sort by time, turn codes into shuffled string ids and derive the extra features.

    Returns:
        The table and the permutation that sorted the rows.
    """
    rng = bank.rng
    all_age = np.zeros(bank.accounts.next)
    all_age[bank.cust] = bank.age
    for code, a in bank.ages.items():
        all_age[code] = a
    ts = np.clip(cols["ts"], T0, T0 + bank.days * DAY - 1.0)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    payer = cols["payer"][order]
    acct_names = _names(rng, "AC", bank.accounts.next)
    dev_names = _names(rng, "DV", bank.devices.next)
    merch_names = _names(rng, "MR", len(bank.cat_of))
    features = {
        "channel_online": cols["online"][order],
        "card_present": cols["present"][order],
        "hour_of_day": np.floor((ts % DAY) / HOUR),
        "account_age_days": np.round(all_age[payer] + (ts - T0) / DAY, 1),
    }
    tx = Transactions(
        tx_id=np.array([f"TX{seed % 10_000:04d}-{i:07d}" for i in range(len(ts))], dtype=object),
        payer=acct_names[payer + 1],
        payee=acct_names[cols["payee"][order] + 1],
        merchant=merch_names[cols["merchant"][order] + 1],
        device=dev_names[cols["device"][order] + 1],
        amount=np.maximum(np.round(cols["amount"][order], 2), 0.01),
        timestamp=ts,
        label=label[order],
        features=features,
    )
    log.debug("generated %d transactions (%d fraud, seed %d)", len(tx), tx.num_fraud, seed)
    return tx, order
