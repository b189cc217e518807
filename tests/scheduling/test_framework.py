"""Filter -> score pipeline: normalization, weighting, ordering, rejected reasons, checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence

import pytest

from scheduling.base import Candidate
from scheduling.framework import (
    FilterPlugin,
    FilterStatus,
    Pipeline,
    SchedulingContext,
    ScorePlugin,
    clip_normalize,
    min_max_normalize,
)
from scheduling.plugins import EntropyLoadScore, HealthFilter, LeastLoadedScore, TaskFitFilter

CTX = SchedulingContext(round=3)


class FlagFilter(FilterPlugin):
    """Rejects a site once per flag reading it carries whose name starts with the prefix."""

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix

    def filter(self, candidate: Candidate, ctx: SchedulingContext) -> FilterStatus:
        return FilterStatus(
            tuple(
                f"{k} = {v:g}" for k, v in candidate.readings.items() if k.startswith(self.prefix)
            )
        )


class FixedScore(ScorePlugin):
    """Raw scores from a table; records the sites it was asked about."""

    def __init__(self, name: str, raw: Mapping[str, float]) -> None:
        self.name = name
        self.raw = dict(raw)
        self.calls: list[list[str]] = []

    def score(self, candidates: Sequence[Candidate], ctx: SchedulingContext) -> dict[str, float]:
        self.calls.append([c.site_id for c in candidates])
        return {c.site_id: self.raw[c.site_id] for c in candidates}


def cand(site: str, **readings: float) -> Candidate:
    return Candidate(site, hash(site) % 1000, 100, dict(readings))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"a": 2.0, "b": 4.0, "c": 3.0}, {"a": 0, "b": 100, "c": 50}),  # (3-2)/(4-2) = 0.5
        (
            {"a": 0.0, "b": 1.0, "c": 8.0},
            {"a": 0, "b": 13, "c": 100},
        ),  # 100/8 = 12.5 -> 13 (half up)
        ({"a": -5.0, "b": 5.0}, {"a": 0, "b": 100}),  # negative raw scores are fine
        ({"a": 0.3, "b": 0.3}, {"a": 100, "b": 100}),  # all equal -> 100 each
        ({"a": 7.0}, {"a": 100}),  # one site -> 100
        ({}, {}),
    ],
)
def test_min_max_normalize(raw: dict[str, float], expected: dict[str, int]) -> None:
    assert min_max_normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"a": 42.5, "b": 42.49}, {"a": 43, "b": 42}),  # round half up, no stretch
        ({"a": 101.0, "b": -3.0}, {"a": 100, "b": 0}),  # clipped to [0, 100]
        ({"a": 60.0, "b": 60.0}, {"a": 60, "b": 60}),  # equal stays as it is
    ],
)
def test_clip_normalize(raw: dict[str, float], expected: dict[str, int]) -> None:
    assert clip_normalize(raw) == expected


@pytest.mark.parametrize("normalize", [min_max_normalize, clip_normalize])
def test_normalize_refuses_non_finite(
    normalize: Callable[[Mapping[str, float]], dict[str, int]],
) -> None:
    with pytest.raises(ValueError, match="expected finite raw scores; found {'b': nan}"):
        normalize({"a": 1.0, "b": float("nan")})


def test_context_checks_and_copies() -> None:
    thresholds = {"max_temperature_c": 80.0}
    ctx = SchedulingContext(round=1, task="inference", thresholds=thresholds)
    thresholds["max_temperature_c"] = 10.0
    assert ctx.threshold("max_temperature_c", 85.0) == 80.0  # the caller's dict is not shared
    assert ctx.threshold("max_power_fraction", 0.98) == 0.98
    with pytest.raises(
        ValueError,
        match="unknown task kind 'serving'; expected one of: training, fine-tuning, inference",
    ):
        SchedulingContext(round=1, task="serving")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="round must be >= 0; found -1"):
        SchedulingContext(round=-1)
    with pytest.raises(ValueError, match="threshold 'x' must be a finite number; found inf"):
        SchedulingContext(round=1, thresholds={"x": float("inf")})


def test_filter_status() -> None:
    assert FilterStatus().passed
    assert not FilterStatus(("too hot",)).passed


SITES = [
    cand("e"),
    cand("d", hot_a=91.0),
    cand("c"),
    cand("b", hot_b=1.0, cold_c=2.0),
    cand("a"),
]


def test_pipeline_ranks_by_weighted_total_and_lists_every_reason() -> None:
    # raw -> min-max: p1 over a, c, e: {a: 1, c: 3, e: 5} -> {a: 0, c: 50, e: 100}
    #                 p2 over a, c, e: {a: 9, c: 1, e: 1} -> {a: 100, c: 0, e: 0}
    # total = (3 * p1 + 1 * p2) / 4: a = 100/4 = 25.0, c = 150/4 = 37.5, e = 300/4 = 75.0
    p1 = FixedScore("p1", {"a": 1, "b": 0, "c": 3, "d": 0, "e": 5})
    p2 = FixedScore("p2", {"a": 9, "b": 0, "c": 1, "d": 0, "e": 1})
    pipe = Pipeline([FlagFilter("heat", "hot"), FlagFilter("cold", "cold")], [(p1, 3.0), (p2, 1.0)])
    res = pipe.run(SITES, CTX)
    assert [c.site_id for c in res.passed] == ["e", "c", "a"]
    assert res.total == {"a": 25.0, "c": 37.5, "e": 75.0}
    assert res.plugin_scores == {
        "p1": {"a": 0, "c": 50, "e": 100},
        "p2": {"a": 100, "c": 0, "e": 0},
    }
    assert res.rejected == {
        "b": ["heat: hot_b = 1", "cold: cold_c = 2"],  # every reason of every filter, in order
        "d": ["heat: hot_a = 91"],
    }
    assert p1.calls == [["a", "c", "e"]]  # rejected sites are never scored


def test_ties_are_broken_by_site_id() -> None:
    # all raw scores equal -> 100 each -> every total 100; order by site id
    flat = FixedScore("flat", {s.site_id: 1.0 for s in SITES})
    res = Pipeline([], [(flat, 2.0)]).run(SITES, CTX)
    assert [c.site_id for c in res.passed] == ["a", "b", "c", "d", "e"]
    assert set(res.total.values()) == {100.0}


def test_no_score_plugins_keeps_site_order_and_zero_totals() -> None:
    res = Pipeline([FlagFilter("heat", "hot")], []).run(SITES, CTX)
    assert [c.site_id for c in res.passed] == ["a", "c", "e"]
    assert res.total == {"a": 0.0, "c": 0.0, "e": 0.0}


def test_all_rejected_scores_nothing() -> None:
    p = FixedScore("p", {})
    res = Pipeline([FlagFilter("heat", "hot")], [(p, 1.0)]).run([cand("x", hot=1.0)], CTX)
    assert res.passed == [] and res.rejected == {"x": ["heat: hot = 1"]}
    assert p.calls == [] and res.plugin_scores == {}


def test_as_dict_and_selection() -> None:
    p1 = FixedScore("p1", {"a": 1, "c": 3, "e": 5})
    res = Pipeline([FlagFilter("heat", "hot"), FlagFilter("cold", "cold")], [(p1, 1.0)]).run(
        SITES, CTX
    )
    summary = json.loads(json.dumps(res.as_dict()))
    assert summary == {
        "round": 3,
        "task": "training",
        "passed": ["e", "c", "a"],
        "rejected": {"b": ["heat: hot_b = 1", "cold: cold_c = 2"], "d": ["heat: hot_a = 91"]},
        "scores": {"a": 0.0, "c": 50.0, "e": 100.0},
        "plugin_scores": {"p1": {"a": 0, "c": 50, "e": 100}},
        "weights": {"p1": 1.0},
        "details": {"p1": {}},
    }
    sel = res.to_selection(limit=2)
    assert [c.site_id for c in sel.chosen] == ["e", "c"]
    assert sel.rejected["a"] == ["ranked 3 with score 0.0; only 2 site(s) taken"]
    assert sel.rejected["d"] == ["heat: hot_a = 91"]
    assert sel.scores == {"a": 0.0, "c": 50.0, "e": 100.0}
    assert [c.site_id for c in res.to_selection().chosen] == ["e", "c", "a"]
    with pytest.raises(ValueError, match="limit must be >= 0"):
        res.to_selection(limit=-1)


def test_decisions_are_logged_with_reasons(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="scheduling.framework"):
        Pipeline([FlagFilter("heat", "hot")], []).run(SITES, CTX)
    assert "round 3: site d rejected: heat: hot_a = 91" in caplog.text
    assert "round 3 (training): 3 site(s) passed, ranked a=0.0, c=0.0, e=0.0" in caplog.text


def test_pipeline_refuses_bad_configuration() -> None:
    p = FixedScore("p", {})
    with pytest.raises(
        ValueError, match="plugin names must be unique in a pipeline; found p twice"
    ):
        Pipeline([], [(p, 1.0), (FixedScore("p", {}), 1.0)])
    for weight in (0.0, -1.0, float("nan")):
        with pytest.raises(
            ValueError, match="score plugin 'p': weight must be a finite number > 0"
        ):
            Pipeline([], [(p, weight)])
    with pytest.raises(ValueError, match="site ids must be unique; found a more than once"):
        Pipeline([], []).run([cand("a"), cand("a")], CTX)


def test_pipeline_refuses_misbehaving_score_plugins() -> None:
    class Partial(FixedScore):
        def score(
            self, candidates: Sequence[Candidate], ctx: SchedulingContext
        ) -> dict[str, float]:
            return {"a": 1.0, "z": 2.0}

    class OutOfRange(FixedScore):
        def normalize(self, raw: Mapping[str, float]) -> dict[str, int]:
            return {k: 150 for k in raw}

    with pytest.raises(ValueError, match=r"missing \['c'\], extra \['z'\]"):
        Pipeline([], [(Partial("part", {}), 1.0)]).run([cand("a"), cand("c")], CTX)
    with pytest.raises(ValueError, match="normalize must map every site to \\[0, 100\\]"):
        Pipeline([], [(OutOfRange("oor", {"a": 1.0}), 1.0)]).run([cand("a")], CTX)


def test_real_plugins_end_to_end() -> None:
    gpu = {"device_memory_total_mib": 16384.0, "device_power_limit_w": 300.0}
    sites = [
        # hot and nearly out of memory: two filters, three reasons
        cand(
            "bank-a",
            device_temperature_c=90.0,
            device_memory_used_mib=15000.0,
            device_utilization_percent=10.0,
            device_power_w=100.0,
            **gpu,
        ),
        # busy but healthy
        cand(
            "bank-b",
            device_temperature_c=70.0,
            device_memory_used_mib=8192.0,
            device_utilization_percent=90.0,
            device_power_w=250.0,
            **gpu,
        ),
        # idle and healthy
        cand(
            "bank-c",
            device_temperature_c=50.0,
            device_memory_used_mib=1024.0,
            device_utilization_percent=5.0,
            device_power_w=80.0,
            **gpu,
        ),
        # CPU-only: cannot train without allow_cpu
        cand("bank-d", cpu_util_percent=5.0, mem_used_mib=1000.0, mem_total_mib=64000.0),
    ]
    pipe = Pipeline(
        [HealthFilter(min_free_memory_mib=2048.0), TaskFitFilter()],
        [(EntropyLoadScore(), 2.0), (LeastLoadedScore(), 1.0)],
    )
    res = pipe.run(sites, CTX)
    assert res.rejected == {
        "bank-a": [
            "health: GPU temperature 90.0 °C >= limit 85.0 °C",
            "health: GPU memory free 1384.0 MiB < headroom 2048.0 MiB (used 15000.0 of 16384.0 MiB)",
            "task-fit: training needs 4096.0 MiB free device memory; found 1384.0 MiB "
            "(15000.0 used of 16384.0 MiB)",
        ],
        "bank-d": [
            "task-fit: training needs a GPU; the site reports none (CPU-only); "
            "set allow_cpu to run training on CPU-only sites"
        ],
    }
    # two sites: c is best on every metric -> entropy-load c = 100, b = 0;
    # least-loaded c = 100 - 5 = 95, b = 100 - 90 = 10
    # totals: c = (2*100 + 95) / 3 = 98.333..., b = (2*0 + 10) / 3 = 3.333...
    assert [c.site_id for c in res.passed] == ["bank-c", "bank-b"]
    assert res.total["bank-c"] == pytest.approx(295 / 3)
    assert res.total["bank-b"] == pytest.approx(10 / 3)
    assert res.details["entropy-load"]["weights"] == {
        "utilization": 0.25,
        "memory_used_fraction": 0.25,
        "temperature_fraction": 0.25,
        "power_fraction": 0.25,
    }
    assert repr(pipe) == (
        "Pipeline(filters=[health, task-fit], scores=[entropy-load*2, least-loaded*1])"
    )
