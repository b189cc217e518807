"""Legitimate activity of the generator, including look-alikes of every fraud pattern."""

from __future__ import annotations

import numpy as np

from fedcore.data.generator.population import (
    _BUSINESS_HOURS,
    _BUSINESS_KINDS,
    _BUSINESS_WEEKDAYS,
    _CAT_ONLINE,
    _CATEGORIES,
    _RETAIL_HOURS,
    _RETAIL_KINDS,
    _RETAIL_WEEKDAYS,
    DAY,
    HOUR,
    MINUTE,
    T0,
    _Bank,
    _card_amounts,
    _lognormal,
    _on_day,
    _pick_merchants,
    _Rows,
    _times,
)


def _payroll(bank: _Bank, out: _Rows, budget: int) -> None:
    """Payroll: a business pays its employees in one batch every two weeks (legitimate fan-out)."""
    rng = bank.rng
    for b in rng.permutation(np.flatnonzero(bank.is_biz)):
        if len(out) >= budget:
            break
        staff = bank.accounts.new(int(rng.integers(2, 12)))
        salary = _lognormal(rng, 2600.0, 0.35, len(staff))
        for day in range(int(rng.integers(0, 14)), bank.days, 14):
            t = T0 + day * DAY + rng.uniform(8, 17) * HOUR
            ts = t + np.sort(rng.uniform(0, 15, len(staff))) * MINUTE
            out.add(
                int(b),
                staff,
                -1,
                bank.own_dev[b],
                salary * rng.uniform(0.97, 1.03, len(staff)),
                ts,
                1.0,
                0.0,
            )


