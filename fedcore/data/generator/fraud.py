"""Fraud patterns of the generator: account takeover, mules, rings, device-sharing cover, bursts."""

from __future__ import annotations

import numpy as np

from fedcore.data.generator.population import (
    _CAT_ONLINE,
    _FRAUD_HOURS,
    _RETAIL_HOURS,
    _RETAIL_WEEKDAYS,
    DAY,
    HOUR,
    MINUTE,
    _Bank,
    _card_amounts,
    _lognormal,
    _on_day,
    _pick_merchants,
    _Rows,
    _times,
)

# Share of the fraud budget per pattern; the rest is lone fraud.
_PATTERNS = {"ato": 0.25, "mule": 0.28, "ring": 0.17, "burst": 0.15}
FRAUD_PATTERNS = (*_PATTERNS, "lone")
"""Names of the generated fraud patterns (see :func:`generate_transactions`)."""


def _ato(bank: _Bank, out: _Rows, start: float) -> None:
    """Account takeover: a fraudster's device in a few victims' accounts, shared cash-out accounts.

    Half of the campaigns use remote access instead: the transfers then come from each
    victim's own device, and only the shared cash-out accounts link them.
    """
    rng = bank.rng
    victims = rng.choice(bank.cust, size=int(rng.integers(1, 5)), replace=False, p=bank.victim_w)
    fdev = bank.devices.new(int(rng.integers(1, 3)))
    remote = rng.random() < 0.5
    cashout = bank.accounts.new(int(rng.integers(1, 3)))
    for v in victims:
        m = int(rng.integers(1, 3))
        t0 = _on_day(rng, start + rng.uniform(0, 3), 1, _FRAUD_HOURS)[0]
        ts = t0 + np.cumsum(rng.uniform(1, 30, m)) * MINUTE
        dev = bank.device_at(np.full(m, v), ts) if remote else rng.choice(fdev, m)
        out.add(v, rng.choice(cashout, m), -1, dev, _lognormal(rng, 350.0, 0.9, m), ts, 1.0, 0.0)


def _mule(bank: _Bank, out: _Rows, start: float) -> None:
    """Money mule: several distinct victims pay one young account, which passes the money on."""
    rng = bank.rng
    mule = int(bank.accounts.new(1)[0])
    bank.ages[mule] = float(rng.uniform(3, 400))
    mdev = int(bank.devices.new(1)[0])
    victims = rng.choice(bank.cust, size=int(rng.integers(3, 8)), replace=False, p=bank.victim_w)
    ts_in = np.sort(
        _on_day(rng, start, len(victims), _RETAIL_HOURS) + rng.integers(0, 2, len(victims)) * DAY
    )
    amounts = _lognormal(rng, 250.0, 0.8, len(victims))
    out.add(victims, mule, -1, bank.device_at(victims, ts_in), amounts, ts_in, 1.0, 0.0)
    k = int(rng.integers(1, 4))
    ts_out = ts_in[-1] + np.sort(rng.uniform(0.5, 12.0, k)) * HOUR
    share = amounts.sum() * 0.9 / k * rng.uniform(0.8, 1.2, k)
    out.add(mule, bank.accounts.new(k), -1, mdev, np.round(share, 2), ts_out, 1.0, 0.0)
    _cover(bank, np.array([mule]), np.array([mdev]))


def _ring(bank: _Bank, out: _Rows, start: float) -> None:
    """Fraud ring: young accounts sharing devices cycle money around, then cash out."""
    rng = bank.rng
    members = bank.accounts.new(int(rng.integers(3, 5)))
    for m in members:
        bank.ages[int(m)] = float(rng.uniform(2, 150))
    rdev = bank.devices.new(int(rng.integers(1, 3)))
    cycles = int(rng.integers(1, 3))
    payer = np.tile(members, cycles)
    payee = np.roll(payer, -1)
    amount = rng.lognormal(np.log(700.0), 0.8) * np.cumprod(rng.uniform(0.96, 0.995, len(payer)))
    t0 = _on_day(rng, start, 1, _FRAUD_HOURS)[0]
    ts = t0 + np.cumsum(rng.uniform(1, 24, len(payer))) * HOUR
    out.add(payer, payee, -1, rng.choice(rdev, len(payer)), np.round(amount, 2), ts, 1.0, 0.0)
    out.add(
        payee[-1],
        bank.accounts.new(1),
        -1,
        rng.choice(rdev, 1),
        np.round(amount[-1:] * 0.97, 2),
        ts[-1:] + rng.uniform(10, 240) * MINUTE,
        1.0,
        0.0,
    )
    _cover(bank, members, rng.choice(rdev, len(members)))


def _cover(bank: _Bank, accounts: np.ndarray, devices: np.ndarray) -> None:
    """Everyday purchases that make fraud-controlled accounts look lived-in (labelled legitimate)."""
    rng = bank.rng
    per = rng.integers(1, 6, len(accounts))
    who = np.repeat(np.arange(len(accounts)), per)
    k = len(who)
    merch = _pick_merchants(bank, k, online_only=False)
    online = rng.random(k) < _CAT_ONLINE[bank.cat_of[merch]]
    ts = _times(rng, k, bank.days, _RETAIL_HOURS, _RETAIL_WEEKDAYS)
    bank.cover.add(
        accounts[who],
        bank.acquirer[merch],
        merch,
        np.where(online, devices[who], -1),
        _card_amounts(bank, merch, 1.0),
        ts,
        online.astype(float),
        (~online).astype(float),
    )


def _burst(bank: _Bank, out: _Rows, start: float) -> None:
    """Card testing: stolen cards used several times within an hour from one fraudster device."""
    rng = bank.rng
    fdev = int(bank.devices.new(1)[0])
    victims = rng.choice(bank.cust, size=int(rng.integers(1, 3)), replace=False, p=bank.victim_w)
    for v in victims:
        b = int(rng.integers(3, 8))
        merch = _pick_merchants(bank, b, online_only=True)
        t0 = _on_day(rng, start + rng.uniform(0, 2), 1, _FRAUD_HOURS)[0]
        ts = t0 + np.sort(rng.uniform(0, rng.uniform(20, 90), b)) * MINUTE
        amount = _card_amounts(bank, merch, 1.4)
        amount[: int(rng.integers(0, 3))] = np.round(rng.uniform(1, 5), 2)
        out.add(v, bank.acquirer[merch], merch, fdev, amount, ts, 1.0, 0.0)


_FRAUD = {"ato": _ato, "mule": _mule, "ring": _ring, "burst": _burst}
