"""What the commands print while a federation runs: the round line, the baselines' progress, deployment service events and errors with their exit codes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.markup import escape

from fedcore.engines.deployment.errors import (
    AddressInUseError,
    DeploymentConfigError,
    DeploymentError,
    DeploymentInterrupted,
    Event,
    RunFailedError,
    ServerExitedError,
)
from fedcore.exit_codes import (
    EXIT_ADDRESS_IN_USE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
)
from fedcore.records import RoundRecord

if TYPE_CHECKING:  # fedcore.baselines imports torch: not at the start of every command
    from rich.progress import Progress, TaskID

    from fedcore.baselines import BaselineProgress

__all__ = [
    "BaselineDisplay",
    "baseline_status",
    "fmt",
    "format_baseline_event",
    "format_round",
    "print_deployment_error",
    "print_event",
]


def fmt(x: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals; ``—`` for ``None`` or NaN."""
    if isinstance(x, float):
        return "—" if math.isnan(x) else f"{x:.{digits}f}"
    return "—" if x is None else str(x)


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "—"
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _schedule_line(rec: Mapping[str, Any]) -> str:
    """The round's scheduling decision, as a second line (policies other than random)."""
    sched = rec.get("schedule")
    if not isinstance(sched, dict) or sched.get("policy") == "random":
        return ""
    parts = [f"{sched.get('policy')}: {sched.get('chosen')}/{sched.get('candidates')} sites"]
    if "epochs" in sched:
        lo, hi = sched["epochs"]
        parts.append(f"epochs {lo}" if lo == hi else f"epochs {lo}-{hi}")
    if "deadline_s" in sched:
        parts.append(f"deadline {sched['deadline_s']:.1f}s")
    if "predicted_max_s" in sched:
        parts.append(f"predicted ≤{sched['predicted_max_s']:.1f}s")
    if "measured_max_s" in sched:
        parts.append(f"measured ≤{sched['measured_max_s']:.1f}s")
    if sched.get("scaling"):
        parts.append(f"scale: {sched['scaling']}")
    if rec.get("virtual_time_s") is not None:
        parts.append(f"virtual clock {rec['virtual_time_s'] / 3600:.2f} h")
    return "\n          [cyan]" + escape(", ".join(parts)) + "[/]"


def _left_out(rejected: Mapping[str, list[str]]) -> str:
    return "; ".join(f"{site} ({', '.join(reasons)[:120]})" for site, reasons in rejected.items())


def format_round(record: RoundRecord | Mapping[str, Any]) -> str:
    """One finished round, as ``fedcore run`` and ``fed-coordinator`` show it (rich markup).

    ``round   2  3 sites  loss 0.4121  PR-AUC 0.6130  8.1s  ↑1.2 MB ↓1.2 MB  ε 0.812``, then
    the scheduling decision (policies other than random) and the sites left out, each on
    a line of its own.

    Args:
        record: The round record: from the driver, or a row read back from ``rounds.jsonl``
            (a plain dict of the same shape; missing fields show as ``?`` or ``—``).

    Returns:
        The text, with rich markup; every value from the record is escaped.
    """
    rec = cast(Mapping[str, Any], record)
    number = rec.get("round")
    sites = rec.get("sites")
    line = (
        f"round {number if isinstance(number, int) else '?':>3}  "
        f"{len(sites) if isinstance(sites, list) else '?'} sites  loss {fmt(rec.get('loss'))}  "
        f"PR-AUC {fmt(rec.get('pr_auc'))}  {fmt(rec.get('seconds'), 1)}s  "
        f"↑{_bytes(rec.get('bytes_up'))} ↓{_bytes(rec.get('bytes_down'))}"
    )
    if isinstance(rec.get("epsilon"), int | float):
        line += f"  ε {rec['epsilon']:.3f}"
    line = escape(line) + _schedule_line(rec)
    rejected = rec.get("rejected")
    if isinstance(rejected, dict) and rejected:
        line += f"\n          [yellow]left out: {escape(_left_out(rejected))}[/]"
    return line


# --------------------------------------------------------------------------- baselines


def _label(event: BaselineProgress) -> str:
    return event.baseline.replace("_", "-")


