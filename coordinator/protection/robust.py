"""Robust aggregation as a wrapper: a norm bound, then the median, trimmed mean, Multi-Krum or FedAvg of clear updates.

Wraps the plaintext protection, as :class:`coordinator.protection.dp.DifferentialPrivacy`
wraps any protection (and as Flower's ``FedMedian``, ``FedTrimmedAvg`` and ``MultiKrum``
replace FedAvg's aggregation): the inner protection sends the round and checks the
replies; this wrapper turns each accepted model into its update (local minus global),
clips it to the learned norm bound, combines the updates by the scenario's rule and hands
the new global model back to the inner protection. What it did (the rule, the bound, the
sites clipped or left out) reaches the round record through :meth:`round_figures`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coordinator.protection.base import (
    ClearModelProtection,
    Collected,
    Noise,
    Protection,
    TrainRound,
    WrappedProtection,
)
from coordinator.robust import (
    KrumSelection,
    NormBound,
    clip_to_norm,
    coordinate_median,
    multi_krum,
    remembered_scores,
    trimmed_mean,
    update_norm,
    weighted_mean_of,
)
from fedcore.config import AggregationSpec

log = logging.getLogger(__name__)


def _cast_like(base: np.ndarray, update: np.ndarray) -> np.ndarray:
    """``base + update`` computed in float64, back in ``base``'s dtype (integers rounded)."""
    total: np.ndarray = np.asarray(base, np.float64) + update
    out: np.ndarray = (
        total.astype(base.dtype)
        if np.issubdtype(base.dtype, np.floating)
        else np.rint(total).astype(base.dtype)
    )
    return out


def _sig(x: float) -> float:
    """A figure for the round record: 6 significant digits."""
    return float(f"{x:.6g}")


