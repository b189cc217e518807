"""FastPollGrid: Flower's send_and_receive semantics with a pull every fraction of a second."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from fedcore.engines.polling import FastPollGrid


class SlowSites:
    """A grid stand-in whose replies become available ``delay`` seconds after the push."""

    def __init__(self, delay: float, lost: int = 0) -> None:
        self.delay, self.lost = delay, lost
        self.pushed_at = 0.0
        self.pulls = 0
        self.stats = lambda: {"virtual_time_s": 1.0}  # a simulated grid's extra

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        ids = sorted(ids)
        if time.monotonic() - self.pushed_at < self.delay:
            return []
        answered = ids[: max(0, len(ids) - self.lost)]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in answered]


def test_replies_arrive_within_a_fraction_of_a_second_not_three() -> None:
    sites = SlowSites(delay=0.3)
    grid = FastPollGrid(cast(Any, sites), interval=0.05)
    t0 = time.monotonic()
    replies = list(grid.send_and_receive([object(), object(), object()], timeout=10.0))
    took = time.monotonic() - t0
    assert len(replies) == 3
    # Flower's own send_and_receive sleeps 3 s after an empty pull: this one is done in ~0.3 s
    assert took < 2.0, took
    assert sites.pulls >= 2


def test_timeout_returns_what_arrived() -> None:
    sites = SlowSites(delay=0.0, lost=1)
    grid = FastPollGrid(cast(Any, sites), interval=0.05)
    t0 = time.monotonic()
    replies = list(grid.send_and_receive([object(), object()], timeout=0.3))
    assert len(replies) == 1
    assert 0.25 <= time.monotonic() - t0 < 2.0


def test_extras_of_the_wrapped_grid_pass_through_and_interval_is_checked() -> None:
    grid = FastPollGrid(cast(Any, SlowSites(0.0)))
    assert grid.stats() == {"virtual_time_s": 1.0}
    with pytest.raises(AttributeError):
        _ = grid.no_such_thing
    with pytest.raises(ValueError, match="interval is 0"):
        FastPollGrid(cast(Any, SlowSites(0.0)), interval=0)