def _sprees(bank: _Bank, out: _Rows, budget: int) -> None:
    """Shopping sprees: several online purchases within an hour (legitimate bursts)."""
    rng = bank.rng
    weight = bank.activity * ~bank.is_biz
    if budget <= 0 or weight.sum() <= 0:
        return
    sizes = rng.integers(3, 8, size=max(1, budget // 5))
    who = rng.choice(len(bank.cust), size=len(sizes), p=weight / weight.sum())
    starts = _times(rng, len(sizes), bank.days, _RETAIL_HOURS, _RETAIL_WEEKDAYS)
    dev = bank.device_at(who, starts)
    payer = np.repeat(who, sizes)
    ts = np.repeat(starts, sizes) + rng.uniform(0, 60, int(sizes.sum())) * MINUTE
    merch = _pick_merchants(bank, len(payer), online_only=True)
    out.add(
        bank.cust[payer],
        bank.acquirer[merch],
        merch,
        np.repeat(dev, sizes),
        _card_amounts(bank, merch, 1.0),
        ts,
        1.0,
        0.0,
    )


def _collections(bank: _Bank, out: _Rows, budget: int) -> None:
    """Friends chip in: several customers pay one organiser, who then pays the trip or the gift."""
    rng = bank.rng
    w = bank.victim_w
    while len(out) < budget:
        organiser = int(rng.choice(bank.cust, p=w))
        friends = rng.choice(bank.cust, size=int(rng.integers(3, 8)), replace=False, p=w)
        friends = friends[friends != organiser]
        day = rng.uniform(0, bank.days - 3)
        ts = np.sort(
            _on_day(rng, day, len(friends), _RETAIL_HOURS) + rng.integers(0, 2, len(friends)) * DAY
        )
        amounts = _lognormal(rng, 80.0, 0.7, len(friends))
        out.add(friends, organiser, -1, bank.device_at(friends, ts), amounts, ts, 1.0, 0.0)
        t_out = ts[-1:] + rng.uniform(1, 30) * HOUR
        payee = bank.accounts.new(1) if rng.random() < 0.6 else bank.contacts[organiser, :1]
        out.add(
            organiser,
            payee,
            -1,
            bank.device_at(np.array([organiser]), t_out),
            np.round(amounts.sum() * rng.uniform(1.0, 1.3, 1), 2),
            t_out,
            1.0,
            0.0,
        )


def _shared_computers(bank: _Bank, out: _Rows, budget: int) -> None:
    """Short-lived shared computers (hotel lobby, library, office): a few users within days."""
    rng = bank.rng
    w = bank.victim_w
    while len(out) < budget:
        dev = int(bank.devices.new(1)[0])
        users = rng.choice(bank.cust, size=int(rng.integers(2, 6)), replace=False, p=w)
        start = rng.uniform(0, bank.days - 10)
        span = rng.uniform(1, 10)
        per_user = rng.integers(1, 3, len(users))
        who = np.repeat(users, per_user)
        k = len(who)
        ts = _on_day(rng, start, k, _RETAIL_HOURS) + np.floor(rng.uniform(0, span, k)) * DAY
        to_contact = rng.random(k) < 0.5
        payee = np.where(
            to_contact, bank.contacts[who, rng.integers(0, 4, k)], bank.accounts.new(k)
        )
        if rng.random() < 0.3:  # colleagues paying the same canteen, club or landlord
            payee[:] = bank.accounts.new(1)[0]
        out.add(who, payee, -1, dev, _lognormal(rng, 150.0 * bank.scale, 1.0, k), ts, 1.0, 0.0)


def _regular(bank: _Bank, out: _Rows, n: int) -> None:
    """Everyday payments: card purchases, transfers, bills, B2B payments."""
    if n <= 0:
        return
    rng = bank.rng
    who = rng.choice(len(bank.cust), size=n, p=bank.victim_w)
    biz = bank.is_biz[who]
    u = rng.random(n)
    kind = np.where(
        biz,
        np.searchsorted(np.cumsum(_BUSINESS_KINDS), u * _BUSINESS_KINDS.sum()),
        np.searchsorted(np.cumsum(_RETAIL_KINDS), u * _RETAIL_KINDS.sum()),
    )
    ts = np.where(
        biz,
        _times(rng, n, bank.days, _BUSINESS_HOURS, _BUSINESS_WEEKDAYS),
        _times(rng, n, bank.days, _RETAIL_HOURS, _RETAIL_WEEKDAYS),
    )
    dev = bank.device_at(who, ts)
    payer = bank.cust[who]
    payee = np.full(n, -1, np.int64)
    merchant = np.full(n, -1, np.int64)
    device = np.full(n, -1, np.int64)
    amount = np.zeros(n)
    online = np.ones(n)
    present = np.zeros(n)

    card = kind <= 1
    k = int(card.sum())
    w_r = np.array([c.retail for c in _CATEGORIES])
    w_b = np.array([c.business for c in _CATEGORIES])
    cat_w = np.where(biz[card, None], (w_b / w_b.sum())[None, :], (w_r / w_r.sum())[None, :])
    cats = (cat_w.cumsum(1) > rng.random((k, 1))).argmax(1)
    merch = np.empty(k, np.int64)
    for c in range(len(_CATEGORIES)):
        sel = cats == c
        if sel.any():
            pool = np.flatnonzero(bank.cat_of == c)
            pool = pool if len(pool) else np.arange(len(bank.cat_of))
            merch[sel] = rng.choice(
                pool, size=int(sel.sum()), p=bank.pop[pool] / bank.pop[pool].sum()
            )
    is_online = rng.random(k) < _CAT_ONLINE[bank.cat_of[merch]]
    merchant[card] = merch
    payee[card] = bank.acquirer[merch]
    amount[card] = _card_amounts(bank, merch, bank.scale) * np.where(biz[card], 1.5, 1.0)
    online[card] = is_online
    present[card] = ~is_online
    device[np.flatnonzero(card)[is_online]] = dev[card][is_online]

    p2p = kind == 2
    k = int(p2p.sum())
    w = who[p2p]
    to = bank.contacts[w, rng.integers(0, bank.contacts.shape[1], k)]
    fresh = rng.random(k) < 0.25  # a one-off payee: a seller, a deposit, a refund
    to[fresh] = bank.accounts.new(int(fresh.sum()))
    family = (bank.partner[w] >= 0) & (rng.random(k) < 0.4)
    to[family] = bank.partner[w][family]
    payee[p2p] = to
    amount[p2p] = _lognormal(rng, 160.0 * bank.scale, 1.1, k)
    at_kiosk = rng.random(k) < 0.08
    dk = dev[p2p]
    dk[at_kiosk] = rng.choice(bank.kiosks, int(at_kiosk.sum()))
    device[p2p] = dk
    online[p2p] = ~at_kiosk
    present[p2p] = at_kiosk

    bill = kind == 3
    k = int(bill.sum())
    payee[bill] = rng.choice(bank.utilities, size=k, p=bank.util_pop / bank.util_pop.sum())
    amount[bill] = _lognormal(rng, 90.0 * bank.scale, 0.6, k)
    device[bill] = dev[bill]

    b2b = kind == 4
    k = int(b2b.sum())
    payee[b2b] = bank.suppliers[who[b2b], rng.integers(0, bank.suppliers.shape[1], k)]
    amount[b2b] = _lognormal(rng, 2200.0 * bank.scale, 1.2, k)
    device[b2b] = dev[b2b]

    out.add(payer, payee, merchant, device, amount, ts, online, present)
