"""Checks on site replies before anything reaches the aggregate. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcore.records import TrainReply

MAX_EXAMPLES = 10**10


def check_train_reply(reply: TrainReply, reference: Mapping[str, np.ndarray]) -> list[str]:
    """Every reason a train reply must be left out of the aggregate (empty list: accept).

    Args:
        reply: The parsed reply.
        reference: The global arrays the site was sent (names, shapes, dtypes to match).
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
    return reasons + check_reply_figures(reply)


def check_reply_figures(reply: TrainReply) -> list[str]:
    """Reasons to refuse the figures any train reply reports, clear or encrypted.

    The example count (the coordinator's weights trust it) must lie in 1..``MAX_EXAMPLES``
    and the training loss must be finite.
    """
    reasons: list[str] = []
    if not 0 < reply.num_examples <= MAX_EXAMPLES:
        reasons.append(f"num_examples is {reply.num_examples}; expected 1..{MAX_EXAMPLES}")
    if not np.isfinite(reply.loss):
        reasons.append(f"training loss is {reply.loss}")
    return reasons
