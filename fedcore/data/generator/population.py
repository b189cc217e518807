"""The simulated bank behind the generator: customers, merchants, devices, activity rhythms, row helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedcore.config import GeneratedData

T0 = 1_704_067_200.0
"""Start of every generated history: 2024-01-01T00:00:00Z (a Monday)."""
DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0

# Legitimate activity by hour of day (UTC) and by weekday (Monday first).
# fmt: off
_RETAIL_HOURS = np.array([
    1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.5, 4.0, 4.5, 5.0,
    6.0, 5.5, 5.0, 5.0, 5.5, 6.5, 7.0, 7.0, 6.0, 4.5, 3.0, 1.8,
])
_BUSINESS_HOURS = np.array([
    0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 1.0, 3.0, 7.0, 9.0, 9.0, 8.5,
    7.0, 8.0, 8.5, 8.0, 7.0, 5.0, 2.5, 1.2, 0.8, 0.5, 0.4, 0.3,
])
# fmt: on
# Fraudsters act around the clock a little more than customers do: weakly informative.
_FRAUD_HOURS = 0.75 * _RETAIL_HOURS / _RETAIL_HOURS.sum() + 0.25 / 24.0
_RETAIL_WEEKDAYS = np.array([1.0, 1.0, 1.0, 1.0, 1.15, 1.3, 1.0])
_BUSINESS_WEEKDAYS = np.array([1.2, 1.2, 1.2, 1.2, 1.1, 0.25, 0.1])


@dataclass(frozen=True)
class _Category:
    name: str
    median: float  # median amount
    sigma: float  # log-normal spread
    online: float  # share of card-not-present purchases
    retail: float  # weight for retail customers
    business: float  # weight for business customers


_CATEGORIES = (
    _Category("grocery", 45.0, 0.7, 0.08, 0.30, 0.04),
    _Category("fuel", 55.0, 0.4, 0.02, 0.12, 0.10),
    _Category("restaurant", 35.0, 0.6, 0.10, 0.16, 0.08),
    _Category("pharmacy", 25.0, 0.7, 0.10, 0.06, 0.01),
    _Category("apparel", 70.0, 0.8, 0.45, 0.10, 0.02),
    _Category("electronics", 180.0, 1.0, 0.60, 0.05, 0.08),
    _Category("travel", 320.0, 0.9, 0.80, 0.04, 0.10),
    _Category("marketplace", 50.0, 0.9, 0.95, 0.12, 0.07),
    _Category("digital", 15.0, 0.8, 1.00, 0.05, 0.05),
    _Category("b2b-supplies", 420.0, 1.0, 0.50, 0.0, 0.25),
    _Category("b2b-services", 900.0, 1.1, 0.70, 0.0, 0.20),
)
_CAT_LOG_MEDIAN = np.log([c.median for c in _CATEGORIES])
_CAT_SIGMA = np.array([c.sigma for c in _CATEGORIES])
_CAT_ONLINE = np.array([c.online for c in _CATEGORIES])
_ONLINE_CATEGORIES = _CAT_ONLINE >= 0.6

# Customer mix: share of business customers and amount scale.
_MIX = {
    "retail": {"business": 0.04, "scale": 1.0},
    "mixed": {"business": 0.25, "scale": 1.15},
    "business": {"business": 0.60, "scale": 1.35},
}
# Kinds of everyday payments: card in store, card online, transfer, bill, B2B.
_RETAIL_KINDS = np.array([0.50, 0.20, 0.17, 0.13, 0.0])
_BUSINESS_KINDS = np.array([0.12, 0.10, 0.06, 0.12, 0.60])


class _Ids:
    """Hands out consecutive integer codes of one entity kind."""

    def __init__(self) -> None:
        self.next = 0

    def new(self, k: int = 1) -> np.ndarray:
        out = np.arange(self.next, self.next + k, dtype=np.int64)
        self.next += k
        return out


@dataclass
class _Rows:
    """Column chunks of generated rows (integer entity codes, -1 = none)."""

    NAMES: ClassVar[tuple[str, ...]] = (
        "payer",
        "payee",
        "merchant",
        "device",
        "amount",
        "ts",
        "online",
        "present",
    )
    chunks: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {k: [] for k in _Rows.NAMES}
    )

    def add(
        self,
        payer: np.ndarray | int,
        payee: np.ndarray | int,
        merchant: np.ndarray | int,
        device: np.ndarray | int,
        amount: np.ndarray,
        ts: np.ndarray,
        online: np.ndarray | float,
        present: np.ndarray | float,
    ) -> None:
        n = len(ts)
        values = (payer, payee, merchant, device, amount, ts, online, present)
        for name, value in zip(self.NAMES, values, strict=True):
            self.chunks[name].append(np.broadcast_to(np.asarray(value), (n,)).copy())

    def __len__(self) -> int:
        return sum(len(t) for t in self.chunks["ts"])

    def columns(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.NAMES:
            dtype = np.float64 if name in ("amount", "ts", "online", "present") else np.int64
            chunks = self.chunks[name]
            out[name] = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
        return out

    def head(self, k: int) -> dict[str, np.ndarray]:
        return {name: col[:k] for name, col in self.columns().items()}


@dataclass
class _Bank:
    """The simulated population of one bank (integer codes for every entity)."""

    rng: np.random.Generator
    days: int
    scale: float
    accounts: _Ids
    devices: _Ids
    ages: dict[int, float]  # account code -> age in days at T0, for non-customers
    cust: np.ndarray  # customer account codes (0..n_cust-1)
    is_biz: np.ndarray
    age: np.ndarray
    activity: np.ndarray
    own_dev: np.ndarray
    second_dev: np.ndarray
    new_dev: np.ndarray  # device after a phone change at switch_day (inf: no change)
    switch_day: np.ndarray
    partner: np.ndarray  # household member code, -1 = none
    kiosks: np.ndarray
    cat_of: np.ndarray  # merchant -> category
    pop: np.ndarray  # merchant popularity
    acquirer: np.ndarray  # merchant -> acquiring account (payee of card payments)
    utilities: np.ndarray
    util_pop: np.ndarray
    contacts: np.ndarray  # [n_cust, 4] regular transfer counterparties
    suppliers: np.ndarray  # [n_cust, 6] B2B counterparties
    cover: _Rows = field(default_factory=_Rows)  # legitimate-looking activity of fraud accounts

    @property
    def victim_w(self) -> np.ndarray:
        return np.asarray(self.activity / self.activity.sum())

    def device_at(self, who: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The device a customer uses at time ``ts``: usually the phone, sometimes another."""
        rng = self.rng
        switched = ts >= T0 + self.switch_day[who] * DAY
        dev = np.where(switched, self.new_dev[who], self.own_dev[who])
        dev = np.where(rng.random(len(who)) < 0.2, self.second_dev[who], dev)
        one_off = rng.random(len(who)) < 0.03  # a hotel PC, a friend's phone, a new browser
        dev[one_off] = self.devices.new(int(one_off.sum()))
        return np.asarray(dev)


