"""Random selection: sizes, determinism by seed and round, reasons for the rest."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.random_selector import RandomSelector, sample_size

CANDS = [Candidate(f"bank-{c}", 100 + i, 10) for i, c in enumerate("edcba")]


@pytest.mark.parametrize(
    ("n", "fraction", "minimum", "expected"),
    [
        (5, 1.0, 2, 5),  # all
        (5, 0.5, 2, 3),  # ceil(2.5) = 3
        (5, 0.1, 2, 2),  # ceil(0.5) = 1, raised to the minimum 2
        (1, 0.5, 2, 1),  # never more than there are
        (0, 1.0, 1, 0),
    ],
)
def test_sample_size(n: int, fraction: float, minimum: int, expected: int) -> None:
    assert sample_size(n, fraction, minimum) == expected


def test_deterministic_and_independent_of_order_and_node_ids() -> None:
    a = RandomSelector(0.5, 2, seed=7).select(3, CANDS)
    renumbered = [Candidate(c.site_id, 9000 + i, 10) for i, c in enumerate(reversed(CANDS))]
    b = RandomSelector(0.5, 2, seed=7).select(3, renumbered)
    assert [c.site_id for c in a.chosen] == [c.site_id for c in b.chosen]
    assert len(a.chosen) == 3
    assert set(a.rejected) == {c.site_id for c in CANDS} - {c.site_id for c in a.chosen}
    draws = {
        tuple(c.site_id for c in RandomSelector(0.5, 2, seed=7).select(r, CANDS).chosen)
        for r in range(1, 30)
    }
    assert len(draws) > 1  # rounds differ


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        RandomSelector(0.0)
    with pytest.raises(ValueError, match="min_sites must be"):
        RandomSelector(0.5, 0)
