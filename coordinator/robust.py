"""Robust aggregation arithmetic: coordinate-wise median and trimmed mean, Multi-Krum (with a memory), norm bounds. Pure, no I/O.

An *update* is one site's change to the global model (local minus global), as named
arrays. Every function computes in float64 and returns new float64 arrays; the caller
adds the result to the global model and casts back to its dtypes. Inputs are never
modified.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

Update = Mapping[str, np.ndarray]


def _names(updates: Sequence[Update]) -> list[str]:
    """The array names every update shares (``ValueError`` on none or a mismatch)."""
    if not updates:
        raise ValueError("needs at least one update, got none")
    names = list(updates[0])
    for i, u in enumerate(updates):
        if sorted(u) != sorted(names):
            raise ValueError(f"update {i} has arrays {sorted(u)}; expected {sorted(names)}")
    return names


def _stack(updates: Sequence[Update], name: str) -> np.ndarray:
    """One array of every update, stacked on a new first axis, in float64."""
    ref = np.shape(updates[0][name])
    arrays = []
    for i, u in enumerate(updates):
        a = np.asarray(u[name], dtype=np.float64)
        if a.shape != ref:
            raise ValueError(f"update {i}: array {name!r} has shape {a.shape}; expected {ref}")
        arrays.append(a)
    return np.stack(arrays)


def update_norm(update: Update) -> float:
    """The L2 norm of an update over all its arrays, in float64.

    ``sqrt(sum_k sum_j update[k]_j^2)``; an update with no values has norm 0.
    """
    return math.sqrt(
        sum(float(np.sum(np.square(np.asarray(a, np.float64)))) for a in update.values())
    )


def clip_to_norm(update: Update, bound: float) -> tuple[dict[str, np.ndarray], float]:
    """``update`` scaled so its L2 norm is at most ``bound`` (norm clipping).

    ``update * min(1, bound / ||update||)``: the direction is kept, only the length is cut
    (as for the per-site clipping of differentially private FedAvg, McMahan et al. 2018,
    and the norm bound against backdoors of Sun et al., "Can You Really Backdoor Federated
    Learning?", 2019).

    Args:
        update: Named arrays.
        bound: The largest L2 norm allowed (positive, finite).

    Returns:
        The clipped update (float64 copies) and the update's norm before clipping.

    Raises:
        ValueError: ``bound`` is not positive and finite.
    """
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"the norm bound is {bound}; expected a positive, finite number")
    norm = update_norm(update)
    scale = 1.0 if norm <= bound else bound / norm
    return {k: np.asarray(v, np.float64) * scale for k, v in update.items()}, norm


def coordinate_median(updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of the updates (Yin et al., "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018), as Flower's ``FedMedian``.

    Each value of the result is the median of that value over the updates (mean of the two
    middle ones when their number is even): fewer than half of the updates, however large,
    cannot move it outside the range of the others.

    Raises:
        ValueError: no updates, or updates whose names or shapes differ.
    """
    return {n: np.median(_stack(updates, n), axis=0) for n in _names(updates)}


def trimmed_mean(updates: Sequence[Update], fraction: float) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018), Flower's ``FedTrimmedAvg`` arithmetic.

    Per value, the ``floor(fraction * n)`` smallest and as many largest of the ``n`` updates
    are cut and the rest averaged (unweighted). ``fraction`` 0 is the plain mean.

    Args:
        updates: The updates.
        fraction: Share cut at each end, ``0 <= fraction < 0.5``.

    Raises:
        ValueError: ``fraction`` out of range, no updates, or mismatched names or shapes.
    """
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"trim fraction is {fraction}; expected 0 <= fraction < 0.5")
    return {n: np.asarray(trim_mean(_stack(updates, n), fraction)) for n in _names(updates)}


@dataclass(frozen=True)
class KrumSelection:
    """Which updates Multi-Krum keeps.

    Attributes:
        kept: Indices of the kept updates, lowest score first.
        scores: Each update's score (sum of squared distances to its ``n - f - 2`` nearest
            neighbours), in input order.
    """

    kept: list[int]
    scores: list[float]


def multi_krum(updates: Sequence[Update], byzantine: int, keep: int | None = None) -> KrumSelection:
    """Multi-Krum selection (Blanchard et al., "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017; El Mhamdi et al., "The Hidden Vulnerability of
    Distributed Learning in Byzantium", ICML 2018), as Flower's ``MultiKrum``.

    Update ``i``'s score is the sum of its squared L2 distances to its ``n - f - 2``
    nearest other updates; the ``keep`` lowest scores are kept (``keep = n - f`` by
    default; 1 is Krum). Distances are taken directly, ``||x - y||^2``, not as Flower's
    ``||x||^2 + ||y||^2 - 2 x.y``, which cancels to noise when one update is huge.
    Ties keep the earlier update.

    Args:
        updates: The ``n`` updates.
        byzantine: ``f``, hostile updates to tolerate; needs ``n > 2f + 2``.
        keep: How many to keep, ``1..n`` (default ``n - f``).

    Raises:
        ValueError: ``n <= 2f + 2``, ``keep`` out of range, or mismatched updates.
    """
    names = _names(updates)
    n = len(updates)
    if byzantine < 0 or n <= 2 * byzantine + 2:
        raise ValueError(
            f"Multi-Krum with f = {byzantine} needs more than 2f + 2 = {2 * byzantine + 2} "
            f"updates; got {n}"
        )
    m = n - byzantine if keep is None else keep
    if not 1 <= m <= n:
        raise ValueError(f"keep is {keep}; expected 1..{n}")
    flat = np.concatenate([_stack(updates, k).reshape(n, -1) for k in names], axis=1)
    dist = np.array(
        [[float(np.sum(np.square(flat[i] - flat[j]))) for j in range(n)] for i in range(n)]
    )
    closest = n - byzantine - 2
    scores = []
    for i in range(n):
        others = np.delete(dist[i], i)
        scores.append(float(np.sum(np.sort(others)[:closest])))
    kept = [int(i) for i in np.argsort(np.asarray(scores), kind="stable")[:m]]
    return KrumSelection(kept=kept, scores=scores)


def weighted_mean_of(updates: Sequence[Update], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """``sum_i w_i u_i / sum_i w_i`` per value, in float64 (FedAvg of updates, McMahan et al. 2017).

    Raises:
        ValueError: a weight that is not positive and finite, or mismatched updates.
    """
    names = _names(updates)
    if len(weights) != len(updates):
        raise ValueError(f"got {len(weights)} weights for {len(updates)} updates")
    bad = [w for w in weights if not (w > 0 and math.isfinite(w))]
    if bad:
        raise ValueError(f"weights must be positive and finite; found {bad}")
    total = float(sum(weights))
    w = np.asarray(weights, np.float64) / total
    return {n: np.tensordot(w, _stack(updates, n), axes=1) for n in names}


def capped_examples(examples: Sequence[float], cap: float) -> list[float]:
    """Each value at most ``cap`` x the median of the positive values.

    A site reports how many examples it holds and FedAvg weighs its update by it; alone,
    one site claiming 10^12 examples replaces the global model with its own. Capping at a
    multiple of the median bounds that while fewer than half of the sites inflate their
    count, and leaves honest rounds whose sizes differ by less than ``cap`` x unchanged.
    Non-positive values stay as they are (no data, no weight).

    Args:
        examples: Reported counts, one per site.
        cap: The multiple of the median allowed (``>= 1``).

    Raises:
        ValueError: ``cap`` below 1 or not finite.
    """
    if not (cap >= 1.0 and math.isfinite(cap)):
        raise ValueError(f"weight cap is {cap}; expected a finite number >= 1")
    positive = [float(x) for x in examples if x > 0]
    if not positive:
        return [float(x) for x in examples]
    limit = cap * float(np.median(positive))
    return [min(float(x), limit) if x > 0 else float(x) for x in examples]


class NormBound:
    """The norm bound learned from recent rounds: ``factor`` x the median accepted L2 norm.

    Norm bounding against boosted (model-replacement) updates, Sun et al., "Can You Really
    Backdoor Federated Learning?", 2019, with the bound taken from the updates themselves
    instead of fixed in advance.
    The median is taken over the norms of every update accepted in the last ``window``
    rounds; in a round with no history yet, over that round's own norms. Norms are
    recorded after clipping, so a site that keeps sending huge updates cannot raise the
    bound round after round.

    Args:
        factor: Multiple of the median allowed (``> 1``).
        window: Rounds of history kept (``>= 1``).
    """

    def __init__(self, factor: float, window: int) -> None:
        if not (factor > 1.0 and math.isfinite(factor)):
            raise ValueError(f"norm bound factor is {factor}; expected a finite number > 1")
        if window < 1:
            raise ValueError(f"norm bound window is {window}; expected at least 1 round")
        self.factor = float(factor)
        self.window = int(window)
        self._rounds: deque[tuple[int, list[float]]] = deque(maxlen=self.window)

    def __repr__(self) -> str:
        return f"NormBound(factor={self.factor}, window={self.window}, rounds={len(self._rounds)})"

    def bound(self, current: Sequence[float]) -> float:
        """The bound for a round whose updates have norms ``current``.

        ``inf`` when there is neither history nor a positive current norm.
        """
        history = [x for _, norms in self._rounds for x in norms]
        pool = [x for x in (history or list(current)) if x > 0]
        if not pool:
            return math.inf
        return self.factor * float(np.median(pool))

    def observe(self, round_: int, accepted: Sequence[float]) -> None:
        """Record the norms of the updates accepted in ``round_`` (replaces a redone round)."""
        kept = [(r, n) for r, n in self._rounds if r < round_]
        self._rounds = deque(kept + [(round_, [float(x) for x in accepted])], maxlen=self.window)

    def state_dict(self) -> dict[str, Any]:
        """The history, JSON-serializable."""
        return {"rounds": [[r, list(n)] for r, n in self._rounds]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the history of :meth:`state_dict`."""
        self._rounds = deque(
            ((int(r), [float(x) for x in n]) for r, n in state.get("rounds", [])),
            maxlen=self.window,
        )


def remembered_scores(
    history: Sequence[Mapping[str, float]], current: Mapping[str, float]
) -> dict[str, float]:
    """Each site's Krum score relative to its round's median, averaged over the rounds it was in.

    Per round, every score is divided by that round's median score (rounds whose updates
    shrink as training converges count alike); a site's remembered score is the mean of
    its relative scores over ``history`` and ``current``, the rounds it took part in. A
    site that was an outlier in most rounds so far stays suspect in a round where it
    happens to look central.

    Args:
        history: Earlier rounds' scores, site -> Krum score.
        current: This round's scores, site -> Krum score.

    Returns:
        Site -> remembered score, for the sites of ``current``.
    """
    sums = {s: 0.0 for s in current}
    counts = {s: 0 for s in current}
    for scores in (*history, current):
        positive = [v for v in scores.values() if v > 0]
        median = float(np.median(positive)) if positive else 0.0
        for site, value in scores.items():
            if site in sums:
                sums[site] += value / median if median > 0 else 1.0
                counts[site] += 1
    return {s: sums[s] / counts[s] for s in current}
