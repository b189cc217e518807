"""``fedcore run SCENARIO``: simulate a consortium, show progress per round, print and save a summary."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from coordinator.state import StateError
from fedcore.cli.common import command_console, configure_logging, load_checked_scenario
from fedcore.cli.progress import BaselineDisplay, format_round
from fedcore.cli.progress import fmt as _fmt
from fedcore.cli.runner import (
    PriorRun,
    RunFailed,
    RunPlan,
    default_out_dir,
    inspect_out,
    run_scenario,
)
from fedcore.config import ConfigError
from fedcore.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED
from fedcore.exit_codes import EXIT_USAGE as EXIT_CONFIG
from fedcore.records import RoundRecord
from fedcore.storage import LockHeld
from secure.modes import PLAINTEXT_WARNING, plaintext_warning_shown


def _plain(x: Any) -> Text:
    """A table cell shown as written: text from a site or a file is never read as markup."""
    return Text(str(x))


def _count(x: Any) -> str:
    return "—" if x is None else str(int(x))


def _privacy_line(sc: Any) -> str:
    p = sc.privacy
    text = str(p.mode)
    if p.mode == "ckks":
        text += " (packed)" if p.ckks.packing else ""
    if p.dp is not None:
        text += f" + DP (noise {p.dp.noise_multiplier:g}, clip {p.dp.clip_norm:g})"
    return text


def _reasons(reasons: Any) -> str:
    return "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)


class LeftOut:
    """Shows why a site was left out of a round once; later rounds with the same reason say so briefly."""

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}

    def first_time(self, rec: RoundRecord | Mapping[str, Any]) -> Mapping[str, Any]:
        """The round record to print: reasons already shown for a site become "as before"."""
        rejected = rec.get("rejected")
        if not isinstance(rejected, dict) or not rejected:
            return rec
        shown: dict[str, list[str]] = {}
        for site, reasons in rejected.items():
            text = _reasons(reasons)
            shown[site] = ["same reason as before"] if self._shown.get(site) == text else reasons
            self._shown[site] = text
        return {**rec, "rejected": shown}


class RepeatedWarnings(logging.Filter):
    """Lets a warning through once: later ones ending in the same text (the same reason,
    e.g. a site's unreadable data, logged by the site, the engine and the coordinator in
    every round) are counted instead of shown. Off with ``--verbose``.
    """

    TAIL = 80

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if record.levelno != logging.WARNING:
            return True
        message = record.getMessage()
        if len(message) < self.TAIL:
            return True
        tail = message[-self.TAIL :]
        if tail in self._seen:
            self.hidden += 1
            return False
        self._seen.add(tail)
        return True


def _always_left_out(summary: Mapping[str, Any]) -> dict[str, str]:
    """The sites left out of every round, with the last round's reason."""
    rounds = [r for r in summary.get("rounds") or [] if isinstance(r, Mapping)]
    out: dict[str, str] = {}
    for site in summary.get("sites") or []:
        reasons = [(r.get("rejected") or {}).get(site) for r in rounds]
        if rounds and all(reasons):
            out[str(site)] = _reasons(reasons[-1])
    return out


def left_out_lines(summary: Mapping[str, Any]) -> list[Text]:
    """One line per site left out of every round (or of the final evaluation), with its reason."""
    final = summary.get("final") or {}
    without = dict(final.get("sites_without_data") or {})
    always = _always_left_out(summary)
    lines: list[Text] = []
    for site in summary.get("sites") or []:
        if site in always:
            why = always[site]
            lines.append(Text(f"site {site} left out of every round: {why}", style="yellow"))
        elif site in without:
            why = str(without[site])
            lines.append(
                Text(f"site {site} left out of the final evaluation: {why}", style="yellow")
            )
    return lines


def resume_line(prior: PriorRun, rounds: int) -> str:
    """What a resumed run says first: the round it resumes after, of how many, and from where."""
    line = f"resuming after round {prior.rounds_done} of {rounds} ({prior.state})"
    if prior.rounds_done >= rounds:
        line += ": the rounds are done; finishing the evaluation and baselines"
    return line


