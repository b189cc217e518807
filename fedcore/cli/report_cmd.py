"""``fedcore report OUT``: (re)write a finished run's self-contained ``OUT/report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedcore.cli.common import command_console, configure_logging
from fedcore.exit_codes import EXIT_FAILED, EXIT_USAGE
from fedcore.report import ReportError, write_report


def report(
    out: Annotated[
        Path,
        typer.Argument(help="A run directory (the --out of `fedcore run`).", show_default=False),
    ],
    rescore: Annotated[
        bool,
        typer.Option(
            "--rescore",
            help="Score the final model again on every site's test split (simulations keep "
            "both) and draw its PR curve when the run recorded none; writes OUT/curves.json.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Write OUT/report.html: PR curves, PR-AUC per round, sites, privacy, schedule, exports."""
    err = command_console(stderr=True)
    configure_logging(verbose)
    try:
        if rescore:
            from fedcore.report.rescore import rescore as rescore_run

            rescore_run(out)
        path = write_report(out)
    except ReportError as exc:
        err.print(
            f"[bold red]cannot report on {escape(str(out))}:[/] {escape(str(exc))}", highlight=False
        )
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as exc:
        err.print(f"[bold red]cannot write the report:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    command_console().print(escape(f"report: {path}"), highlight=False)
