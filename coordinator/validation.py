"""Checks on site replies before anything reaches the aggregate. Pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcore.records import MAX_EXAMPLES, TrainReply

__all__ = [
    "MAX_EXAMPLES",
    "UPDATE_CEILING",
    "check_reply_figures",
    "check_train_reply",
    "update_ratio",
]

UPDATE_CEILING = 100.0
"""Largest ``||local - global|| / (||global|| + 1)`` a clear update may have (L2 over all arrays).

A sanity ceiling, not a defence: it keeps one accepted update from blowing the aggregate up
(finite float32 values near 3e38 average to a model of such values, even under plain FedAvg);
robust aggregation (:mod:`coordinator.robust`) is what bounds finite-but-hostile updates.
Honest updates stay far below it. Largest honest ratios measured over 5 rounds
(``fedcore run SCENARIO --rounds 5``, baselines off): ``bank-fraud.yaml`` 0.23,
``bank-fraud-heterogeneous.yaml`` 0.47 (both in round 1, from the seeded initial model);
``hospital-nodules.yaml`` (SecAgg+, the mean is checked; 3 rounds) 0.06. The ceiling is
over 200 times the largest.
"""


def update_ratio(local: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """``||local - reference|| / (||reference|| + 1)``, the L2 norms over every shared array.

    Computed in float64; an overflowing norm gives ``inf`` (never a warning or an error).
    The ``+ 1`` keeps the ratio meaningful for a model near zero (a fresh bias, say).
    """
    diff = 0.0
    ref = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for name, r in reference.items():
            if name not in local:
                continue
            r64 = np.asarray(r, dtype=np.float64)
            d64 = np.asarray(local[name], dtype=np.float64) - r64
            diff += float(np.dot(d64.ravel(), d64.ravel()))
            ref += float(np.dot(r64.ravel(), r64.ravel()))
    ratio = math.sqrt(diff) / (math.sqrt(ref) + 1.0)
    return ratio if math.isfinite(ratio) else math.inf


def check_train_reply(
    reply: TrainReply, reference: Mapping[str, np.ndarray], ceiling: float = UPDATE_CEILING
) -> list[str]:
    """Every reason a train reply must be left out of the aggregate (empty list: accept).

    Arrays are matched by name, never by order: the same names, shapes and dtypes as the
    global model, finite values; and the update within the sanity ceiling
    (:data:`UPDATE_CEILING`, checked once everything else holds).

    Args:
        reply: The parsed reply.
        reference: The global arrays the site was sent (names, shapes, dtypes to match).
        ceiling: The largest ``||local - global|| / (||global|| + 1)`` accepted.
    """
    reasons: list[str] = []
    missing = sorted(set(reference) - set(reply.arrays))
    extra = sorted(set(reply.arrays) - set(reference))
    if missing:
        reasons.append(f"missing arrays: {', '.join(missing)}")
    if extra:
        reasons.append(f"unexpected arrays: {', '.join(extra)}")
    for name, ref in reference.items():
        got = reply.arrays.get(name)
        if got is None:
            continue
        if not isinstance(got, np.ndarray):
            reasons.append(f"array {name!r} is a {type(got).__name__}; expected an ndarray")
            continue
        if got.shape != ref.shape:
            reasons.append(
                f"array {name!r} has shape {tuple(got.shape)}; expected {tuple(ref.shape)}"
            )
            continue
        if got.dtype != ref.dtype:
            reasons.append(f"array {name!r} has dtype {got.dtype}; expected {ref.dtype}")
            continue
        if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
            bad = int((~np.isfinite(got)).sum())
            reasons.append(f"array {name!r} holds {bad} NaN/Inf value(s)")
    if not reasons:
        ratio = update_ratio(reply.arrays, reference)
        if not ratio <= ceiling:
            reasons.append(
                f"update too large: ||local - global|| is {ratio:.3g} x (||global|| + 1); "
                f"expected at most {ceiling:g} x (an honest update is far smaller)"
            )
    return reasons + check_reply_figures(reply)


def check_reply_figures(reply: TrainReply) -> list[str]:
    """Reasons to refuse the figures any train reply reports, clear or encrypted.

    The example count (the coordinator's weights trust it) must lie in 1..``MAX_EXAMPLES``,
    the training loss must be finite and non-negative, the seconds finite and
    non-negative. :meth:`~fedcore.records.TrainReply.from_content` refuses such replies
    already; this holds for a reply built any other way.
    """
    reasons: list[str] = []
    if type(reply.num_examples) is not int or not 0 < reply.num_examples <= MAX_EXAMPLES:
        reasons.append(f"num_examples is {reply.num_examples!r}; expected 1..{MAX_EXAMPLES}")
    if not math.isfinite(reply.loss):
        reasons.append(f"training loss is {reply.loss}")
    elif reply.loss < 0:
        reasons.append(f"training loss is {reply.loss}; expected a finite number >= 0")
    if not (math.isfinite(reply.seconds) and reply.seconds >= 0):
        reasons.append(f"seconds is {reply.seconds}; expected a finite number >= 0")
    return reasons
