"""``fedcore run SCENARIO``: simulate a consortium, show progress per round, print and save a summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from coordinator.state import StateError
from fedcore.cli.common import configure_logging, load_checked_scenario
from fedcore.cli.progress import fmt as _fmt
from fedcore.cli.progress import format_round
from fedcore.cli.runner import RunFailed, RunPlan, default_out_dir, run_scenario
from fedcore.config import ConfigError
from fedcore.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED
from fedcore.exit_codes import EXIT_USAGE as EXIT_CONFIG
from fedcore.records import RoundRecord
from fedcore.storage import LockHeld
from secure.modes import PLAINTEXT_WARNING


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


def summary_tables(summary: dict[str, Any]) -> list[Table]:
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
        title, name, unit, positives = (
            "test metrics (each site's latest transactions)",
            "GNN",
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
    tables = [t, s]
    exports = summary.get("exports") or {}
    if exports:
        e = Table(title="exported model per site (checked on the site's test data)")
        for col in ("site", "path", "provider", "FP32 PR-AUC", "INT8 PR-AUC", "KB", "ms"):
            e.add_column(col, justify="left" if col in ("site", "path", "provider") else "right")
        for sid, m in exports.items():
            if "error" in m:
                failed = Text(f"failed: {m['error']}", style="red")
                e.add_row(_plain(sid), failed, "", "", "", "", "")
                continue
            size = m.get("size_bytes")
            e.add_row(
                _plain(sid),
                _plain(str(m.get("path_taken")) + (" (INT8 refused)" if m.get("refused") else "")),
                _plain(m.get("provider")),
                _fmt(m.get("fp32_metric")),
                _fmt(m.get("int8_metric")),
                f"{size / 1024:.0f}" if isinstance(size, int | float) else "-",
                _fmt(m.get("latency_ms"), 1),
            )
        tables.append(e)
    return tables


def run(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario YAML (see docs/scenario.md).", show_default=False)
    ],
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds", "-r", min=0, help="Override the scenario's number of rounds (0: keep)."
        ),
    ] = 0,
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Train a federation for a scenario, compare it with local-only and centralized models, write OUT/summary.json."""
    console = Console()
    err = Console(stderr=True)
    configure_logging(verbose, verbose_level=logging.INFO)
    try:
        sc = load_checked_scenario(scenario)
    except ConfigError as exc:
        err.print(
            f"[bold red]invalid scenario[/] {escape(str(exc.path))}\n{escape(exc.message)}",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG) from None
    eng = engine or sc.engine.name
    if eng not in ("inprocess", "deployment"):
        err.print(
            f"[bold red]--engine[/] must be inprocess or deployment, got {escape(repr(eng))}",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG)
    n_rounds = rounds or sc.rounds
    out_dir = out or default_out_dir(sc)
    plan = RunPlan(scenario, sc, out_dir, eng, n_rounds)
    if sc.privacy.mode == "plaintext":
        err.print(
            Panel(
                PLAINTEXT_WARNING,
                title="[bold yellow]warning",
                border_style="yellow",
            )
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
    task = progress.add_task("rounds", total=n_rounds)

    def on_round(rec: RoundRecord) -> None:
        progress.console.print(format_round(rec), highlight=False)
        progress.update(task, completed=rec["round"])

    def on_stage(text: str) -> None:
        progress.update(task, description=escape(text))  # the column reads it as markup

    try:
        with progress:
            summary = run_scenario(plan, on_round=on_round, on_stage=on_stage)
    except RunFailed as exc:
        err.print(f"[bold red]federation failed:[/] {escape(str(exc))}", highlight=False)
        err.print(
            escape(f"completed rounds, logs and checkpoints are kept in {out_dir}"),
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILED) from None
    except StateError as exc:  # e.g. --out holds another scenario's run: nothing was touched
        err.print(
            f"[bold red]cannot use the output directory:[/] {escape(str(exc))}", highlight=False
        )
        raise typer.Exit(EXIT_CONFIG) from None
    except LockHeld as exc:  # another run writes there: refused before anything was written
        err.print(
            f"[bold red]cannot use the output directory:[/] {escape(str(exc))}", highlight=False
        )
        raise typer.Exit(EXIT_CONFIG) from None
    except KeyboardInterrupt:
        err.print(
            f"[yellow]interrupted[/]; {escape(f'completed rounds are kept in {out_dir}')}",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for table in summary_tables(summary):
        console.print(table)
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
