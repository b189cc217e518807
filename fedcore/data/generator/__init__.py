"""Seeded generator of realistic bank transactions with graph-visible fraud patterns (rings, mules, device sharing, bursts)."""

from __future__ import annotations

import numpy as np

from fedcore.config import GeneratedData
from fedcore.config.data import GENERATED_FEATURES
from fedcore.data.generator.activity import _activity, _assemble, _entity_names
from fedcore.data.generator.fraud import FRAUD_PATTERNS
from fedcore.data.generator.population import _population
from fedcore.data.generator.stream import generate_stream
from fedcore.data.transactions import Transactions

__all__ = [
    "FRAUD_PATTERNS",
    "GENERATED_FEATURES",
    "generate_stream",
    "generate_transactions",
    "generate_with_patterns",
]


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
    bank = _population(rng, spec)
    act = _activity(bank, spec.transactions, spec.fraud_rate)
    names = _entity_names(bank)
    tx, order = _assemble(bank, act.cols, act.label, names, f"TX{seed % 10_000:04d}")
    return tx, act.pattern[order]
