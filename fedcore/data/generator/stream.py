"""New transactions of a generated bank after its history, optionally from a shifted population (drift)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from fedcore.config import GeneratedData
from fedcore.data.generator.activity import (
    _activity,
    _assemble,
    _entity_names,
    _EntityNames,
)
from fedcore.data.generator.population import _Bank, _population, _Rows
from fedcore.data.transactions import Transactions


def _more_names(rng: np.random.Generator, prefix: str, names: np.ndarray, total: int) -> np.ndarray:
    """``names`` (codes ``-1..len(names)-2``) extended to codes up to ``total - 1``.

    The new codes get shuffled numbers after the history's, so no id repeats one of
    the history's and the order of the numbers tells nothing.
    """
    known = len(names) - 1
    fresh = known + rng.permutation(max(0, total - known))
    return np.concatenate([names, np.array([f"{prefix}{p:07d}" for p in fresh], dtype=object)])


def _apply_shift(bank: _Bank, cols: dict[str, np.ndarray], label: np.ndarray, shift: float) -> None:
    """Change the population of legitimate rows in place (see :func:`generate_stream`)."""
    rng = bank.rng
    cols["amount"] = cols["amount"] * (1.0 + shift)
    has_device = (cols["device"] >= 0) & (label == 0)
    churn = has_device & (rng.random(len(label)) < 0.5 * shift)
    cols["device"][churn] = bank.devices.new(int(churn.sum()))


def generate_stream(
    spec: GeneratedData,
    seed: int,
    *,
    transactions: int,
    days: int = 7,
    start_day: int | None = None,
    shift: float = 0.0,
) -> Transactions:
    """New transactions of the bank that ``generate_transactions(spec, seed)`` describes.

    The same customers, merchants, devices and ids as that history, with new activity
    drawn the same way (plus the new accounts and devices that new fraud and one-off
    payments bring), over ``days`` days from ``start_day`` days after the history's
    start (default: right after it, ``spec.days``). What a site scores after its
    model was exported.

    ``shift`` (0 to 1) changes the population, all effects growing linearly with it:

    * every amount is ``1 + shift`` times larger (ticket sizes rise: prices, a new product);
    * a share ``shift / 2`` of the legitimate rows that have a device come from a device
      never seen before (customers move to a new app or phone);
    * a share ``shift`` of the structured fraud (``ato``, ``mule``, ``ring``, ``burst``)
      becomes ``lone`` fraud, which leaves no trace in the graph (the fraud share stays
      ``spec.fraud_rate``, so PR-AUC moves with what the model can still see, not with
      the base rate).

    Daily and weekly rhythms are the history's, the stream's first day taken as a Monday.
    With ``shift`` 0 the stream is drawn from the history's own population. The draws
    depend on ``seed``, ``start_day`` and ``transactions``, not on ``shift``, up to
    where the shift changes what is drawn.

    Args:
        spec: The bank's spec (as for :func:`~fedcore.data.generator.generate_transactions`).
        seed: The bank's seed.
        transactions: Rows of the stream (at least 1).
        days: Span of the stream in days (at least 1).
        start_day: Days after the history's start where the stream starts (default
            ``spec.days``; at least 0).
        shift: Population shift, 0 (none) to 1.

    Returns:
        Exactly ``transactions`` rows sorted by time, ids ``TX<seed>-D<start_day>-<row>``
        (never those of the history), with the history's features.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    if transactions < 1:
        raise ValueError(f"transactions must be at least 1; found {transactions}")
    if days < 1:
        raise ValueError(f"days must be at least 1; found {days}")
    start = spec.days if start_day is None else int(start_day)
    if start < 0:
        raise ValueError(f"start_day must be 0 or more; found {start}")
    if not (math.isfinite(shift) and 0.0 <= shift <= 1.0):
        raise ValueError(
            f"shift must be a number from 0 (no change) to 1 (the largest change); found {shift!r}"
        )
    # the history, replayed: same population, same id counters, same names
    bank = _population(np.random.default_rng(seed), spec)
    _activity(bank, spec.transactions, spec.fraud_rate)
    names = _entity_names(bank)
    known_accounts = bank.accounts.next
    stream = replace(
        bank,
        rng=np.random.default_rng([seed, start, transactions, 0x5E]),
        days=days,
        ages=dict(bank.ages),
        switch_day=bank.switch_day - start,  # stream times count from its own start
        cover=_Rows(),
    )
    act = _activity(stream, transactions, spec.fraud_rate, structured=1.0 - shift)
    if shift > 0.0:
        _apply_shift(stream, act.cols, act.label, shift)
    # accounts opened during the stream: their age counts from the stream's start
    for code in range(known_accounts, stream.accounts.next):
        stream.ages[code] = stream.ages.get(code, 0.0) - start
    rng = stream.rng
    all_names = _EntityNames(
        accounts=_more_names(rng, "AC", names.accounts, stream.accounts.next),
        devices=_more_names(rng, "DV", names.devices, stream.devices.next),
        merchants=names.merchants,
    )
    tx, _ = _assemble(
        stream,
        act.cols,
        act.label,
        all_names,
        f"TX{seed % 10_000:04d}-D{start:05d}",
        start_day=start,
    )
    return tx
