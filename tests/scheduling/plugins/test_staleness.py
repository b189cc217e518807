"""Staleness score: rounds since a site last trained, over a horizon, as 0-100."""

from __future__ import annotations

import pytest

from scheduling.base import Candidate
from scheduling.framework import SchedulingContext
from scheduling.plugins import build_score
from scheduling.plugins.staleness import ROUNDS_SINCE, StalenessScore, staleness_score


@pytest.mark.parametrize(
    ("rounds_since", "horizon", "expected"),
    [
        (0, 4, 0.0),  # trained last round... or this one: 0 / 4
        (1, 4, 25.0),  # 100 * 1 / 4
        (3, 4, 75.0),  # 100 * 3 / 4
        (4, 4, 100.0),  # a full horizon: fully stale
        (9, 4, 100.0),  # capped at 100
        (None, 4, 100.0),  # never trained: first in line
        (1, 2, 50.0),  # 100 * 1 / 2
    ],
)
def test_staleness_score(rounds_since: float | None, horizon: float, expected: float) -> None:
    assert staleness_score(rounds_since, horizon) == expected


def test_plugin_reads_the_rounds_the_scheduler_adds() -> None:
    plugin = build_score("staleness", horizon=2.0)
    assert isinstance(plugin, StalenessScore)
    cands = [
        Candidate("a", 1, 10, {ROUNDS_SINCE: 1.0}),
        Candidate("b", 2, 10, {}),  # never trained
    ]
    raw = plugin.score(cands, SchedulingContext(3))
    assert raw == {"a": 50.0, "b": 100.0}
    assert plugin.normalize(raw) == {"a": 50, "b": 100}
    with pytest.raises(ValueError, match="horizon must be a number of rounds > 0; found 0"):
        StalenessScore(0)
