"""Round-robin participant selection: every site gets its turn, in site-id order."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from scheduling.base import Candidate, Selection, Selector, by_site_id, check_job_size
from scheduling.random_selector import sample_size

_STATE_VERSION = 1


def rotation(ids: Sequence[str], after: str | None, k: int) -> list[str]:
    """The next ``k`` of the sorted ``ids``, starting at the first id greater than ``after``.

    The rotation wraps around; ``after=None`` (or an ``after`` beyond the last id) starts at
    the first id. ``after`` need not be one of ``ids``: a site that left is skipped over and
    a site that joined takes its place in id order.

    Args:
        ids: Site ids, sorted ascending and unique.
        after: The id chosen last in the previous round, or ``None`` before the first round.
        k: How many to take, ``0 <= k <= len(ids)``.

    Returns:
        ``k`` ids in rotation order.

    >>> rotation(["a", "b", "c", "d", "e"], "d", 3)
    ['e', 'a', 'b']
    """
    if not 0 <= k <= len(ids):
        raise ValueError(f"k must be in [0, {len(ids)}] (the number of ids); found {k!r}")
    start = 0 if after is None else bisect.bisect_right(ids, after) % max(len(ids), 1)
    return [ids[(start + i) % len(ids)] for i in range(k)]


class RoundRobinSelector(Selector):
    """Choose ``ceil(fraction * n)`` sites (at least ``min_sites``) in turn, by site id.

    The candidates are sorted by site id and taken in a circle, each round continuing after
    the last site chosen in the previous round. The position is kept on the instance (the
    site id chosen last, not an index), so the rotation survives sites joining or leaving:
    a new site takes its turn where its id sorts, a site that left is skipped. Calling
    :meth:`select` again for the same round (a retried round) gives the same choice; use
    :meth:`state_dict` / :meth:`load_state_dict` to carry the position across a restart.

    When the candidates stay the same (``n`` sites, ``k`` chosen each round) and
    :meth:`select` is called once per round from round 1, the choice is a pure function of
    the round and the sorted ids: round ``r`` starts at sorted index ``((r - 1) * k) mod n``.

    Args:
        fraction: Share of candidates to choose, in (0, 1].
        min_sites: Fewest sites to choose (when that many answered).
    """

    name = "round-robin"

    def __init__(self, fraction: float = 1.0, min_sites: int = 1) -> None:
        check_job_size(self.name, fraction, min_sites)
        self.fraction = fraction
        self.min_sites = min_sites
        self._last_chosen: str | None = None  # id chosen last, in rotation order
        self._round: int | None = None  # the round last selected
        self._round_after: str | None = None  # the position that round started from

    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        ordered = by_site_id(candidates)
        ids = [c.site_id for c in ordered]
        after = self._round_after if round_ == self._round else self._last_chosen
        k = sample_size(len(ordered), self.fraction, self.min_sites)
        picks = rotation(ids, after, k)
        if round_ != self._round:
            self._round, self._round_after = round_, after
            if picks:
                self._last_chosen = picks[-1]
        turn = set(picks)
        chosen = [c for c in ordered if c.site_id in turn]
        rejected = {s: ["waiting its turn (round-robin)"] for s in ids if s not in turn}
        return Selection(chosen=chosen, rejected=rejected)

    def state_dict(self) -> dict[str, Any]:
        """The rotation position, JSON-ready, for checkpoints."""
        return {
            "version": _STATE_VERSION,
            "last_chosen": self._last_chosen,
            "round": self._round,
            "round_after": self._round_after,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict` (``{}``: start from the first id).

        Raises:
            ValueError: When ``state`` is not a round-robin state of this version.
        """
        if not state:
            self._last_chosen = self._round = self._round_after = None
            return
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"round-robin state: expected version {_STATE_VERSION}; "
                f"found {state.get('version')!r}; pass what state_dict() returned"
            )
        last, rnd, after = state.get("last_chosen"), state.get("round"), state.get("round_after")
        if not (
            (last is None or isinstance(last, str))
            and (after is None or isinstance(after, str))
            and (rnd is None or (isinstance(rnd, int) and not isinstance(rnd, bool)))
        ):
            raise ValueError(
                "round-robin state: expected last_chosen and round_after to be site ids or "
                f"null and round an integer or null; found {dict(state)!r}"
            )
        self._last_chosen, self._round, self._round_after = last, rnd, after

    def __repr__(self) -> str:
        return f"RoundRobinSelector(fraction={self.fraction}, min_sites={self.min_sites})"
