"""Rule-based scale/migrate policy: each rule at and around its threshold, rule order, explanations."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from scheduling.policy.observation import ACTIONS, ClusterObservation
from scheduling.policy.rules import HoldPolicy, RulePolicy

# A calm cluster: most sites active, on time, cool, no stragglers, some spare devices.
CALM = ClusterObservation(
    active_fraction=0.8,
    mean_utilization=0.5,
    max_temperature=0.6,
    straggler_ratio=0.1,
    dropout_rate=0.0,
    queue=0.05,
    deadline_miss=0.0,
    spare_devices=0.2,
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "hold"),
        # migrate: straggler_ratio >= 0.25 (slowest = 2x median: (2 - 1) / 4) and spare > 0
        ({"straggler_ratio": 0.25}, "migrate"),
        ({"straggler_ratio": 0.24}, "hold"),  # 1.96x the median: not yet
        ({"straggler_ratio": 1.0, "spare_devices": 0.0}, "hold"),  # nowhere to move it
        # scale-down: any of deadline_miss >= 0.1, dropout_rate >= 0.2, max_temperature >= 0.95
        ({"deadline_miss": 0.1}, "scale-down"),  # 10% over the deadline
        ({"deadline_miss": 0.09}, "hold"),
        ({"dropout_rate": 0.2}, "scale-down"),  # 1 site of 5 failed
        ({"dropout_rate": 0.19}, "hold"),
        ({"max_temperature": 0.95}, "scale-down"),  # e.g. 85 C with throttling at 89.5 C
        ({"max_temperature": 0.94}, "hold"),
        # scale-up: active_fraction < 0.5, deadline_miss <= 0 and queue < 0.1
        ({"active_fraction": 0.25}, "scale-up"),
        ({"active_fraction": 0.5}, "hold"),  # half the sites already train
        ({"active_fraction": 0.25, "queue": 0.1}, "hold"),  # work waits 10% of the deadline
        (
            {"active_fraction": 0.25, "deadline_miss": 0.05},
            "hold",
        ),  # late, not late enough to shrink
        # order: migrate before scale-down before scale-up
        ({"straggler_ratio": 0.5, "max_temperature": 0.97}, "migrate"),
        ({"straggler_ratio": 0.5, "spare_devices": 0.0, "deadline_miss": 0.3}, "scale-down"),
        ({"active_fraction": 0.25, "dropout_rate": 0.5}, "scale-down"),
        ({"active_fraction": 0.25, "straggler_ratio": 0.5}, "migrate"),
    ],
)
def test_default_rules(changes: dict[str, float], expected: str) -> None:
    obs = replace(CALM, **changes)
    assert ACTIONS[RulePolicy().act(obs.to_vector())] == expected


# One job, decision after decision: (changes to CALM) per decision -> actions. The
# straggler is a CPU-only site among T4 sites: 0.2 / 0.03 = 6.7x the median, clipped to
# straggler_ratio 1.0. spare_devices counts the idle devices of every active pool, 0.2
# here, but the straggler's own pool has none, so a migrate changes nothing; a migrate
# that pays lowers the ratio by migrate_gain = 0.05 or more by the next decision.
S = "straggler_ratio"


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        # the stuck straggler: one migrate, then the other rules decide
        ([{S: 1.0}, {S: 1.0}, {S: 1.0}], ["migrate", "hold", "hold"]),
        # ... scale-down once the straggler makes the job late (65 s / 50 s - 1 = 0.3)
        ([{S: 1.0}, {S: 1.0, "deadline_miss": 0.3}], ["migrate", "scale-down"]),
        # ... scale-up of a small job on time
        ([{S: 1.0}, {S: 1.0, "active_fraction": 0.25}], ["migrate", "scale-up"]),
        # 0.5 -> 0.3: it fell by 0.2 >= 0.05, the move paid; 0.3 >= 0.25 still: again
        ([{S: 0.5}, {S: 0.3}], ["migrate", "migrate"]),
        # 0.5 -> 0.46: a fall of 0.04 < 0.05 does not pay
        ([{S: 0.5}, {S: 0.46}], ["migrate", "hold"]),
        # off while the ratio stays within 0.05 of 0.5 (the same straggler) ...
        ([{S: 0.5}, {S: 0.5}, {S: 0.54}, {S: 0.47}], ["migrate", "hold", "hold", "hold"]),
        # ... on again when it moves further: 0.8 - 0.5 = 0.3 > 0.05 (another straggler)
        ([{S: 0.5}, {S: 0.5}, {S: 0.8}], ["migrate", "hold", "migrate"]),
        # no straggler in between: on again (0.1 is 0.4 below 0.5)
        ([{S: 0.5}, {S: 0.5}, {S: 0.1}, {S: 0.5}], ["migrate", "hold", "hold", "migrate"]),
    ],
)
def test_a_migrate_that_did_not_pay_is_not_repeated(
    decisions: list[dict[str, float]], expected: list[str]
) -> None:
    policy = RulePolicy()
    actions = [ACTIONS[policy.act(replace(CALM, **c).to_vector())] for c in decisions]
    assert actions == expected


def test_migrate_gain_is_configurable() -> None:
    policy = RulePolicy(migrate_gain=0.3)
    # 0.5 -> 0.3 falls by 0.2 < 0.3: not enough for this policy
    actions = [
        ACTIONS[policy.act(replace(CALM, straggler_ratio=r).to_vector())] for r in (0.5, 0.3)
    ]
    assert actions == ["migrate", "hold"]


def test_memory_explained_reset_and_not_compared() -> None:
    policy = RulePolicy()
    stuck = replace(CALM, straggler_ratio=1.0).to_vector()
    assert ACTIONS[policy.act(stuck)] == "migrate"
    assert policy.explain(stuck).startswith("rules: migrate: ")  # why act chose it
    assert ACTIONS[policy.act(stuck)] == "hold"
    assert policy.explain(stuck) == (
        "rules: hold: no rule fired: migrate is off: the last one left straggler_ratio at "
        "1.00 (a move that pays lowers it by 0.05); scale-down needs one of "
        "deadline_miss=0.00 >= 0.10 or dropout_rate=0.00 >= 0.20 or max_temperature=0.60 "
        ">= 0.95; scale-up needs active_fraction=0.80 < 0.50"
    )
    late = replace(CALM, straggler_ratio=1.0, deadline_miss=0.3).to_vector()
    assert policy.explain(late) == (  # not acted on: what act would do, memory untouched
        "rules: scale-down: deadline_miss=0.30 >= 0.10 (migrate is off: the last one left "
        "straggler_ratio at 1.00 (a move that pays lowers it by 0.05))"
    )
    assert ACTIONS[policy.act(stuck)] == "hold"
    assert policy == RulePolicy() and "memory" not in repr(policy)
    policy.reset()
    assert ACTIONS[policy.act(stuck)] == "migrate"  # a new job: worth a try


@pytest.mark.parametrize(
    ("thresholds", "changes", "expected"),
    [
        ({"straggler_high": 0.5}, {"straggler_ratio": 0.3}, "hold"),  # 2.2x the median < 3x
        ({"spare_min": 0.25}, {"straggler_ratio": 0.5}, "hold"),  # spare 0.2 not > 0.25
        ({"temperature_high": 0.6}, {}, "scale-down"),  # 0.6 >= 0.6
        ({"active_low": 0.9}, {}, "scale-up"),  # 0.8 < 0.9
        ({"active_low": 0.9, "queue_low": 0.05}, {}, "hold"),  # queue 0.05 not < 0.05
        ({"active_low": 0.9, "deadline_miss_ok": 0.05}, {"deadline_miss": 0.05}, "scale-up"),
    ],
)
def test_thresholds_are_configurable(
    thresholds: dict[str, float], changes: dict[str, float], expected: str
) -> None:
    obs = replace(CALM, **changes)
    assert ACTIONS[RulePolicy(**thresholds).act(obs.to_vector())] == expected


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"straggler_ratio": 0.5},
            "rules: migrate: straggler_ratio=0.50 >= 0.25 and spare_devices=0.20 > 0.00",
        ),
        (
            {"deadline_miss": 0.2, "max_temperature": 0.97},
            "rules: scale-down: deadline_miss=0.20 >= 0.10, max_temperature=0.97 >= 0.95",
        ),
        (
            {"active_fraction": 0.25},
            "rules: scale-up: active_fraction=0.25 < 0.50 and deadline_miss=0.00 <= 0.00 "
            "and queue=0.05 < 0.10",
        ),
        (
            {},
            "rules: hold: no rule fired: migrate needs straggler_ratio=0.10 >= 0.25; "
            "scale-down needs one of deadline_miss=0.00 >= 0.10 or dropout_rate=0.00 >= 0.20 "
            "or max_temperature=0.60 >= 0.95; scale-up needs active_fraction=0.80 < 0.50",
        ),
    ],
)
def test_explain_quotes_the_values(changes: dict[str, float], line: str) -> None:
    assert RulePolicy().explain(replace(CALM, **changes).to_vector()) == line


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"straggler_high": 1.5},
            "RulePolicy.straggler_high must be a number in \\[0, 1\\].*found 1.5",
        ),
        ({"queue_low": -0.1}, "RulePolicy.queue_low must be a number in \\[0, 1\\].*found -0.1"),
        (
            {"migrate_gain": 1.5},
            "RulePolicy.migrate_gain must be a number in \\[0, 1\\].*found 1.5",
        ),
        ({"dropout_high": True}, "RulePolicy.dropout_high must be a number.*found True"),
        (
            {"deadline_miss_ok": 0.2},
            "deadline_miss_ok \\(0.2\\) must be below deadline_miss_high \\(0.1\\)",
        ),
    ],
)
def test_bad_thresholds(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RulePolicy(**kwargs)


def test_bad_observations_are_refused() -> None:
    with pytest.raises(ValueError, match="must hold 8 values .*found 7"):
        RulePolicy().act(np.zeros(7))
    with pytest.raises(ValueError, match="must be finite"):
        RulePolicy().explain(np.full(8, np.inf))


def test_repr_and_name() -> None:
    assert RulePolicy.name == "rules"
    assert repr(RulePolicy(queue_low=0.2)).startswith("RulePolicy(straggler_high=0.25, ")
    assert "queue_low=0.2, migrate_gain=0.05)" in repr(RulePolicy(queue_low=0.2))


def test_hold_always_holds() -> None:
    rng = np.random.default_rng(0)
    assert {HoldPolicy().act(rng.random(8)) for _ in range(20)} == {0}
    assert HoldPolicy().explain(CALM.to_vector()) == "hold: hold: this policy always holds"
    with pytest.raises(ValueError, match="must hold 8 values"):
        HoldPolicy().act(np.zeros(2))