def baseline_status(event: BaselineProgress) -> str:
    """What the baselines are doing, as the live bar's description (plain text).

    ``baselines 1/3: local-only bank-c (3/5)`` while site ``bank-c``, the third of five,
    trains alone; ``baselines 2/3: centralized training`` or ``… evaluating``;
    ``baselines: 3 done`` once the last one finished.
    """
    head = f"baselines {event.index}/{event.count}: {_label(event)}"
    if event.phase == "baseline":
        if event.finished and event.index == event.count:
            return f"baselines: {event.count} done"
        return f"{head} {'done' if event.finished else 'starting'}"
    if event.phase == "evaluate":
        return f"{head} evaluating"
    if event.site is None:
        return f"{head} training"
    number = event.done if event.finished else event.done + 1
    return f"{head} {event.site} ({number}/{event.total - 1})"


def format_baseline_event(event: BaselineProgress) -> str | None:
    """The line printed when a site's model or a whole baseline is finished; else ``None``.

    ``local-only bank-c (3/5) 12.4 s`` for a site's model trained alone, and
    ``baseline local-only (1/3) done in 62.0 s`` for a whole baseline (its evaluation
    included). Plain text: escape it before printing it as markup.
    """
    if not event.finished:
        return None
    if event.phase == "baseline":
        return (
            f"baseline {_label(event)} ({event.index}/{event.count}) done in {event.seconds:.1f} s"
        )
    if event.phase == "train" and event.site is not None:
        return (
            f"  {_label(event)} {event.site} ({event.done}/{event.total - 1}) {event.seconds:.1f} s"
        )
    return None


class BaselineDisplay:
    """Shows :func:`fedcore.baselines.run_baselines`' progress on a run's rich ``Progress``.

    Prints one line per site's model and per baseline as each finishes
    (:func:`format_baseline_event`). On a terminal it also adds a bar of its own under the
    rounds: its description says which baseline and site is training
    (:func:`baseline_status`), it counts the baseline's steps (each model, then the
    evaluation) and its timer runs from the start of each baseline. Elsewhere (a file, a
    pipe, CI) only the lines are printed.

    Example::

        display = BaselineDisplay(progress)
        run_baselines(graphs, scenario, epochs=10, on_progress=display.event)
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def event(self, event: BaselineProgress) -> None:
        """Show one event (the ``on_progress`` callback of ``run_baselines``)."""
        line = format_baseline_event(event)
        console = self._progress.console
        if line is not None:
            style = "dim" if event.phase == "train" else "green"
            console.print(f"[{style}]{escape(line)}[/]", highlight=False)
        if not console.is_terminal:
            return
        status = escape(baseline_status(event))  # the column reads the description as markup
        if self._task is None:
            self._task = self._progress.add_task(status, total=event.total, completed=event.done)
        elif event.phase == "baseline" and not event.finished:
            self._progress.reset(self._task, total=event.total, description=status)
        else:
            self._progress.update(self._task, completed=event.done, description=status)


# --------------------------------------------------------------------------- deployment services

_MARKS = {
    "info": "",
    "ok": "[green]✓[/] ",
    "notice": "[yellow]![/] ",
    "warning": "[yellow]warning:[/] ",
    "failed": "[red]✗[/] ",
}


def print_event(console: Console, event: Event) -> None:
    """Print a deployment service's progress line, marked by its level."""
    if event.level == "heading":
        command, _, rest = event.text.partition(" ")
        text = f"[bold]{escape(command)}[/] {escape(rest)}"
    else:
        text = _MARKS[event.level] + escape(event.text)
    console.print(text, highlight=False)


def print_deployment_error(console: Console, exc: DeploymentError) -> int:
    """Print why a deployment service stopped; return the command's exit code.

    Returns:
        2 for bad options, scenario or kit; 3 for an address in use; 130 for Ctrl-C or
        SIGTERM; 1 otherwise (a failed run, a process that died).
    """
    if isinstance(exc, DeploymentInterrupted):
        console.print(f"[yellow]interrupted[/] ({escape(str(exc))}); stopping")
        return EXIT_INTERRUPTED
    if isinstance(exc, RunFailedError):
        console.print(f"[red]✗[/] {escape(str(exc))}", highlight=False)
        return EXIT_FAILED
    if isinstance(exc, ServerExitedError):
        console.print(escape(str(exc)), highlight=False)
        return EXIT_FAILED
    console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
    if isinstance(exc, DeploymentConfigError):
        return EXIT_USAGE
    if isinstance(exc, AddressInUseError):
        return EXIT_ADDRESS_IN_USE
    return EXIT_FAILED