def _population(rng: np.random.Generator, spec: GeneratedData) -> _Bank:
    n, days = spec.transactions, spec.days
    mix = _MIX[spec.customer_mix]
    accounts, devices = _Ids(), _Ids()
    n_cust = max(60, n // 22)
    cust = accounts.new(n_cust)
    is_biz = rng.random(n_cust) < mix["business"]
    age = np.exp(
        np.where(
            is_biz, rng.normal(np.log(2000.0), 0.9, n_cust), rng.normal(np.log(1500.0), 1.0, n_cust)
        )
    )
    new_cust = rng.random(n_cust) < 0.10
    age[new_cust] = rng.uniform(1.0, 120.0, int(new_cust.sum()))
    age = np.clip(age, 1.0, 20_000.0)
    activity = rng.gamma(1.2, 1.0, n_cust) * np.where(is_biz, 2.0, 1.0)

    own_dev = devices.new(n_cust)
    partner = np.full(n_cust, -1, np.int64)
    # households: pairs of retail customers on one device who also pay each other
    retail_idx = rng.permutation(np.flatnonzero(~is_biz))
    n_pairs = int(0.08 * len(retail_idx))
    a, b = retail_idx[:n_pairs], retail_idx[n_pairs : 2 * n_pairs]
    own_dev[b] = own_dev[a]
    partner[a], partner[b] = cust[b], cust[a]
    second_dev = np.where(rng.random(n_cust) < 0.3, devices.new(n_cust), own_dev)
    switch_day = np.where(rng.random(n_cust) < 0.15, rng.uniform(0, days, n_cust), np.inf)
    new_dev = devices.new(n_cust)
    kiosks = devices.new(max(2, n_cust // 300))

    n_merch = int(np.clip(n // 120, 40, 3000))
    cat_w = np.array([c.retail + c.business for c in _CATEGORIES])
    cat_of = rng.choice(len(_CATEGORIES), size=n_merch, p=cat_w / cat_w.sum())
    pop = rng.pareto(1.2, n_merch) + 1.0
    acquirer = accounts.new(n_merch)
    utilities = accounts.new(int(np.clip(n_cust // 80, 4, 40)))
    util_pop = rng.pareto(1.0, len(utilities)) + 1.0
    pool = np.concatenate([cust, accounts.new(n_cust)])
    pool_w = rng.pareto(1.5, len(pool)) + 1.0
    contacts = rng.choice(pool, size=(n_cust, 4), p=pool_w / pool_w.sum())
    supplier_pool = accounts.new(max(10, int(is_biz.sum()) * 2))
    suppliers = rng.choice(supplier_pool, size=(n_cust, 6))
    return _Bank(
        rng=rng,
        days=days,
        scale=mix["scale"],
        accounts=accounts,
        devices=devices,
        ages={},
        cust=cust,
        is_biz=is_biz,
        age=age,
        activity=activity,
        own_dev=own_dev,
        second_dev=second_dev,
        new_dev=new_dev,
        switch_day=switch_day,
        partner=partner,
        kiosks=kiosks,
        cat_of=cat_of,
        pop=pop,
        acquirer=acquirer,
        utilities=utilities,
        util_pop=util_pop,
        contacts=contacts,
        suppliers=suppliers,
    )


# ------------------------------------------------------------------------------- helpers


def _names(rng: np.random.Generator, prefix: str, count: int) -> np.ndarray:
    """Strings for codes ``-1..count-1`` (index ``code + 1``); ids are shuffled so they leak nothing."""
    perm = rng.permutation(count)
    return np.array([""] + [f"{prefix}{p:07d}" for p in perm], dtype=object)


def _times(
    rng: np.random.Generator, n: int, days: int, hours: np.ndarray, weekdays: np.ndarray
) -> np.ndarray:
    """Draw ``n`` timestamps with the given hour-of-day and weekday profiles."""
    day_w = weekdays[np.arange(days) % 7]
    day = rng.choice(days, size=n, p=day_w / day_w.sum())
    return np.asarray(T0 + day * DAY + _hours(rng, n, hours))


def _hours(rng: np.random.Generator, n: int, hours: np.ndarray) -> np.ndarray:
    """Seconds into the day, ``n`` draws from an hour-of-day profile."""
    return np.asarray((rng.choice(24, size=n, p=hours / hours.sum()) + rng.random(n)) * HOUR)


def _on_day(rng: np.random.Generator, day: float, n: int, hours: np.ndarray) -> np.ndarray:
    """``n`` timestamps on day ``floor(day)`` at profiled hours."""
    return np.asarray(T0 + np.floor(day) * DAY + _hours(rng, n, hours))


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return np.round(np.exp(rng.normal(np.log(median), sigma, n)), 2)


def _pick_merchants(bank: _Bank, k: int, online_only: bool) -> np.ndarray:
    w = bank.pop * (_ONLINE_CATEGORIES[bank.cat_of] if online_only else 1.0)
    return bank.rng.choice(len(bank.cat_of), size=k, p=w / w.sum())


def _card_amounts(bank: _Bank, merchants: np.ndarray, scale: float) -> np.ndarray:
    cat = bank.cat_of[merchants]
    return np.asarray(
        np.round(np.exp(bank.rng.normal(_CAT_LOG_MEDIAN[cat], _CAT_SIGMA[cat])) * scale, 2)
    )
