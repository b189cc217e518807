"""Round-robin selection: rotation by site id across rounds, retries, joins and leaves, state."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from scheduling.base import Candidate
from scheduling.round_robin import RoundRobinSelector, rotation

IDS = ["a", "b", "c", "d", "e"]
CANDS = [Candidate(s, 100 + i, 10) for i, s in enumerate(reversed(IDS))]


def chosen(selector: RoundRobinSelector, round_: int, cands: list[Candidate]) -> list[str]:
    return [c.site_id for c in selector.select(round_, cands).chosen]


@pytest.mark.parametrize(
    ("ids", "after", "k", "expected"),
    [
        (IDS, None, 2, ["a", "b"]),  # first round: from the first id
        (IDS, "b", 2, ["c", "d"]),  # after b
        (IDS, "d", 3, ["e", "a", "b"]),  # wraps around
        (IDS, "e", 2, ["a", "b"]),  # after the last id: back to the first
        (IDS, "bb", 2, ["c", "d"]),  # "bb" left: the first id after it is c
        (IDS, "z", 1, ["a"]),  # beyond every id
        (IDS, "c", 5, ["d", "e", "a", "b", "c"]),  # everyone, starting after c
        (IDS, "c", 0, []),
        ([], None, 0, []),
    ],
)
def test_rotation(ids: list[str], after: str | None, k: int, expected: list[str]) -> None:
    assert rotation(ids, after, k) == expected


def test_rotation_rejects_k_beyond_the_ids() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[0, 5\] \(the number of ids\); found 6"):
        rotation(IDS, None, 6)


def test_rotates_across_rounds_and_gives_everyone_equal_turns() -> None:
    sel = RoundRobinSelector(fraction=0.4)  # k = ceil(0.4 * 5) = 2
    rounds = [chosen(sel, r, CANDS) for r in range(1, 11)]
    # turns in rotation order: ab, cd, ea, bc, de, then again; chosen lists are in id order
    assert rounds[:5] == [["a", "b"], ["c", "d"], ["a", "e"], ["b", "c"], ["d", "e"]]
    assert rounds[5:] == rounds[:5]
    assert Counter(s for r in rounds for s in r) == dict.fromkeys(IDS, 4)  # 10 rounds * 2 / 5
    # with stable candidates, round r starts at sorted index ((r - 1) * k) mod n
    for r, got in enumerate(rounds, start=1):
        start = ((r - 1) * 2) % 5
        assert sorted(got) == sorted({IDS[start], IDS[(start + 1) % 5]})


def test_independent_of_order_and_node_ids_and_reasons_for_the_rest() -> None:
    shuffled = [CANDS[i] for i in (2, 0, 4, 1, 3)]
    renumbered = [Candidate(c.site_id, 9000 + i, 10) for i, c in enumerate(shuffled)]
    a, b = RoundRobinSelector(0.4), RoundRobinSelector(0.4)
    for r in (1, 2, 3):
        sa, sb = a.select(r, CANDS), b.select(r, renumbered)
        assert [c.site_id for c in sa.chosen] == [c.site_id for c in sb.chosen]
    assert sa.rejected == {s: ["waiting its turn (round-robin)"] for s in ("b", "c", "d")}
    assert sa.scores == {}


def test_retried_round_gives_the_same_choice_and_does_not_advance() -> None:
    sel = RoundRobinSelector(0.4)
    assert chosen(sel, 1, CANDS) == ["a", "b"]
    assert chosen(sel, 2, CANDS) == ["c", "d"]
    assert chosen(sel, 2, CANDS) == ["c", "d"]  # round 2 again
    assert chosen(sel, 3, CANDS) == ["a", "e"]


def test_sites_joining_and_leaving_keep_their_place_by_id() -> None:
    sel = RoundRobinSelector(fraction=0.4)
    assert chosen(sel, 1, CANDS) == ["a", "b"]
    # c leaves, bb joins: the turn after b goes to bb (sorts right after b), then d
    changed = [c for c in CANDS if c.site_id != "c"] + [Candidate("bb", 7, 10)]
    assert chosen(sel, 2, changed) == ["bb", "d"]
    assert chosen(sel, 3, changed) == ["a", "e"]


def test_min_sites_and_an_empty_round() -> None:
    sel = RoundRobinSelector(fraction=0.1, min_sites=2)  # ceil(0.5) = 1, raised to 2
    assert chosen(sel, 1, CANDS) == ["a", "b"]
    empty = sel.select(2, [])
    assert empty.chosen == [] and empty.rejected == {}
    assert chosen(sel, 3, CANDS) == ["c", "d"]  # an empty round does not move the position


def test_state_round_trip_through_json() -> None:
    sel = RoundRobinSelector(0.4)
    chosen(sel, 1, CANDS)
    chosen(sel, 2, CANDS)
    state = json.loads(json.dumps(sel.state_dict()))
    assert state == {"version": 1, "last_chosen": "d", "round": 2, "round_after": "b"}
    resumed = RoundRobinSelector(0.4)
    resumed.load_state_dict(state)
    assert chosen(resumed, 2, CANDS) == ["c", "d"]  # the round in flight, retried
    assert chosen(resumed, 3, CANDS) == chosen(sel, 3, CANDS) == ["a", "e"]
    resumed.load_state_dict({})  # nothing saved: from the first id again
    assert chosen(resumed, 4, CANDS) == ["a", "b"]


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"version": 2}, "expected version 1; found 2"),
        ({"version": 1, "last_chosen": 3, "round": 1, "round_after": None}, "site ids or null"),
        ({"version": 1, "last_chosen": "a", "round": "1", "round_after": None}, "site ids or null"),
    ],
)
def test_bad_state(state: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoundRobinSelector().load_state_dict(state)


def test_bad_arguments_duplicates_and_repr() -> None:
    with pytest.raises(ValueError, match=r"round-robin: fraction must be in \(0, 1\]; found 0.0"):
        RoundRobinSelector(0.0)
    with pytest.raises(ValueError, match="round-robin: min_sites must be >= 1; found 0"):
        RoundRobinSelector(0.5, 0)
    with pytest.raises(ValueError, match="site ids must be unique; found a more than once"):
        RoundRobinSelector().select(1, [Candidate("a", 1, 1), Candidate("a", 2, 1)])
    assert repr(RoundRobinSelector(0.5, 2)) == "RoundRobinSelector(fraction=0.5, min_sites=2)"
