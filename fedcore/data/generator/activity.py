"""One period of a simulated bank's activity (fraud then legitimate rows) and its assembly into a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fedcore.data.generator.fraud import _FRAUD, _PATTERNS
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
    _Rows,
    _times,
)
from fedcore.data.transactions import Transactions

log = logging.getLogger("fedcore.data.generator")

_GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class _Activity:
    """Rows of one period before assembly: columns by :attr:`_Rows.NAMES`, labels, patterns."""

    cols: dict[str, np.ndarray]
    label: np.ndarray
    pattern: np.ndarray  # object array: a fraud pattern name, "" for legitimate rows


@dataclass(frozen=True)
class _EntityNames:
    """String ids of every entity code (index ``code + 1``; index 0 is ``""``: none)."""

    accounts: np.ndarray
    devices: np.ndarray
    merchants: np.ndarray


def _activity(bank: _Bank, n: int, fraud_rate: float, structured: float = 1.0) -> _Activity:
    """Exactly ``n`` rows of activity over ``bank.days`` days (times from ``T0``).

    Args:
        bank: The simulated bank; its generator, id counters and ages advance.
        n: Rows to make.
        fraud_rate: Share of fraud rows (at least one).
        structured: Factor on the budget of the structured patterns (``ato``, ``mule``,
            ``ring``, ``burst``); what it takes away becomes ``lone`` fraud.
    """
    rng = bank.rng
    days = bank.days
    n_fraud = max(1, int(round(n * fraud_rate)))

    # --- fraud: groups start on a golden-ratio sequence, spread over the whole history,
    # so that every pattern shows up in both the train and the test period
    fraud = _Rows()
    kinds: list[str] = []
    phase = rng.random()
    for name, share in _PATTERNS.items():
        budget = int(np.floor(n_fraud * share * structured))
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
    return _Activity(cols, label, pattern)


def _entity_names(bank: _Bank) -> _EntityNames:
    """Shuffled string ids for every account, device and merchant code handed out so far."""
    rng = bank.rng
    return _EntityNames(
        accounts=_names(rng, "AC", bank.accounts.next),
        devices=_names(rng, "DV", bank.devices.next),
        merchants=_names(rng, "MR", len(bank.cat_of)),
    )


def _assemble(
    bank: _Bank,
    cols: dict[str, np.ndarray],
    label: np.ndarray,
    names: _EntityNames,
    tx_prefix: str,
    start_day: int = 0,
) -> tuple[Transactions, np.ndarray]:
    """Sort by time, turn codes into string ids and derive the extra features.

    Args:
        bank: The bank the rows come from.
        cols: Row columns (times from ``T0``, over ``bank.days`` days).
        label: Row labels.
        names: String ids of the entity codes.
        tx_prefix: Transaction ids are ``{tx_prefix}-{row:07d}``.
        start_day: Days after ``T0`` the period starts (its times are moved by that much).

    Returns:
        The table and the permutation that sorted the rows.
    """
    all_age = np.zeros(bank.accounts.next)
    all_age[bank.cust] = bank.age
    for code, a in bank.ages.items():
        all_age[code] = a
    start = T0 + start_day * DAY
    ts = np.clip(cols["ts"] + start_day * DAY, start, start + bank.days * DAY - 1.0)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    payer = cols["payer"][order]
    features = {
        "channel_online": cols["online"][order],
        "card_present": cols["present"][order],
        "hour_of_day": np.floor((ts % DAY) / HOUR),
        "account_age_days": np.round(all_age[payer] + (ts - T0) / DAY, 1),
    }
    tx = Transactions(
        tx_id=np.array([f"{tx_prefix}-{i:07d}" for i in range(len(ts))], dtype=object),
        payer=names.accounts[payer + 1],
        payee=names.accounts[cols["payee"][order] + 1],
        merchant=names.merchants[cols["merchant"][order] + 1],
        device=names.devices[cols["device"][order] + 1],
        amount=np.maximum(np.round(cols["amount"][order], 2), 0.01),
        timestamp=ts,
        label=label[order],
        features=features,
    )
    log.debug("generated %d transactions (%d fraud, %s)", len(tx), tx.num_fraud, tx_prefix)
    return tx, order
