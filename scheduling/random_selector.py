"""Random participant selection (Flower's default behaviour), seeded per round."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from scheduling.base import Candidate, Selection, Selector


def sample_size(n: int, fraction: float, minimum: int) -> int:
    """How many of ``n`` candidates to choose: ceil(fraction * n), at least ``minimum``, at most n.

    >>> sample_size(5, 0.5, 2)
    3
    """
    return min(n, max(minimum, math.ceil(fraction * n)))


class RandomSelector(Selector):
    """Choose ``ceil(fraction * n)`` sites uniformly at random, at least ``min_sites``.

    Args:
        fraction: Share of candidates to choose, in (0, 1].
        min_sites: Fewest sites to choose (when that many answered).
        seed: Seed; the draw of round r depends only on (seed, r, candidate ids).
    """

    name = "random"

    def __init__(self, fraction: float = 1.0, min_sites: int = 1, seed: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if min_sites < 1:
            raise ValueError(f"min_sites must be >= 1, got {min_sites!r}")
        self.fraction = fraction
        self.min_sites = min_sites
        self.seed = seed

    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        ordered = sorted(candidates, key=lambda c: c.site_id)
        k = sample_size(len(ordered), self.fraction, self.min_sites)
        digest = hashlib.sha256(f"{self.seed}:{round_}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        idx = sorted(rng.choice(len(ordered), size=k, replace=False).tolist()) if k else []
        chosen = [ordered[i] for i in idx]
        chosen_ids = {c.site_id for c in chosen}
        rejected = {
            c.site_id: ["not drawn this round (random selection)"]
            for c in ordered
            if c.site_id not in chosen_ids
        }
        return Selection(chosen=chosen, rejected=rejected)

    def __repr__(self) -> str:
        return f"RandomSelector(fraction={self.fraction}, min_sites={self.min_sites}, seed={self.seed})"
