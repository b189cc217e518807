"""run_baselines' progress events: every baseline and site in order, timed, and the results unchanged."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from fedcore.baselines import BaselineProgress, run_baselines
from fedcore.cli.progress import BaselineDisplay
from fedcore.config import GeneratedData, Scenario, TaskSpec, TrainingSpec
from fedcore.data.generator import generate_transactions
from fedcore.data.graph import FraudGraph, build_graph

TASK = TaskSpec(hidden=8, features=["channel_online", "card_present"])
TRAINING = TrainingSpec(local_epochs=1, lr=0.02)
SITES = ("bank-a", "bank-b", "bank-c")


@pytest.fixture(scope="module")
def graphs() -> dict[str, FraudGraph]:
    return {
        site: build_graph(
            generate_transactions(
                GeneratedData(transactions=600, fraud_rate=0.05, customer_mix="mixed"), k
            ),
            TASK,
        )
        for k, site in enumerate(SITES)
    }


def _scenario(sites: tuple[str, ...], **baselines: bool) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "t",
            "seed": 5,
            "sites": [{"id": s, "data": {"kind": "generated"}} for s in sites],
            "task": TASK.model_dump(),
            "training": TRAINING.model_dump(),
            "baselines": baselines,
        }
    )


@pytest.fixture(scope="module")
def runs(graphs: dict[str, FraudGraph]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """The baselines (cross-site on) without a callback, then with one, and its events."""
    scenario = _scenario(SITES, cross_site=True)
    plain = run_baselines(graphs, scenario, epochs=2)
    events: list[BaselineProgress] = []
    watched = run_baselines(graphs, scenario, epochs=2, on_progress=events.append)
    return plain, watched, events


def _results(out: dict[str, Any]) -> str:
    """Everything but the wall times, exactly (float repr; NaN as NaN)."""
    return json.dumps({k: v for k, v in out.items() if k != "seconds"}, sort_keys=True)


def test_results_identical_with_and_without_callback(runs: Any) -> None:
    plain, watched, _ = runs
    assert set(plain) == {"local_only", "centralized", "non_graph", "seconds"}
    assert "across_sites" in plain["local_only"]
    assert _results(watched) == _results(plain)


def test_events_cover_every_baseline_and_site_in_order(runs: Any) -> None:
    _, _, events = runs
    # local-only: 3 sites + evaluation = 4 steps; pooled baselines: training + evaluation = 2
    Row = tuple[str, str, str | None, bool, int, int]
    expected: list[Row] = [("local_only", "baseline", None, False, 0, 4)]
    for k, site in enumerate(SITES):
        expected += [
            ("local_only", "train", site, False, k, 4),
            ("local_only", "train", site, True, k + 1, 4),
        ]
    expected += [
        ("local_only", "evaluate", None, False, 3, 4),
        ("local_only", "evaluate", None, True, 4, 4),
        ("local_only", "baseline", None, True, 4, 4),
    ]
    for name in ("centralized", "non_graph"):
        expected += [
            (name, "baseline", None, False, 0, 2),
            (name, "train", None, False, 0, 2),
            (name, "train", None, True, 1, 2),
            (name, "evaluate", None, False, 1, 2),
            (name, "evaluate", None, True, 2, 2),
            (name, "baseline", None, True, 2, 2),
        ]
    got = [(e.baseline, e.phase, e.site, e.finished, e.done, e.total) for e in events]
    assert got == expected
    index = {"local_only": 1, "centralized": 2, "non_graph": 3}
    assert all((e.index, e.count) == (index[e.baseline], 3) for e in events)


def test_event_seconds_are_timed_and_add_up(runs: Any) -> None:
    _, watched, events = runs
    assert all(e.seconds >= 0.0 for e in events)
    assert all(e.seconds == 0.0 for e in events if not e.finished)
    for name, total in watched["seconds"].items():
        end = [e for e in events if e.baseline == name and e.phase == "baseline" and e.finished]
        assert [e.seconds for e in end] == [total]  # the same figure as the result's
        steps = [e.seconds for e in events if e.baseline == name and e.phase != "baseline"]
        assert 0.0 < sum(steps) <= total  # the steps happen inside the baseline's time
    sites = [e for e in events if e.phase == "train" and e.finished and e.site is not None]
    assert all(e.seconds > 0.0 for e in sites)  # each site really trained


def test_events_follow_the_flags(graphs: dict[str, FraudGraph]) -> None:
    events: list[BaselineProgress] = []
    two = {s: graphs[s] for s in SITES[:2]}
    out = run_baselines(
        two,
        _scenario(SITES[:2], centralized=False, non_graph=False),
        epochs=1,
        on_progress=events.append,
    )
    assert set(out["seconds"]) == {"local_only"}
    assert {e.baseline for e in events} == {"local_only"}
    assert all((e.index, e.count, e.total) == (1, 1, 3) for e in events)
    assert [e.site for e in events if e.phase == "train" and e.finished] == list(SITES[:2])


def test_display_prints_each_site_and_baseline_off_a_terminal(
    graphs: dict[str, FraudGraph],
) -> None:
    console = Console(file=StringIO(), force_terminal=False, width=200, record=True)
    progress = Progress(console=console)
    two = {s: graphs[s] for s in SITES[:2]}
    with progress:
        run_baselines(
            two,
            _scenario(SITES[:2], non_graph=False),
            epochs=1,
            on_progress=BaselineDisplay(progress).event,
        )
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    assert [line.split(") ")[0] for line in lines] == [
        "  local-only bank-a (1/2",
        "  local-only bank-b (2/2",
        "baseline local-only (1/2",
        "baseline centralized (2/2",
    ]
    assert all(line.endswith(" s") for line in lines)
    assert progress.tasks == []  # no live bar where nobody watches it
