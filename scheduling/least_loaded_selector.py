"""Least-loaded participant selection: the sites whose devices are the most free this round."""

from __future__ import annotations

from collections.abc import Sequence

from scheduling.base import Candidate, Selection, Selector, by_site_id, check_job_size
from scheduling.plugins.least_loaded import free_percent, load_percent
from scheduling.random_selector import sample_size


class LeastLoadedSelector(Selector):
    """Choose the ``ceil(fraction * n)`` least-loaded sites (at least ``min_sites``).

    A site's load is :func:`~scheduling.plugins.least_loaded.load_percent` of its readings
    (the larger of device utilization and background load; CPU utilization on a CPU-only
    site). A site that reports no load at all counts as fully loaded (100 %), so it is
    chosen only when there are not enough sites with a known load. Ties go to the smaller
    site id. The choice depends only on the readings: no randomness, no state.

    ``Selection.scores`` holds every site's free share, ``100 - load`` in [0, 100] (higher =
    less loaded); ``Selection.chosen`` is in site-id order.

    Args:
        fraction: Share of candidates to choose, in (0, 1].
        min_sites: Fewest sites to choose (when that many answered).
    """

    name = "least-loaded"

    def __init__(self, fraction: float = 1.0, min_sites: int = 1) -> None:
        check_job_size(self.name, fraction, min_sites)
        self.fraction = fraction
        self.min_sites = min_sites

    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        ordered = by_site_id(candidates)
        ids = [c.site_id for c in ordered]
        loads = {c.site_id: load_percent(c.readings) for c in ordered}
        free = {s: free_percent(100.0 if load is None else load) for s, load in loads.items()}
        ranked = sorted(ids, key=lambda s: (-free[s], s))
        k = sample_size(len(ranked), self.fraction, self.min_sites)
        taken = set(ranked[:k])
        rejected: dict[str, list[str]] = {}
        for rank, site in enumerate(ranked[k:], start=k + 1):
            load = loads[site]
            quoted = "load unknown, counted as 100%" if load is None else f"load {load:.1f}%"
            rejected[site] = [f"{quoted}: ranked {rank} by free share; only {k} site(s) taken"]
        return Selection(
            chosen=[c for c in ordered if c.site_id in taken], rejected=rejected, scores=free
        )

    def __repr__(self) -> str:
        return f"LeastLoadedSelector(fraction={self.fraction}, min_sites={self.min_sites})"