def _out_dir_refused(err: Console, exc: Exception) -> NoReturn:
    err.print(f"[bold red]cannot use the output directory:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(EXIT_CONFIG) from None


def _already_complete(console: Console, out_dir: Path) -> None:
    path = out_dir / "summary.json"
    console.print(
        escape(
            f"{out_dir}: already complete: nothing to do (use --force to run it again from "
            f"round 0); summary: {path}"
        ),
        highlight=False,
    )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        tables = summary_tables(summary)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # the line above says where it is
    for table in tables:
        console.print(table)


def summary_tables(summary: dict[str, Any]) -> list[Table | Text]:
    """The comparison printed at the end of a run: models, then sites."""
    imaging = summary.get("task") == "nodule-net"
    if imaging:
        title, name, unit, positives = (
            "test metrics (each hospital's held-out patients)",
            "model",
            "test patches",
            "nodules",
        )
        cols = {
            "ROC-AUC": "roc_auc",
            "sensitivity": "sensitivity",
            "specificity": "specificity",
            "PR-AUC": "pr_auc",
        }
    else:
        model = str(summary.get("task", "fraud-gnn"))
        title, name, unit, positives = (
            "test metrics (each site's latest transactions)",
            "GNN" if model == "fraud-gnn" else model,
            "test tx",
            "frauds",
        )
        cols = {"PR-AUC": "pr_auc", "ROC-AUC": "roc_auc", "F1": "f1", "FPR": "fpr"}
    point = summary["final"].get("operating_point", "fixed")
    if point == "balanced":
        title += "; flags at each site's balanced threshold (chosen on its training patients)"
    t = Table(title=title, title_justify="left")
    for col in ("model", *cols):
        t.add_column(col, justify="left" if col == "model" else "right")

    def row(label: str, m: dict[str, Any] | None) -> None:
        if m:
            t.add_row(label, *(_fmt(m.get(k)) for k in cols.values()))

    fin = summary["final"]
    b = summary["baselines"]
    lo = b.get("local_only") or {}
    row(f"federated {name}, pooled", fin)
    row(f"federated {name}, site mean", fin.get("mean_over_sites"))
    row(f"local-only {name}, site mean", lo.get("mean"))
    row(f"local-only {name}, each on all sites, mean", (lo.get("across_sites") or {}).get("mean"))
    row(f"centralized {name}, pooled", b.get("centralized"))
    row("non-graph model, pooled", b.get("non_graph"))

    key = "roc_auc" if imaging else "pr_auc"
    s = Table(title=f"{'ROC-AUC' if imaging else 'PR-AUC'} per site", title_justify="left")
    for col in ("site", unit, positives, "local-only", "federated"):
        s.add_column(col, justify="left" if col == "site" else "right")
    fed_sites = fin.get("per_site") or {}
    for sid, fm in fed_sites.items():
        lm = (lo.get("per_site") or {}).get(sid, {})
        s.add_row(
            _plain(sid),
            _count(fm.get("num_test")),
            _count(fm.get("num_test_pos")),
            _fmt(lm.get(key)),
            _fmt(fm.get(key)),
        )
    tables: list[Table | Text] = [t, s]
    exports = summary.get("exports") or {}
    if exports:
        e = Table(title="exported model per site (checked on the site's test data)")
        for col in ("site", "path", "provider", "FP32 PR-AUC", "INT8 PR-AUC", "KB", "ms"):
            e.add_column(col, justify="left" if col in ("site", "path", "provider") else "right")
        failures: list[Table | Text] = []
        always = _always_left_out(summary)
        for sid, m in exports.items():
            if "error" in m:  # its own line under the table: the columns keep their meaning
                e.add_row(_plain(sid), "—", "—", "—", "—", "—", "—")
                if sid not in always:  # else its own line says why, once
                    failures.append(Text(f"export at {sid} failed: {m['error']}", style="red"))
                continue
            size = m.get("size_bytes")
            e.add_row(
                _plain(sid),
                _plain(str(m.get("path_taken")) + (" (INT8 refused)" if m.get("refused") else "")),
                _plain(str(m.get("provider") or "-").removesuffix("ExecutionProvider")),
                _fmt(m.get("fp32_metric")),
                _fmt(m.get("int8_metric")),
                f"{size / 1024:.0f}" if isinstance(size, int | float) else "-",
                _fmt(m.get("latency_ms"), 1),
            )
        tables.append(e)
        tables.extend(failures)
    return tables


def run(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario YAML (see docs/scenario.md).", show_default=False)
    ],
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds",
            "-r",
            min=1,
            help="Number of rounds, at least 1 (default: the scenario's rounds).",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            "-e",
            help="inprocess (default) or deployment (real Flower processes on 127.0.0.1).",
        ),
    ] = "",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default: runs/NAME-TIMESTAMP)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Run again from round 0 when OUT holds a run of this scenario (its stored "
            "rounds and round logs are removed; another scenario's run is still refused).",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Train a federation for a scenario, compare it with local-only and centralized models, write OUT/summary.json."""
    console = command_console()
    err = command_console(stderr=True)
    configure_logging(verbose, verbose_level=logging.INFO)
    try:
        sc = load_checked_scenario(scenario)
    except ConfigError as exc:
        err.print(
            f"[bold red]invalid scenario[/] {escape(str(exc.path))}\n{escape(exc.message)}",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG) from None
    from fedcore.cli.validate_cmd import scenario_data_lines

    bad_data = scenario_data_lines(sc)  # once, before training: never once per round
    if bad_data:
        err.print(
            f"[bold red]invalid site data[/] {escape(str(scenario))}\n"
            + escape("\n".join(bad_data))
            + "\nnothing was run: fix the data, or remove the site from the scenario's sites",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG)
    eng = engine or sc.engine.name
    if eng not in ("inprocess", "deployment"):
        err.print(
            f"[bold red]--engine[/] must be inprocess or deployment, got {escape(repr(eng))}",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG)
    n_rounds = rounds if rounds is not None else sc.rounds
    out_dir = out or default_out_dir(sc)
    if out is None and out_dir.resolve().parent != Path("runs").resolve():
        err.print(  # the name's pattern keeps it there; this states the promise
            escape(f"the default run directory {out_dir} would lie outside runs/; use --out"),
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG)
    plan = RunPlan(scenario, sc, out_dir, eng, n_rounds, fresh=force)
    try:  # before anything is written: another scenario's run in OUT is refused here
        prior = inspect_out(plan)
    except StateError as exc:
        _out_dir_refused(err, exc)
    if prior is not None and prior.complete and not force:
        _already_complete(console, out_dir)
        return
    if sc.privacy.mode == "plaintext":
        err.print(
            Panel(
                PLAINTEXT_WARNING,
                title="[bold yellow]warning",
                border_style="yellow",
            ),
            soft_wrap=False,  # the box wraps its text (the console writes other lines whole)
        )
    console.print(
        f"[bold]{escape(sc.name)}[/]: "
        + escape(
            f"{len(sc.sites)} sites, {n_rounds} rounds, engine {eng}, "
            f"privacy {_privacy_line(sc)}, out {out_dir}"
        ),
        highlight=False,
    )

    progress = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    done = 0
    if prior is not None and force:
        console.print(
            escape(f"--force: starting afresh from round 0 (the stored rounds in {out_dir} go)"),
            highlight=False,
        )
    elif prior is not None and prior.rounds_done:
        done = prior.rounds_done
        console.print(escape(resume_line(prior, n_rounds)), highlight=False)
    task = progress.add_task("rounds", total=n_rounds, completed=min(done, n_rounds))
    baselines_view = BaselineDisplay(progress)
    left_out = LeftOut()

    def on_round(rec: RoundRecord) -> None:
        nonlocal done
        progress.console.print(format_round(left_out.first_time(rec)), highlight=False)
        progress.update(task, completed=rec["round"])
        done = max(done, int(rec["round"]))

    def on_stage(text: str) -> None:
        progress.update(task, description=escape(text))  # the column reads it as markup

    repeats = RepeatedWarnings()
    handlers = [] if verbose else list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(repeats)
    try:
        with progress, plaintext_warning_shown():
            summary = run_scenario(
                plan, on_round=on_round, on_stage=on_stage, on_baseline=baselines_view.event
            )
    except RunFailed as exc:
        err.print(f"[bold red]federation failed:[/] {escape(str(exc))}", highlight=False)
        err.print(
            escape(f"completed rounds, logs and checkpoints are kept in {out_dir}"),
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILED) from None
    except (StateError, LockHeld) as exc:  # another scenario's run, or another run writes there
        _out_dir_refused(err, exc)
    except KeyboardInterrupt:
        err.print(
            f"[yellow]interrupted[/] after round {done} of {n_rounds}; "
            + escape(
                f"completed rounds are kept in {out_dir} ({out_dir / 'federation.json'} says "
                "status interrupted); run the same command again to resume"
            ),
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        for handler in handlers:
            handler.removeFilter(repeats)
    from fedcore.report import try_write_report

    report_path = try_write_report(out_dir)  # a failure logs why; the run's results stand
    if repeats.hidden:
        err.print(
            f"{repeats.hidden} repeated warning(s) not shown (--verbose shows them)",
            highlight=False,
        )
    for table in summary_tables(summary):
        console.print(table)
    for line in left_out_lines(summary):
        console.print(line, highlight=False)
    priv = summary.get("privacy", {})
    if priv.get("epsilon") is not None:
        console.print(
            f"differential privacy: ({priv['epsilon']:.3f}, {priv['delta']:g})-DP after "
            f"{priv.get('rounds')} rounds",
            highlight=False,
        )
    holder = " (each site's own copy)" if summary.get("model_holder") == "sites" else ""
    console.print(
        escape(
            f"summary: {out_dir / 'summary.json'}  model: {summary['model']}{holder}  "
            f"wall {summary['wall_seconds']:.1f}s"
        ),
        highlight=False,
    )
    if report_path is not None:
        console.print(escape(f"report: {report_path}"), highlight=False)
