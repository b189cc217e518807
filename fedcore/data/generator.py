"""Seeded generator of realistic bank transactions with graph-visible fraud patterns (rings, mules, device sharing, bursts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedcore.config import GeneratedData
from fedcore.data.transactions import Transactions

log = logging.getLogger(__name__)

T0 = 1_704_067_200.0
"""Start of every generated history: 2024-01-01T00:00:00Z (a Monday)."""
DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0

GENERATED_FEATURES = ("channel_online", "card_present", "hour_of_day", "account_age_days")
"""Extra numeric features every generated table carries."""

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

# Share of the fraud budget per pattern; the rest is lone fraud.
_PATTERNS = {"ato": 0.25, "mule": 0.28, "ring": 0.17, "burst": 0.15}
FRAUD_PATTERNS = (*_PATTERNS, "lone")
"""Names of the generated fraud patterns (see :func:`generate_transactions`)."""
_GOLDEN = 0.6180339887498949


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


# ------------------------------------------------------------------------------- fraud


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


# ------------------------------------------------------------------------------- legitimate


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
