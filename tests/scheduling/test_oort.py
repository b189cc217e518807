"""Oort-style selection: utility arithmetic, exploration, cut-off sampling, state, determinism."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from scheduling.base import Candidate, SiteResult
from scheduling.oort import (
    OortSelector,
    exploration_rate,
    preferred_duration,
    sample_proportional,
    staleness_bonus,
    statistical_utility,
    system_penalty,
)

LN2, LN3, LN5 = math.log(2), math.log(3), math.log(5)


def ids(cands: list[Candidate]) -> list[str]:
    return [c.site_id for c in cands]


def greedy(**kwargs: Any) -> OortSelector:
    """No exploration slots at all: epsilon = 0 in every round."""
    return OortSelector(exploration=0.0, min_exploration=0.0, **kwargs)


# -- the pure formulas ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "loss", "expected"),
    [
        (200, 0.5, 100.0),  # |B| * sqrt(mean loss^2) ~ 200 * 0.5
        (50, 1.2, 60.0),
        (0, 2.0, 0.0),  # no data, no utility
        (1000, 0.0, 0.0),  # nothing left to learn
    ],
)
def test_statistical_utility(n: int, loss: float, expected: float) -> None:
    assert statistical_utility(n, loss) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "loss", "message"),
    [(-1, 1.0, "num_examples must be >= 0"), (1, -0.1, "loss must be"), (1, math.nan, "loss")],
)
def test_statistical_utility_rejects(n: int, loss: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        statistical_utility(n, loss)


@pytest.mark.parametrize(
    ("t", "preferred", "alpha", "expected"),
    [
        (120.0, 60.0, 2.0, 0.25),  # (60 / 120)^2
        (90.0, 60.0, 1.0, 2 / 3),  # (60 / 90)^1
        (180.0, 60.0, 0.5, math.sqrt(1 / 3)),  # (60 / 180)^0.5 = 0.57735
        (60.0, 60.0, 2.0, 1.0),  # exactly on time: no penalty
        (50.0, 60.0, 2.0, 1.0),  # faster than T: no bonus either
        (None, 60.0, 2.0, 1.0),  # unknown duration
        (1000.0, math.inf, 2.0, 1.0),  # no preferred duration
        (120.0, 60.0, 0.0, 1.0),  # alpha 0 switches the penalty off
    ],
)
def test_system_penalty(t: float | None, preferred: float, alpha: float, expected: float) -> None:
    assert system_penalty(t, preferred, alpha) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("round_", "last", "weight", "expected"),
    [
        (10, 2, 0.1, math.sqrt(0.1 * math.log(10) / 2)),  # 0.33930
        (10, 10, 0.1, math.sqrt(0.1 * math.log(10) / 10)),  # trained last round: 0.15174
        (5, 0, 0.1, math.sqrt(0.1 * LN5 / 1)),  # L taken as at least 1: 0.40118
        (1, 1, 0.1, 0.0),  # ln 1 = 0
        (0, 0, 0.1, 0.0),  # dry run
        (10, 2, 0.0, 0.0),  # weight 0 switches it off
    ],
)
def test_staleness_bonus(round_: int, last: int, weight: float, expected: float) -> None:
    assert staleness_bonus(round_, last, weight) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("round_", "expected"),
    [
        (1, 0.9),  # the initial share
        (2, 0.882),  # 0.9 * 0.98
        (3, 0.86436),  # 0.9 * 0.98^2
        (100, 0.2),  # 0.9 * 0.98^99 = 0.1218, floored at 0.2
        (0, 0.9),  # a dry run counts as round 1
    ],
)
def test_exploration_rate(round_: int, expected: float) -> None:
    assert exploration_rate(round_, 0.9, 0.98, 0.2) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("durations", "quantile", "expected"),
    [
        ([40.0, 10.0, 30.0, 20.0], 0.3, 20.0),  # sorted[floor(4 * 0.3) = 1]
        ([40.0, 10.0, 30.0, 20.0], 0.0, 10.0),  # sorted[0]
        ([40.0, 10.0, 30.0, 20.0], 0.5, 30.0),  # sorted[2]
        ([40.0, 10.0, 30.0, 20.0], 1.0, 40.0),  # sorted[min(4, 3)]
        ([7.0], 0.9, 7.0),
        ([], 0.3, math.inf),  # nothing known: no penalty
    ],
)
def test_preferred_duration(durations: list[float], quantile: float, expected: float) -> None:
    assert preferred_duration(durations, quantile) == expected


def test_sample_proportional_follows_the_weights() -> None:
    rng = np.random.default_rng(0)
    firsts = Counter(sample_proportional([1.0, 3.0, 0.0], 1, rng)[0] for _ in range(4000))
    assert firsts[2] == 0  # weight 0 is never drawn while others are left
    assert abs(firsts[1] / 4000 - 0.75) < 0.03  # 3 / (1 + 3)
    # all of them: the zero weight comes last; same generator state, same draw
    assert sample_proportional([1.0, 3.0, 0.0], 3, np.random.default_rng(5))[-1] == 2
    assert sample_proportional([1.0, 2.0, 3.0], 2, np.random.default_rng(5)) == (
        sample_proportional([1.0, 2.0, 3.0], 2, np.random.default_rng(5))
    )
    assert sample_proportional([0.0, 0.0], 2, rng) == [0, 1]  # all zero: index order
    assert sample_proportional([1.0], 0, rng) == []


def test_sample_proportional_rejects() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"k must be in \[0, 2\]"):
        sample_proportional([1.0, 1.0], 3, rng)
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0; found \[-1.0\]"):
        sample_proportional([1.0, -1.0], 1, rng)


# -- the selector --------------------------------------------------------------------------


def test_explores_untried_sites_first_fastest_first() -> None:
    speed = {"a": 0.5, "b": 2.0, "d": 1.0, "e": 2.0}  # c reports no speed
    cands = [
        Candidate(s, 10 + i, 100, {"relative_throughput": speed[s]} if s in speed else {})
        for i, s in enumerate("edcba")
    ]
    # round 1: epsilon 0.9, k = ceil(0.6 * 5) = 3, exploitation floor(3 * 0.1) = 0 slots
    result = OortSelector(fraction=0.6).select(1, cands)
    assert ids(result.chosen) == ["b", "d", "e"]  # 2.0, 2.0, 1.0
    assert result.rejected == {
        "a": [
            "not explored yet; the 3 exploration slot(s) went to faster untried sites "
            "(relative throughput 0.50)"
        ],
        "c": [
            "not explored yet; the 3 exploration slot(s) went to faster untried sites (speed unknown)"
        ],
    }
    assert result.scores == {}  # nothing explored, nothing scored


def test_untried_sites_keep_priority_while_epsilon_is_high() -> None:
    sel = OortSelector(fraction=0.5)
    for site in ("a", "b"):
        sel.observe_site(site, 1, loss=5.0, duration_s=10.0)
    cands = [Candidate(s, 0, 100) for s in "abcd"]
    # round 2: epsilon 0.882, k = 2, exploitation floor(2 * 0.118) = 0: both slots explore
    result = sel.select(2, cands)
    assert ids(result.chosen) == ["c", "d"]
    assert result.rejected["a"] == [
        "utility 100.0; all 2 slot(s) went to sites not explored yet (epsilon 0.88)"
    ]
    # slots the untried sites cannot fill go to the explored ones
    result = sel.select(2, cands[:3])  # k = ceil(0.5 * 3) = 2, one untried site
    assert "c" in ids(result.chosen) and len(result.chosen) == 2


def test_slot_split_between_exploration_and_exploitation() -> None:
    sel = OortSelector(fraction=5 / 8, exploration=0.5, min_exploration=0.5, exploration_decay=1.0)
    for site in ("x1", "x2", "x3", "x4"):
        sel.observe_site(site, 1, loss=1.0)
    untried = [Candidate(f"u{i}", 0, 100, {"relative_throughput": float(i)}) for i in range(4)]
    explored = [Candidate(f"x{i}", 0, 100) for i in range(1, 5)]
    # k = 5: exploitation floor(5 * 0.5) = 2 slots, exploration the other 3, fastest first
    chosen = ids(sel.select(3, untried + explored).chosen)
    assert [s for s in chosen if s.startswith("u")] == ["u1", "u2", "u3"]
    assert len([s for s in chosen if s.startswith("x")]) == 2
    # one untried site of 5: k = ceil(5/8 * 5) = 4, exploitation 2 slots, exploration 2 of
    # which the one untried site fills 1; the explored sites take the slot left over
    chosen = ids(sel.select(3, untried[:1] + explored).chosen)
    assert chosen[0] == "u0" and len(chosen) == 4


def test_utility_arithmetic_and_scores() -> None:
    sel = greedy(preferred_duration_s=60.0)
    sel.observe_site("a", 4, loss=2.0, duration_s=30.0)
    sel.observe_site("b", 4, loss=1.0, duration_s=120.0)
    sel.observe_site("c", 4, loss=1.0, duration_s=60.0)
    cands = [Candidate("a", 1, 100), Candidate("b", 2, 400), Candidate("c", 3, 100)]
    result = sel.select(5, cands)
    # U = n * loss: a 200, b 400, c 100; divided by max U = 400: a 0.5, b 1.0, c 0.25
    # staleness bonus, all last trained in round 4: sqrt(0.1 * ln 5 / 4) = 0.200589
    # penalty with T = 60 s, alpha 2: a 1 (30 s), b (60 / 120)^2 = 0.25, c 1 (exactly 60 s)
    bonus = math.sqrt(0.1 * LN5 / 4)
    util = {"a": 0.5 + bonus, "b": (1.0 + bonus) * 0.25, "c": 0.25 + bonus}
    # = a 0.700589, b 0.300147, c 0.450589; scaled so that a = 100: b 42.84, c 64.32
    assert result.scores == pytest.approx({s: 100 * u / util["a"] for s, u in util.items()})
    assert result.scores == pytest.approx({"a": 100.0, "b": 42.8421, "c": 64.3157}, abs=1e-4)
    assert ids(result.chosen) == ["a", "b", "c"] and result.rejected == {}  # k = 3 = n


def test_penalizes_sites_slower_than_the_preferred_duration() -> None:
    cands = [Candidate("fast", 1, 100), Candidate("slow", 2, 100)]
    for preferred, slow_score, factor in [
        # T = 60 s: the slow site's utility x (60 / 120)^2 = 0.25
        (60.0, 25.0, 0.25),
        # T = None: quantile 0.3 of the known [30, 120] = sorted[floor(0.6)] = 30 s;
        # slow x (30 / 120)^2 = 0.0625
        (None, 6.25, 0.0625),
    ]:
        sel = greedy(fraction=0.5, preferred_duration_s=preferred)  # k = 1
        sel.observe_site("fast", 1, loss=1.0, duration_s=30.0)
        sel.observe_site("slow", 1, loss=1.0, duration_s=120.0)
        # equal U (100 each, 1.0 normalized), same bonus sqrt(0.1 * ln 2 / 1) = 0.263277:
        # fast 1.263277, slow 1.263277 * factor; cut-off 0.95 * 1.263277 -> 95.0 scaled
        for seed in range(20):
            sel.seed = seed
            result = sel.select(2, cands)
            assert ids(result.chosen) == ["fast"]
        assert result.scores == pytest.approx({"fast": 100.0, "slow": slow_score})
        t = 60.0 if preferred else 30.0
        assert result.rejected == {
            "slow": [
                f"utility {slow_score:.1f} below cut-off 95.0",
                f"last round took 120.0 s, over the preferred {t:.1f} s: utility x {factor:.3f}",
            ]
        }


def test_exploits_high_loss_sites() -> None:
    sel = greedy(fraction=2 / 6)  # k = 2
    losses = {"h1": 3.0, "h2": 2.9, "l1": 0.5, "l2": 0.5, "l3": 0.5, "l4": 0.5}
    for site, loss in losses.items():
        sel.observe_site(site, 1, loss=loss)
    cands = [Candidate(s, i, 100) for i, s in enumerate(losses)]
    # U / max U: h1 1.0, h2 2.9/3 = 0.966667, l* 0.5/3 = 0.166667; bonus sqrt(0.1 ln 2) = 0.263277
    # utility: h1 1.263277, h2 1.229944, l* 0.429944; cut-off = 0.95 * h2 (the 2nd best)
    # = 1.168446 -> only h1 and h2 get in, whatever the draw
    for seed in range(20):
        sel.seed = seed
        result = sel.select(2, cands)
        assert ids(result.chosen) == ["h1", "h2"]
    # scaled: l* 100 * 0.429944 / 1.263277 = 34.03; cut-off 100 * 1.168446 / 1.263277 = 92.49
    assert result.rejected["l1"] == ["utility 34.0 below cut-off 92.5"]
    assert result.scores["h2"] == pytest.approx(100 * (2.9 / 3 + math.sqrt(0.1 * LN2)) / 1.263277)


def test_sites_within_the_cut_off_are_drawn_in_proportion_to_utility() -> None:
    sel = greedy(fraction=1 / 3)  # k = 1
    for site, loss in {"a": 1.0, "b": 0.98, "c": 0.97}.items():
        sel.observe_site(site, 1, loss=loss)
    cands = [Candidate(s, 0, 100) for s in "abc"]
    # utilities 1.263, 1.243, 1.233 are all >= 0.95 * 1.263 = 1.200: all three admitted,
    # each drawn with probability ~ 1/3 (1.263 / 3.739 = 0.338 for a, 0.330 for c)
    wins = Counter(ids(sel.select(r, cands).chosen)[0] for r in range(2, 902))
    assert set(wins) == {"a", "b", "c"}
    assert all(250 < wins[s] < 350 for s in "abc"), wins
    result = sel.select(2, cands)
    (loser, reasons), *_ = result.rejected.items()
    assert reasons[0].startswith(f"utility {result.scores[loser]:.1f} within cut-off 95.0")
    assert reasons[0].endswith("but not drawn (drawn in proportion to utility)")


def test_deterministic_by_seed_independent_of_order_and_node_ids() -> None:
    def build(seed: int) -> OortSelector:
        sel = OortSelector(fraction=0.5, seed=seed, exploration=0.2)
        for i, site in enumerate("abcdefgh"):
            sel.observe_site(site, 1, loss=1.0 + 0.01 * i)  # utilities within 5 %
        return sel

    cands = [Candidate(s, i, 100, {"relative_throughput": 1.0}) for i, s in enumerate("abcdefghij")]
    shuffled = [Candidate(c.site_id, 500 - i, 100, c.readings) for i, c in enumerate(cands[::-1])]
    a, b = build(7).select(4, cands), build(7).select(4, shuffled)
    assert a.as_dict() == b.as_dict()
    assert len(a.chosen) == 5  # ceil(0.5 * 10)
    # epsilon 0.2: exploitation floor(5 * 0.8) = 4 slots, one slot for the untried i and j,
    # equally fast: the smaller id
    assert "i" in ids(a.chosen) and "j" not in ids(a.chosen)
    draws = {tuple(ids(build(seed).select(4, cands).chosen)) for seed in range(30)}
    assert len(draws) > 1  # seeds differ
    sel = build(7)
    assert sel.select(4, cands).as_dict() == sel.select(4, cands).as_dict()  # select is pure


def test_readings_stand_in_until_observed() -> None:
    sel = greedy(preferred_duration_s=20.0)
    cands = [
        Candidate("a", 0, 100, {"last_train_loss": 1.0, "last_round_seconds": 10.0}),
        Candidate("b", 0, 100, {"last_train_loss": 0.5, "last_round_seconds": 40.0}),
    ]
    # no state: loss and duration from the readings, last round taken as 1
    # a: 1.0 + sqrt(0.1 ln 3) = 1.331453; b: (0.5 + 0.331453) * (20 / 40)^2 = 0.207863
    result = sel.select(3, cands)
    assert result.scores == pytest.approx({"a": 100.0, "b": 15.6118}, abs=1e-4)
    # an observation wins over the readings: b now U 200 (max), trained in round 2
    sel.observe_site("b", 2, loss=2.0, duration_s=10.0)
    # a: 0.5 + 0.331453 = 0.831453; b: 1 + sqrt(0.1 ln 3 / 2) = 1.234373, no penalty
    result = sel.select(3, cands)
    assert result.scores == pytest.approx({"a": 67.3584, "b": 100.0}, abs=1e-4)


def test_observe_round_results(caplog: pytest.LogCaptureFixture) -> None:
    sel = OortSelector()
    sel.observe(
        3,
        {
            "a": SiteResult("a", seconds=12.5, loss=0.7, epochs=1, num_examples=100),
            # selected without an update: explored (not re-explored every round) with the
            # median loss of the sites known before this round (none yet: 1.0)
            "b": SiteResult("b", None, 0.9, 1, 100, failed="timed out"),
            "c": SiteResult("c", None, None, 1, 100),
            "d": SiteResult("d", 0.0, 0.4, 1, 100),  # no valid duration: loss only
        },
    )
    with caplog.at_level(logging.WARNING, logger="scheduling.oort"):
        sel.observe(3, {"e": SiteResult("e", 5.0, math.inf, 1, 100)})
    assert "result of e not kept: oort: loss of site 'e' must be a finite number >= 0" in (
        caplog.text
    )
    sel.observe(3, {"a": SiteResult("a", 12.5, 0.7, 1, 100)})  # the same round again
    sel.observe(4, {"a": SiteResult("a", None, 0.6, 1, 100)})  # duration unknown: kept
    assert sel.state_dict()["sites"] == {
        "a": {"last_round": 4, "loss": 0.6, "duration_s": 12.5, "rounds_trained": 2},
        "b": {"last_round": 3, "loss": 1.0, "duration_s": None, "rounds_trained": 0},
        "c": {"last_round": 3, "loss": 1.0, "duration_s": None, "rounds_trained": 0},
        "d": {"last_round": 3, "loss": 0.4, "duration_s": None, "rounds_trained": 1},
    }


def test_observe_site_rejects_bad_values() -> None:
    sel = OortSelector()
    with pytest.raises(ValueError, match="oort: round must be >= 0; found -1"):
        sel.observe_site("a", -1, 1.0)
    with pytest.raises(ValueError, match="loss of site 'a' must be a finite number >= 0"):
        sel.observe_site("a", 1, -1.0)
    with pytest.raises(ValueError, match="duration_s of site 'a' must be seconds > 0 or None"):
        sel.observe_site("a", 1, 1.0, 0.0)


def test_blacklist_gives_others_a_turn() -> None:
    def build(max_fraction: float, fraction: float) -> OortSelector:
        sel = greedy(fraction=fraction, blacklist_rounds=1, blacklist_max_fraction=max_fraction)
        for site, rounds in {"a": 3, "b": 2, "c": 1, "d": 1}.items():
            for r in range(1, rounds + 1):
                sel.observe_site(site, r, loss=5.0 if site in "ab" else 1.0)
        return sel

    cands = [Candidate(s, 0, 100) for s in "abcd"]
    # over 1 round: a (3), b (2); at most floor(0.5 * 4) = 2 left out: both
    result = build(0.5, 0.5).select(5, cands)
    assert ids(result.chosen) == ["c", "d"]
    assert result.rejected["a"] == [
        "trained in 3 rounds, more than blacklist_rounds=1; left out to give others a turn"
    ]
    # at most floor(0.25 * 4) = 1 left out: the most trained, a; with k = 1, b's high loss
    # wins: U/max b 1.0, c d 0.2; + bonus b sqrt(0.1 ln 5 / 2) = 0.2837, c d sqrt(0.1 ln 5)
    # = 0.4012: b 1.2837, c d 0.6012, below the cut-off 0.95 * 1.2837
    assert ids(build(0.25, 0.25).select(5, cands).chosen) == ["b"]
    # k = 4 > the 2 sites allowed: the blacklisted fill the rest
    assert ids(build(0.5, 1.0).select(5, cands).chosen) == ["a", "b", "c", "d"]


def test_zero_utilities_and_empty_rounds() -> None:
    sel = greedy(fraction=0.5)
    sel.observe_site("a", 1, loss=0.0)
    sel.observe_site("b", 1, loss=0.0)
    result = sel.select(1, [Candidate("a", 0, 100), Candidate("b", 0, 100)])  # no bonus in round 1
    assert result.scores == {"a": 0.0, "b": 0.0}
    assert ids(result.chosen) == ["a"]  # all zero: by site id
    assert result.rejected == {
        "b": ["utility 0.0 within cut-off 0.0 but not drawn (drawn in proportion to utility)"]
    }
    empty = sel.select(2, [])
    assert empty.chosen == [] and empty.rejected == {} and empty.scores == {}


def test_state_round_trip_through_json() -> None:
    sel = OortSelector(fraction=0.5, seed=3, exploration=0.3)
    for i, site in enumerate("abcdef"):
        sel.observe_site(site, 1 + i % 2, loss=0.5 + 0.1 * i, duration_s=5.0 * (i + 1))
    state = json.loads(json.dumps(sel.state_dict()))
    assert state["version"] == 1
    assert state["sites"]["f"] == {
        "last_round": 2,
        "loss": pytest.approx(1.0),
        "duration_s": 30.0,
        "rounds_trained": 1,
    }
    resumed = OortSelector(fraction=0.5, seed=3, exploration=0.3)
    resumed.load_state_dict(state)
    cands = [Candidate(s, 0, 100) for s in "abcdefgh"]
    for r in (3, 4, 5):
        assert resumed.select(r, cands).as_dict() == sel.select(r, cands).as_dict()
    assert resumed.state_dict() == sel.state_dict()
    resumed.load_state_dict({})  # nothing saved: everyone untried again
    assert resumed.state_dict() == {"version": 1, "sites": {}}


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"version": 9, "sites": {}}, "expected version 1; found 9"),
        ({"version": 1, "sites": []}, "expected 'sites' to be a mapping"),
        ({"version": 1, "sites": {"a": 3}}, "site 'a': expected a mapping"),
        (
            {"version": 1, "sites": {"a": {"last_round": -1, "loss": 1.0, "rounds_trained": 1}}},
            "expected last_round to be an integer >= 0",
        ),
        (
            {"version": 1, "sites": {"a": {"last_round": 1, "loss": "x", "rounds_trained": 1}}},
            "expected loss to be a finite number >= 0",
        ),
        (
            {
                "version": 1,
                "sites": {
                    "a": {"last_round": 1, "loss": 1.0, "duration_s": 0, "rounds_trained": 1}
                },
            },
            "expected duration_s to be seconds > 0 or null",
        ),
        (
            {"version": 1, "sites": {"a": {"last_round": 1, "loss": 1.0, "rounds_trained": 0}}},
            "expected rounds_trained to be an integer >= 1",
        ),
    ],
)
def test_bad_state_is_refused_and_changes_nothing(state: dict[str, object], message: str) -> None:
    sel = OortSelector()
    sel.observe_site("keep", 1, 1.0)
    before = sel.state_dict()
    with pytest.raises(ValueError, match=message):
        sel.load_state_dict(state)
    assert sel.state_dict() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\]; found 0.0"),
        ({"min_sites": 0}, "min_sites must be >= 1; found 0"),
        ({"preferred_duration_s": 0.0}, "preferred_duration_s must be a number of seconds > 0"),
        ({"alpha": -1.0}, "alpha must be a finite number >= 0; found -1.0"),
        ({"exploration": 1.5}, r"exploration must be in \[0, 1\]; found 1.5"),
        ({"exploration_decay": 0.0}, r"exploration_decay must be in \(0, 1\]"),
        ({"exploration": 0.1}, r"min_exploration must be in \[0, exploration=0.1\]; lower it"),
        ({"cut_off": 0.0}, r"cut_off must be in \(0, 1\]; found 0.0"),
        ({"staleness_weight": math.nan}, "staleness_weight must be a finite number >= 0"),
        ({"duration_quantile": 1.1}, r"duration_quantile must be in \[0, 1\]"),
        ({"blacklist_rounds": -1}, "blacklist_rounds must be >= 0, or None"),
        ({"blacklist_max_fraction": 2.0}, r"blacklist_max_fraction must be in \[0, 1\]"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"oort: {message}"):
        OortSelector(**kwargs)


def test_duplicates_and_repr() -> None:
    with pytest.raises(ValueError, match="site ids must be unique; found a more than once"):
        OortSelector().select(1, [Candidate("a", 1, 1), Candidate("a", 2, 1)])
    assert repr(OortSelector(0.5, 2, seed=4)) == (
        "OortSelector(fraction=0.5, min_sites=2, seed=4, preferred_duration_s=None, alpha=2.0, "
        "exploration=0.9, exploration_decay=0.98, min_exploration=0.2, cut_off=0.95, "
        "staleness_weight=0.1, duration_quantile=0.3, blacklist_rounds=None, "
        "blacklist_max_fraction=0.3)"
    )