class RobustAggregation(WrappedProtection):
    """Wraps the plaintext protection with a norm bound and a robust aggregation rule.

    Per round: each accepted update ``u_i = local_i - global`` is clipped to the
    :class:`~coordinator.robust.NormBound` (``norm_bound`` set), then combined by
    ``aggregation.rule``:

    * ``fedavg``: the weighted mean (the weight policy's weights);
    * ``median``: the coordinate-wise median (unweighted);
    * ``trimmed_mean``: the coordinate-wise trimmed mean (unweighted);
    * ``multi_krum``: the ``n - f`` updates of lowest Krum score, then their weighted mean;
    * ``multi_krum_memory``: as ``multi_krum``, ranked by each site's remembered score
      (:func:`~coordinator.robust.remembered_scores`: its Krum score relative to the
      round's median, averaged over every round so far it took part in), so a site that
      was an outlier in most rounds stays out in a round where it looks central.
      With ``n <= 2f + 2`` replies either Multi-Krum cannot tell ``f`` outliers apart; the round
      then takes the coordinate-wise median, which still holds while fewer than half of
      the updates are hostile, and says so in the record and the log.

    Aggregation runs in float64; the new model is cast back to each array's dtype.

    Args:
        inner: The plaintext protection (the only mode that shows the coordinator each
            update).
        spec: The scenario's ``aggregation`` section.

    Raises:
        ValueError: ``inner`` does not hold single updates in clear.
    """

    def __init__(self, inner: Protection, spec: AggregationSpec) -> None:
        if not (isinstance(inner, ClearModelProtection) and inner.name == "plaintext"):
            raise ValueError(
                f"robust aggregation needs each site's update in clear; privacy mode "
                f"{inner.name!r} does not show one to the coordinator. Use rule fedavg with "
                "site_clip, or privacy.mode plaintext"
            )
        super().__init__(inner)
        self.inner: ClearModelProtection = inner
        self.spec = spec
        self.norm_bound = (
            NormBound(spec.norm_bound.factor, spec.norm_bound.window)
            if spec.norm_bound is not None
            else None
        )
        self._figures: dict[str, Any] | None = None
        # multi_krum_memory: (round, site -> Krum score) of every round so far
        self._krum_history: list[tuple[int, dict[str, float]]] = []

    def __repr__(self) -> str:
        return f"RobustAggregation(rule={self.spec.rule!r}, norm_bound={self.norm_bound!r})"

    # -- the round

    def collect(self, rnd: TrainRound) -> Collected:
        self._figures = None
        return self.inner.collect(rnd)

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        if not collected.accepted:
            raise ValueError(f"round {round_}: no update to aggregate")
        glob = self.inner.global_arrays
        sites = [s for s, _ in collected.accepted]
        updates = [
            {k: np.asarray(r.arrays[k], np.float64) - np.asarray(glob[k], np.float64) for k in glob}
            for _, r in collected.accepted
        ]
        norms = [update_norm(u) for u in updates]
        bound, clipped = self._clip(updates, norms, sites)
        combined, kept, left_out, rule = self._combine(round_, updates, sites, collected.weights)
        new = {k: _cast_like(glob[k], combined[k]) for k in glob}
        if noise is not None:
            new = noise.on_mean(new, len(kept))
        self.inner.set_global_arrays(new)
        if self.norm_bound is not None:
            self.norm_bound.observe(round_, [min(norms[i], bound) for i in kept])
        self._figures = {
            "rule": rule,
            "norm_bound": None if math.isinf(bound) else _sig(bound),
            "clipped": clipped,
            "left_out": left_out,
        }
        if clipped or left_out:
            log.warning(
                "round %d: %s%s",
                round_,
                f"clipped to L2 norm {bound:.4g}: {', '.join(clipped)}; " if clipped else "",
                "; ".join(f"{s} left out ({why})" for s, why in left_out.items())
                or "none left out",
            )

    def _clip(
        self, updates: list[dict[str, np.ndarray]], norms: Sequence[float], sites: Sequence[str]
    ) -> tuple[float, list[str]]:
        """Clip ``updates`` in place to the norm bound; returns the bound and the sites clipped."""
        if self.norm_bound is None:
            return math.inf, []
        bound = self.norm_bound.bound(norms)
        clipped: list[str] = []
        if math.isinf(bound):
            return bound, clipped
        for i, norm in enumerate(norms):
            if norm > bound:
                updates[i], _ = clip_to_norm(updates[i], bound)
                clipped.append(sites[i])
        return bound, clipped

    def _combine(
        self,
        round_: int,
        updates: Sequence[Mapping[str, np.ndarray]],
        sites: Sequence[str],
        weights: Mapping[str, float],
    ) -> tuple[dict[str, np.ndarray], list[int], dict[str, str], str]:
        """The rule's aggregate, the indices it used, the sites it left out and the rule applied."""
        everyone = list(range(len(updates)))
        rule = self.spec.rule
        if rule == "median":
            return coordinate_median(updates), everyone, {}, rule
        if rule == "trimmed_mean":
            return trimmed_mean(updates, self.spec.trim_fraction), everyone, {}, rule
        if rule in ("multi_krum", "multi_krum_memory"):
            f = self.spec.byzantine
            if len(updates) <= 2 * f + 2:
                log.warning(
                    "round %d: multi_krum with byzantine %d needs more than %d updates, got %d; "
                    "taking the coordinate-wise median instead",
                    round_,
                    f,
                    2 * f + 2,
                    len(updates),
                )
                return coordinate_median(updates), everyone, {}, "median (multi_krum fallback)"
            sel = multi_krum(updates, f)
            what = "score"
            if rule == "multi_krum_memory":
                sel = self._remember(round_, sel, sites, f)
                what = "remembered score"
            kept = sorted(sel.kept)
            worst = sorted(sel.scores[i] for i in kept)[-1]
            left_out = {
                sites[i]: (
                    f"{rule}: {what} {sel.scores[i]:.4g} among the {f} highest "
                    f"(largest kept {worst:.4g})"
                )
                for i in everyone
                if i not in kept
            }
            mean = weighted_mean_of([updates[i] for i in kept], [weights[sites[i]] for i in kept])
            return mean, kept, left_out, rule
        return weighted_mean_of(updates, [weights[s] for s in sites]), everyone, {}, rule

    def _remember(
        self, round_: int, sel: KrumSelection, sites: Sequence[str], f: int
    ) -> KrumSelection:
        """This round's Krum scores into the history; the ``n - f`` lowest remembered scores kept."""
        current = {s: sel.scores[i] for i, s in enumerate(sites)}
        past = [(r, h) for r, h in self._krum_history if r < round_]  # a redone round replaces
        remembered = remembered_scores([h for _, h in past], current)
        self._krum_history = [*past, (round_, current)]
        scores = [remembered[s] for s in sites]
        order = np.argsort(np.asarray(scores), kind="stable")[: len(sites) - f]
        return KrumSelection(kept=[int(i) for i in order], scores=scores)

    def round_figures(self) -> dict[str, Any]:
        inner = self.inner.round_figures()
        return inner if self._figures is None else {**inner, "robust": self._figures}

    # -- the checkpoint (everything else is the inner protection's)

    def summary(self) -> dict[str, Any]:
        return {**self.inner.summary(), "aggregation": self.spec.model_dump(mode="json")}

    def state_dict(self) -> dict[str, Any]:
        state = self.inner.state_dict()
        if self.norm_bound is not None:
            state["robust"] = self.norm_bound.state_dict()
        if self._krum_history:
            state["krum_memory"] = [[r, dict(h)] for r, h in self._krum_history]
        return state

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.inner.load_state_dict(state, arrays)
        if self.norm_bound is not None and "robust" in state:
            self.norm_bound.load_state_dict(state["robust"])
        self._krum_history = [
            (int(r), {str(s): float(v) for s, v in h.items()})
            for r, h in state.get("krum_memory", [])
        ]
