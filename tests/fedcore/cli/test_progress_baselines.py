"""BaselineDisplay: the live bar's description, count and timer, and the lines it prints."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedcore.baselines import BaselinePhase, BaselineProgress
from fedcore.cli.progress import BaselineDisplay, baseline_status, format_baseline_event


def _event(
    baseline: str,
    phase: BaselinePhase,
    site: str | None,
    finished: bool,
    done: int,
    total: int,
    seconds: float = 0.0,
    index: int = 1,
    count: int = 2,
) -> BaselineProgress:
    return BaselineProgress(baseline, phase, site, finished, done, total, seconds, index, count)


def _events() -> list[BaselineProgress]:
    """What run_baselines sends for local-only on two sites, then centralized."""
    return [
        _event("local_only", "baseline", None, False, 0, 3),
        _event("local_only", "train", "bank-a", False, 0, 3),
        _event("local_only", "train", "bank-a", True, 1, 3, 12.43),
        _event("local_only", "train", "bank-b", False, 1, 3),
        _event("local_only", "train", "bank-b", True, 2, 3, 8.0),
        _event("local_only", "evaluate", None, False, 2, 3),
        _event("local_only", "evaluate", None, True, 3, 3, 0.5),
        _event("local_only", "baseline", None, True, 3, 3, 21.0),
        _event("centralized", "baseline", None, False, 0, 2, index=2),
        _event("centralized", "train", None, False, 0, 2, index=2),
        _event("centralized", "train", None, True, 1, 2, 30.0, index=2),
        _event("centralized", "evaluate", None, False, 1, 2, index=2),
        _event("centralized", "evaluate", None, True, 2, 2, 0.25, index=2),
        _event("centralized", "baseline", None, True, 2, 2, 30.3, index=2),
    ]


@pytest.mark.parametrize(
    ("event", "status"),
    [
        (_events()[0], "baselines 1/2: local-only starting"),
        (_events()[1], "baselines 1/2: local-only bank-a (1/2)"),
        (_events()[2], "baselines 1/2: local-only bank-a (1/2)"),
        (_events()[3], "baselines 1/2: local-only bank-b (2/2)"),
        (_events()[5], "baselines 1/2: local-only evaluating"),
        (_events()[7], "baselines 1/2: local-only done"),
        (_events()[9], "baselines 2/2: centralized training"),
        (_events()[13], "baselines: 2 done"),
    ],
)
def test_baseline_status(event: BaselineProgress, status: str) -> None:
    assert baseline_status(event) == status


def test_format_baseline_event_only_for_finished_sites_and_baselines() -> None:
    lines = [format_baseline_event(e) for e in _events()]
    assert [line for line in lines if line is not None] == [
        "  local-only bank-a (1/2) 12.4 s",
        "  local-only bank-b (2/2) 8.0 s",
        "baseline local-only (1/2) done in 21.0 s",
        "baseline centralized (2/2) done in 30.3 s",
    ]


def _progress(terminal: bool) -> tuple[Console, Progress]:
    console = Console(file=StringIO(), force_terminal=terminal, width=160, record=True)
    progress = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        auto_refresh=False,
    )
    return console, progress


def test_display_on_a_terminal_keeps_a_live_bar_per_baseline() -> None:
    console, progress = _progress(terminal=True)
    rounds = progress.add_task("rounds", total=3, completed=3)  # the run's own bar, finished
    display = BaselineDisplay(progress)
    seen: list[tuple[str, float, float | None, bool]] = []
    with progress:
        for event in _events():
            display.event(event)
            task = progress.tasks[-1]
            seen.append((task.description, task.completed, task.total, task.finished))
    assert len(progress.tasks) == 2 and progress.tasks[0].id == rounds
    assert seen[1] == ("baselines 1/2: local-only bank-a (1/2)", 0, 3, False)
    assert seen[4] == ("baselines 1/2: local-only bank-b (2/2)", 2, 3, False)
    assert seen[5] == ("baselines 1/2: local-only evaluating", 2, 3, False)  # timer still runs
    assert seen[7][1:] == (3, 3, True)
    assert seen[8] == ("baselines 2/2: centralized starting", 0, 2, False)  # reset: new timer
    assert seen[-1] == ("baselines: 2 done", 2, 2, True)
    text = console.export_text()
    for line in (
        "local-only bank-a (1/2) 12.4 s",
        "baseline local-only (1/2) done in 21.0 s",
        "baseline centralized (2/2) done in 30.3 s",
        "baselines: 2 done",
    ):
        assert line in text


def test_display_off_a_terminal_prints_plain_lines_only() -> None:
    console, progress = _progress(terminal=False)
    display = BaselineDisplay(progress)
    for event in _events():
        display.event(event)
    assert progress.tasks == []
    assert console.export_text().splitlines() == [
        "  local-only bank-a (1/2) 12.4 s",
        "  local-only bank-b (2/2) 8.0 s",
        "baseline local-only (1/2) done in 21.0 s",
        "baseline centralized (2/2) done in 30.3 s",
    ]


def test_display_escapes_markup_in_site_names() -> None:
    console, progress = _progress(terminal=True)
    display = BaselineDisplay(progress)
    display.event(_event("local_only", "baseline", None, False, 0, 2, count=1))
    display.event(_event("local_only", "train", "[red]x", False, 0, 2, count=1))
    display.event(_event("local_only", "train", "[red]x", True, 1, 2, 1.0, count=1))
    assert "[red]x" in console.export_text()
    assert progress.tasks[0].description == r"baselines 1/1: local-only \[red]x (1/1)"
