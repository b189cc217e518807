"""Seeded generator of realistic bank transactions with graph-visible fraud patterns (rings, mules, device sharing, bursts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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
_RETAIL_HOURS = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.5, 4.0, 4.5, 5.0,
     6.0, 5.5, 5.0, 5.0, 5.5, 6.5, 7.0, 7.0, 6.0, 4.5, 3.0, 1.8]
)
_BUSINESS_HOURS = np.array(
    [0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 1.0, 3.0, 7.0, 9.0, 9.0, 8.5,
     7.0, 8.0, 8.5, 8.0, 7.0, 5.0, 2.5, 1.2, 0.8, 0.5, 0.4, 0.3]
)
# Fraudsters act around the clock a little more than customers do: weakly informative.
_FRAUD_HOURS = 0.65 * _RETAIL_HOURS / _RETAIL_HOURS.sum() + 0.35 / 24.0
_RETAIL_WEEKDAYS = np.array([1.0, 1.0, 1.0, 1.0, 1.15, 1.3, 1.0])
_BUSINESS_WEEKDAYS = np.array([1.2, 1.2, 1.2, 1.2, 1.1, 0.25, 0.1])


@dataclass(frozen=True)
class _Category:
    name: str
    log_amount: float  # log of the median amount
    sigma: float
    online: float  # share of card-not-present purchases
    retail: float  # weight for retail customers
    business: float  # weight for business customers


_CATEGORIES = (
    _Category("grocery", np.log(45.0), 0.7, 0.08, 0.30, 0.04),
    _Category("fuel", np.log(55.0), 0.4, 0.02, 0.12, 0.10),
    _Category("restaurant", np.log(35.0), 0.6, 0.10, 0.16, 0.08),
    _Category("pharmacy", np.log(25.0), 0.7, 0.10, 0.06, 0.01),
    _Category("apparel", np.log(70.0), 0.8, 0.45, 0.10, 0.02),
    _Category("electronics", np.log(180.0), 1.0, 0.60, 0.05, 0.08),
    _Category("travel", np.log(320.0), 0.9, 0.80, 0.04, 0.10),
    _Category("marketplace", np.log(50.0), 0.9, 0.95, 0.12, 0.07),
    _Category("digital", np.log(15.0), 0.8, 1.00, 0.05, 0.05),
    _Category("b2b-supplies", np.log(420.0), 1.0, 0.50, 0.0, 0.25),
    _Category("b2b-services", np.log(900.0), 1.1, 0.70, 0.0, 0.20),
)
_ONLINE_CATEGORIES = np.array([c.online >= 0.6 for c in _CATEGORIES])

# Customer mix: share of business customers, amount scale, and how retail payments split.
_MIX = {
    "retail": {"business": 0.04, "scale": 1.0},
    "mixed": {"business": 0.25, "scale": 1.15},
    "business": {"business": 0.60, "scale": 1.35},
}
# Kinds of legitimate payments, per customer type: card in store, card online, transfer, bill, B2B.
_KINDS = ("store", "online", "p2p", "bill", "b2b")
_RETAIL_KINDS = np.array([0.50, 0.20, 0.17, 0.13, 0.0])
_BUSINESS_KINDS = np.array([0.12, 0.10, 0.06, 0.12, 0.60])

# Share of the fraud budget per pattern.
_PATTERNS = {"ato": 0.25, "mule": 0.30, "ring": 0.20, "burst": 0.15}  # the rest: lone fraud
_GOLDEN = 0.6180339887498949
FRAUD_PATTERNS = (*_PATTERNS, "lone")
"""Names of the generated fraud patterns (see :func:`generate_transactions`)."""


class _Ids:
    """Hands out consecutive integer codes of one entity kind."""

    def __init__(self, start: int = 0) -> None:
        self.next = start

    def new(self, k: int = 1) -> np.ndarray:
        out = np.arange(self.next, self.next + k, dtype=np.int64)
        self.next += k
        return out


@dataclass
class _Rows:
    """Column chunks of generated rows (integer entity codes, -1 = none)."""

    payer: list[np.ndarray] = field(default_factory=list)
    payee: list[np.ndarray] = field(default_factory=list)
    merchant: list[np.ndarray] = field(default_factory=list)
    device: list[np.ndarray] = field(default_factory=list)
    amount: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    online: list[np.ndarray] = field(default_factory=list)
    present: list[np.ndarray] = field(default_factory=list)

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
        for name, value in (
            ("payer", payer), ("payee", payee), ("merchant", merchant), ("device", device),
            ("online", online), ("present", present),
        ):
            getattr(self, name).append(np.broadcast_to(np.asarray(value), (n,)).copy())
        self.amount.append(np.asarray(amount, dtype=np.float64))
        self.ts.append(np.asarray(ts, dtype=np.float64))

    def __len__(self) -> int:
        return sum(len(t) for t in self.ts)

    def columns(self) -> dict[str, np.ndarray]:
        def cat(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype=dtype)

        return {
            "payer": cat(self.payer, np.int64),
            "payee": cat(self.payee, np.int64),
            "merchant": cat(self.merchant, np.int64),
            "device": cat(self.device, np.int64),
            "amount": cat(self.amount, np.float64),
            "ts": cat(self.ts, np.float64),
            "online": cat(self.online, np.float64),
            "present": cat(self.present, np.float64),
        }


def _times(rng: np.random.Generator, n: int, days: int, hours: np.ndarray, weekdays: np.ndarray) -> np.ndarray:
    """Draw ``n`` timestamps with the given hour-of-day and weekday profiles."""
    day_w = weekdays[np.arange(days) % 7]
    day = rng.choice(days, size=n, p=day_w / day_w.sum())
    hour = rng.choice(24, size=n, p=hours / hours.sum())
    return T0 + day * DAY + (hour + rng.random(n)) * HOUR


def _time_of_day(rng: np.random.Generator, start_day: float, n: int, hours: np.ndarray) -> np.ndarray:
    """Timestamps ``n`` times on day ``start_day`` (float day offsets allowed) at profiled hours."""
    hour = rng.choice(24, size=n, p=hours / hours.sum())
    return T0 + np.floor(start_day) * DAY + (hour + rng.random(n)) * HOUR


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return np.round(np.exp(rng.normal(np.log(median), sigma, n)), 2)


def generate_transactions(spec: GeneratedData, seed: int) -> Transactions:
    """Generate one bank's transaction history, fully determined by ``spec`` and ``seed``.

    Legitimate activity: card purchases in store and online (merchant and its acquiring
    account as payee), transfers between a customer and a few regular contacts, bill
    payments to utilities (very high fan-in), B2B payments, payroll batches (legitimate
    fan-out bursts), online shopping sprees (legitimate bursts), branch kiosks and
    household devices (legitimate device sharing).

    Fraud (labelled 1, about ``spec.fraud_rate`` of the rows), with per-row amounts and
    times that overlap the legitimate ones:

    * account takeover: one fraudster device logs into several unrelated victims'
      accounts and moves money to a few cash-out accounts;
    * money mules: a young account receives scam payments from many distinct victims
      (sent from the victims' own devices) and fans the money out within hours;
    * fraud rings: young accounts sharing one or two devices cycle money among
      themselves before cashing out;
    * card-testing bursts: a stolen card is used many times within an hour at online
      merchants from a fraudster device shared across victims;
    * lone scams: single transfers with no structural trace (caps attainable recall).

    Args:
        spec: Size, fraud rate, customer mix and history length.
        seed: Seed of ``numpy.random.default_rng``; same seed and spec, same output.

    Returns:
        Exactly ``spec.transactions`` rows sorted by time, with the features
        ``channel_online``, ``card_present``, ``hour_of_day`` and ``account_age_days``.
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
    mix = _MIX[spec.customer_mix]
    n_fraud = max(1, int(round(n * spec.fraud_rate)))
    n_legit = n - n_fraud

    accounts, devices = _Ids(), _Ids()
    ages: dict[int, float] = {}  # account code -> age in days at T0, for non-customers

    # --- population -------------------------------------------------------------------
    n_cust = max(60, n // 22)
    cust = accounts.new(n_cust)
    is_biz = rng.random(n_cust) < mix["business"]
    age = np.where(
        is_biz,
        np.exp(rng.normal(np.log(2000.0), 0.9, n_cust)),
        np.exp(rng.normal(np.log(1500.0), 1.0, n_cust)),
    )
    new_cust = rng.random(n_cust) < 0.08
    age[new_cust] = rng.uniform(1.0, 90.0, int(new_cust.sum()))
    age = np.clip(age, 1.0, 20_000.0)
    activity = rng.gamma(1.2, 1.0, n_cust) * np.where(is_biz, 2.0, 1.0)

    own_dev = devices.new(n_cust)
    # households: 2-3 retail customers on one device (legitimate sharing)
    retail_idx = np.flatnonzero(~is_biz)
    n_house = int(0.06 * len(retail_idx))
    heads = rng.choice(retail_idx, size=n_house, replace=False) if n_house else np.zeros(0, np.int64)
    others = np.setdiff1d(retail_idx, heads)
    members = rng.choice(others, size=min(len(others), n_house * 2), replace=False) if n_house else heads
    if n_house:
        own_dev[members] = own_dev[np.resize(heads, len(members))]
    second_dev = np.where(rng.random(n_cust) < 0.25, devices.new(n_cust), own_dev)
    kiosks = devices.new(max(2, n_cust // 300))

    n_merch = int(np.clip(n // 120, 40, 3000))
    cat_of = rng.choice(len(_CATEGORIES), size=n_merch, p=_category_weights(0.5))
    pop = rng.pareto(1.2, n_merch) + 1.0
    acquirer = accounts.new(n_merch)  # each merchant's acquiring account (payee of card payments)
    utilities = accounts.new(int(np.clip(n_cust // 80, 4, 40)))
    util_pop = rng.pareto(1.0, len(utilities)) + 1.0

    # contacts: each customer transfers to a few regulars drawn from a skewed pool
    pool = np.concatenate([cust, accounts.new(n_cust)])
    pool_w = rng.pareto(1.5, len(pool)) + 1.0
    contacts = rng.choice(pool, size=(n_cust, 4), p=pool_w / pool_w.sum())
    suppliers = accounts.new(max(10, int(is_biz.sum()) * 2))
    sup_contacts = rng.choice(suppliers, size=(n_cust, 6))

    rows = _Rows()

    # --- fraud --------------------------------------------------------------------------
    fraud = _Rows()
    kinds: list[str] = []
    budgets = {p: int(np.floor(n_fraud * s)) for p, s in _PATTERNS.items()}
    victim_w = activity / activity.sum()
    # group start times follow a golden-ratio sequence: spread over the whole history,
    # so that each pattern shows up in both the train and the test period
    phase = rng.random()
    for pattern, budget in budgets.items():
        chunk = _Rows()
        while len(chunk) < budget:
            phase = (phase + _GOLDEN) % 1.0
            start = phase * (days - 3.0)
            if pattern == "ato":
                _ato(rng, chunk, start, cust, own_dev, victim_w, accounts, devices)
            elif pattern == "mule":
                _mule(rng, chunk, rows, start, cust, own_dev, victim_w, accounts, devices, ages,
                      acquirer, cat_of, pop, days)
            elif pattern == "ring":
                _ring(rng, chunk, start, accounts, devices, ages)
            else:
                _burst(rng, chunk, start, cust, victim_w, acquirer, cat_of, pop, devices)
        _append_truncated(fraud, chunk, budget)
        kinds.extend([pattern] * (len(fraud) - len(kinds)))
    lone = n_fraud - len(fraud)
    if lone > 0:
        payer = rng.choice(cust, size=lone, p=victim_w)
        ts = T0 + rng.uniform(0, days - 1, lone).astype(np.int64) * DAY
        ts = ts + (rng.choice(24, size=lone, p=_FRAUD_HOURS) + rng.random(lone)) * HOUR
        fraud.add(payer, accounts.new(lone), -1, own_dev[payer],
                  _lognormal(rng, 450.0, 1.0, lone), ts, 1.0, 0.0)

    # --- legitimate ----------------------------------------------------------------------
    biz_idx = np.flatnonzero(is_biz)
    payroll_budget = int(0.12 * n_legit * mix["business"])
    _payroll(rng, rows, biz_idx, own_dev, accounts, days, payroll_budget)
    spree_budget = int(0.025 * n_legit)
    _sprees(rng, rows, spree_budget, cust, own_dev, activity * ~is_biz, acquirer, cat_of, pop, days)
    n_reg = max(0, n_legit - len(rows))
    _regular(rng, rows, n_reg, mix["scale"], cust, is_biz, activity, own_dev, second_dev, kiosks,
             contacts, sup_contacts, utilities, util_pop, acquirer, cat_of, pop, days)

    legit_cols = rows.columns()
    fraud_cols = fraud.columns()
    labels = [np.zeros(len(legit_cols["ts"]), np.int64), np.ones(len(fraud_cols["ts"]), np.int64)]
    cols = {k: np.concatenate([legit_cols[k], fraud_cols[k]]) for k in legit_cols}
    label = np.concatenate(labels)
    kinds.extend(["lone"] * (len(fraud_cols["ts"]) - len(kinds)))
    pattern = np.array([""] * len(legit_cols["ts"]) + kinds, dtype=object)
    # keep exactly n rows: drop surplus legitimate rows (mule side purchases may overshoot)
    surplus = len(label) - n
    if surplus > 0:
        drop = rng.choice(len(legit_cols["ts"]), size=surplus, replace=False)
        keep = np.setdiff1d(np.arange(len(label)), drop)
        cols = {k: v[keep] for k, v in cols.items()}
        label = label[keep]
        pattern = pattern[keep]

    # --- ids, features, order -------------------------------------------------------------
    all_age = np.zeros(accounts.next)
    all_age[cust] = age
    for code, a in ages.items():
        all_age[code] = a
    ts = np.minimum(cols["ts"], T0 + days * DAY - 1.0)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    payer = cols["payer"][order]
    acct_names = _names(rng, "AC", accounts.next)
    dev_names = _names(rng, "DV", devices.next)
    merch_names = _names(rng, "MR", n_merch)
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
    log.debug("generated %d transactions (%d fraud, mix %s, seed %d)", len(tx), tx.num_fraud,
              spec.customer_mix, seed)
    return tx, pattern[order]


# ------------------------------------------------------------------------------- helpers


def _category_weights(business: float) -> np.ndarray:
    w = np.array([(1 - business) * c.retail + business * c.business for c in _CATEGORIES])
    return np.asarray(w / w.sum())


def _names(rng: np.random.Generator, prefix: str, count: int) -> np.ndarray:
    """Strings for codes ``-1..count-1`` (index ``code + 1``); ids are shuffled so they leak nothing."""
    perm = rng.permutation(count)
    return np.array([""] + [f"{prefix}{p:07d}" for p in perm], dtype=object)


def _append_truncated(dst: _Rows, src: _Rows, limit: int) -> None:
    cols = src.columns()
    k = min(limit, len(cols["ts"]))
    if k:
        dst.add(cols["payer"][:k], cols["payee"][:k], cols["merchant"][:k], cols["device"][:k],
                cols["amount"][:k], cols["ts"][:k], cols["online"][:k], cols["present"][:k])


def _pick_merchants(
    rng: np.random.Generator, k: int, cat_of: np.ndarray, pop: np.ndarray, online_only: bool
) -> np.ndarray:
    w = pop * (_ONLINE_CATEGORIES[cat_of] if online_only else 1.0)
    return rng.choice(len(cat_of), size=k, p=w / w.sum())


def _card_amounts(rng: np.random.Generator, merchants: np.ndarray, cat_of: np.ndarray, scale: float) -> np.ndarray:
    mu = np.array([c.log_amount for c in _CATEGORIES])[cat_of[merchants]]
    sd = np.array([c.sigma for c in _CATEGORIES])[cat_of[merchants]]
    return np.round(np.exp(rng.normal(mu, sd)) * scale, 2)


def _ato(
    rng: np.random.Generator, out: _Rows, start: float, cust: np.ndarray, own_dev: np.ndarray,
    victim_w: np.ndarray, accounts: _Ids, devices: _Ids,
) -> None:
    """Account takeover: one fraudster device, several unrelated victims, few cash-out accounts."""
    k = int(rng.integers(2, 5))
    victims = rng.choice(cust, size=k, replace=False, p=victim_w)
    fdev = devices.new(int(rng.integers(1, 3)))
    cashout = accounts.new(int(rng.integers(1, 3)))
    for v in victims:
        m = int(rng.integers(1, 3))
        t0 = _time_of_day(rng, start + rng.uniform(0, 3), 1, _FRAUD_HOURS)[0]
        ts = t0 + np.cumsum(rng.uniform(1, 30, m)) * MINUTE
        out.add(v, rng.choice(cashout, m), -1, rng.choice(fdev, m), _lognormal(rng, 380.0, 0.9, m),
                ts, 1.0, 0.0)


def _mule(
    rng: np.random.Generator, out: _Rows, legit: _Rows, start: float, cust: np.ndarray,
    own_dev: np.ndarray, victim_w: np.ndarray, accounts: _Ids, devices: _Ids,
    ages: dict[int, float], acquirer: np.ndarray, cat_of: np.ndarray, pop: np.ndarray, days: int,
) -> None:
    """Money mule: many distinct victims pay one young account, which fans the money out."""
    mule = int(accounts.new(1)[0])
    ages[mule] = float(rng.uniform(3, 400))
    mdev = int(devices.new(1)[0])
    v = int(rng.integers(3, 8))
    victims = rng.choice(cust, size=v, replace=False, p=victim_w)
    ts_in = np.sort(_time_of_day(rng, start, v, _RETAIL_HOURS) + rng.integers(0, 2, v) * DAY)
    amounts = _lognormal(rng, 300.0, 0.8, v)
    out.add(victims, mule, -1, own_dev[victims - cust[0]], amounts, ts_in, 1.0, 0.0)
    k = int(rng.integers(1, 4))
    ts_out = ts_in[-1] + np.sort(rng.uniform(0.5, 12.0, k)) * HOUR
    out.add(mule, accounts.new(k), -1, mdev, np.round(amounts.sum() * 0.9 / k * rng.uniform(0.8, 1.2, k), 2),
            ts_out, 1.0, 0.0)
    # a recruited mule also shops a little, legitimately
    s = int(rng.integers(0, 3))
    if s:
        merch = _pick_merchants(rng, s, cat_of, pop, online_only=False)
        ts = _times(rng, s, days, _RETAIL_HOURS, _RETAIL_WEEKDAYS)
        legit.add(mule, acquirer[merch], merch, -1, _card_amounts(rng, merch, cat_of, 1.0), ts, 0.0, 1.0)


def _ring(
    rng: np.random.Generator, out: _Rows, start: float, accounts: _Ids, devices: _Ids,
    ages: dict[int, float],
) -> None:
    """Fraud ring: young accounts sharing devices cycle money around, then cash out."""
    r = int(rng.integers(3, 5))
    members = accounts.new(r)
    for m in members:
        ages[int(m)] = float(rng.uniform(2, 120))
    rdev = devices.new(int(rng.integers(1, 3)))
    cycles = int(rng.integers(1, 3))
    hops = r * cycles
    payer = np.tile(members, cycles)
    payee = np.roll(payer, -1)
    amount = rng.lognormal(np.log(900.0), 0.7) * np.cumprod(rng.uniform(0.96, 0.995, hops))
    t0 = _time_of_day(rng, start, 1, _FRAUD_HOURS)[0]
    ts = t0 + np.cumsum(rng.uniform(10, 360, hops)) * MINUTE
    out.add(payer, payee, -1, rng.choice(rdev, hops), np.round(amount, 2), ts, 1.0, 0.0)
    out.add(payee[-1], accounts.new(1), -1, rng.choice(rdev, 1), np.round(amount[-1:] * 0.97, 2),
            ts[-1:] + rng.uniform(10, 240) * MINUTE, 1.0, 0.0)


def _burst(
    rng: np.random.Generator, out: _Rows, start: float, cust: np.ndarray, victim_w: np.ndarray,
    acquirer: np.ndarray, cat_of: np.ndarray, pop: np.ndarray, devices: _Ids,
) -> None:
    """Card testing: stolen cards used many times within an hour from one fraudster device."""
    fdev = int(devices.new(1)[0])
    victims = rng.choice(cust, size=int(rng.integers(1, 3)), replace=False, p=victim_w)
    for v in victims:
        b = int(rng.integers(3, 8))
        merch = _pick_merchants(rng, b, cat_of, pop, online_only=True)
        t0 = _time_of_day(rng, start + rng.uniform(0, 2), 1, _FRAUD_HOURS)[0]
        ts = t0 + np.sort(rng.uniform(0, rng.uniform(20, 90), b)) * MINUTE
        amount = _card_amounts(rng, merch, cat_of, 1.6)
        amount[: int(rng.integers(0, 3))] = np.round(rng.uniform(1, 5), 2)
        out.add(v, acquirer[merch], merch, fdev, amount, ts, 1.0, 0.0)


def _payroll(
    rng: np.random.Generator, out: _Rows, biz_idx: np.ndarray, own_dev: np.ndarray,
    accounts: _Ids, days: int, budget: int,
) -> None:
    """Payroll: a business pays its employees in one batch every two weeks (legitimate fan-out)."""
    for b in rng.permutation(biz_idx):
        if len(out) >= budget:
            break
        staff = accounts.new(int(rng.integers(2, 12)))
        salary = _lognormal(rng, 2600.0, 0.35, len(staff))
        offset = int(rng.integers(0, 14))
        for day in range(offset, days, 14):
            t = T0 + day * DAY + rng.uniform(8, 17) * HOUR
            ts = t + np.sort(rng.uniform(0, 15, len(staff))) * MINUTE
            out.add(int(b), staff, -1, own_dev[b], salary * rng.uniform(0.97, 1.03, len(staff)),
                    ts, 1.0, 0.0)


def _sprees(
    rng: np.random.Generator, out: _Rows, budget: int, cust: np.ndarray, own_dev: np.ndarray,
    weight: np.ndarray, acquirer: np.ndarray, cat_of: np.ndarray, pop: np.ndarray, days: int,
) -> None:
    """Shopping sprees: several online purchases within an hour from the customer's own device."""
    if budget <= 0 or weight.sum() <= 0:
        return
    sizes = rng.integers(3, 8, size=max(1, budget // 5))
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), budget)) + 1]
    who = rng.choice(len(cust), size=len(sizes), p=weight / weight.sum())
    starts = _times(rng, len(sizes), days, _RETAIL_HOURS, _RETAIL_WEEKDAYS)
    payer = np.repeat(who, sizes)
    ts = np.repeat(starts, sizes) + rng.uniform(0, 60, int(sizes.sum())) * MINUTE
    merch = _pick_merchants(rng, len(payer), cat_of, pop, online_only=True)
    out.add(cust[payer], acquirer[merch], merch, own_dev[payer], _card_amounts(rng, merch, cat_of, 1.0),
            ts, 1.0, 0.0)


def _regular(
    rng: np.random.Generator, out: _Rows, n: int, scale: float, cust: np.ndarray, is_biz: np.ndarray,
    activity: np.ndarray, own_dev: np.ndarray, second_dev: np.ndarray, kiosks: np.ndarray,
    contacts: np.ndarray, sup_contacts: np.ndarray, utilities: np.ndarray, util_pop: np.ndarray,
    acquirer: np.ndarray, cat_of: np.ndarray, pop: np.ndarray, days: int,
) -> None:
    """Everyday payments: card purchases, transfers to contacts, bills, B2B payments."""
    if n <= 0:
        return
    who = rng.choice(len(cust), size=n, p=activity / activity.sum())
    biz = is_biz[who]
    u = rng.random(n)
    kind = np.where(
        biz,
        np.searchsorted(np.cumsum(_BUSINESS_KINDS), u * _BUSINESS_KINDS.sum()),
        np.searchsorted(np.cumsum(_RETAIL_KINDS), u * _RETAIL_KINDS.sum()),
    )
    ts = np.where(
        biz,
        _times(rng, n, days, _BUSINESS_HOURS, _BUSINESS_WEEKDAYS),
        _times(rng, n, days, _RETAIL_HOURS, _RETAIL_WEEKDAYS),
    )
    dev = np.where(rng.random(n) < 0.8, own_dev[who], second_dev[who])
    payer = cust[who]
    payee = np.full(n, -1, np.int64)
    merchant = np.full(n, -1, np.int64)
    device = np.full(n, -1, np.int64)
    amount = np.zeros(n)
    online = np.ones(n)
    present = np.zeros(n)

    card = kind <= 1
    k = int(card.sum())
    w_r, w_b = _category_weights(0.0), _category_weights(1.0)
    cat_w = np.where(biz[card, None], w_b[None, :], w_r[None, :])
    # choose a category per row, then a merchant of that category by popularity
    cats = (cat_w.cumsum(1) > rng.random((k, 1))).argmax(1)
    merch = np.empty(k, np.int64)
    for c in range(len(_CATEGORIES)):
        sel = cats == c
        pool = np.flatnonzero(cat_of == c)
        if sel.any():
            if len(pool) == 0:
                pool = np.arange(len(cat_of))
            merch[sel] = rng.choice(pool, size=int(sel.sum()), p=pop[pool] / pop[pool].sum())
    is_online = rng.random(k) < np.array([c.online for c in _CATEGORIES])[cat_of[merch]]
    merchant[card] = merch
    payee[card] = acquirer[merch]
    amount[card] = _card_amounts(rng, merch, cat_of, scale) * np.where(biz[card], 1.5, 1.0)
    online[card] = is_online
    present[card] = ~is_online
    device[np.flatnonzero(card)[is_online]] = dev[card][is_online]

    p2p = kind == 2
    k = int(p2p.sum())
    payee[p2p] = contacts[who[p2p], rng.integers(0, contacts.shape[1], k)]
    amount[p2p] = _lognormal(rng, 160.0 * scale, 1.1, k)
    at_kiosk = rng.random(k) < 0.08
    dk = dev[p2p]
    dk[at_kiosk] = rng.choice(kiosks, int(at_kiosk.sum()))
    device[p2p] = dk
    online[p2p] = ~at_kiosk
    present[p2p] = at_kiosk

    bill = kind == 3
    k = int(bill.sum())
    payee[bill] = rng.choice(utilities, size=k, p=util_pop / util_pop.sum())
    amount[bill] = _lognormal(rng, 90.0 * scale, 0.6, k)
    device[bill] = dev[bill]

    b2b = kind == 4
    k = int(b2b.sum())
    payee[b2b] = sup_contacts[who[b2b], rng.integers(0, sup_contacts.shape[1], k)]
    amount[b2b] = _lognormal(rng, 2200.0 * scale, 1.2, k)
    device[b2b] = dev[b2b]

    out.add(payer, payee, merchant, device, amount, ts, online, present)
