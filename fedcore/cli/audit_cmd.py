"""``fedcore audit verify LOG``: check a coordinator's hash-chained audit log (docs/audit.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from coordinator.audit import Problem, Verification, read_log
from fedcore.cli.common import command_console

EXIT_BROKEN = 1
EXIT_UNREADABLE = 2

app = typer.Typer(
    name="audit",
    help="Check a coordinator's audit log (OUT/audit.jsonl).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _rounds(found: Verification) -> str:
    rounds = found.rounds
    return f"rounds {min(rounds)}..{max(rounds)}" if rounds else "no rounds"


@app.command("verify")
def verify(
    log: Annotated[
        Path, typer.Argument(help="The audit log (OUT/audit.jsonl).", show_default=False)
    ],
    last: Annotated[
        str | None,
        typer.Option(
            "--last",
            help="The last hash recorded elsewhere (an earlier verify's summary): also catches "
            "an edit of the last line or lines removed from the end.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Verify an audit log's hash chain. Exit 0 if intact, 1 if tampered with, 2 if unreadable."""
    err = command_console(stderr=True)
    try:
        found = read_log(log)
    except OSError as exc:
        err.print(
            f"[bold red]cannot read the audit log[/] {escape(str(log))}: "
            f"{escape(exc.strerror or str(exc))}",
            highlight=False,
        )
        raise typer.Exit(EXIT_UNREADABLE) from None
    problems = list(found.problems)
    if last is not None and last.strip().lower() != found.last_hash:
        problems.append(
            Problem(
                len(found.entries),
                f"the log ends with hash {found.last_hash}, not the expected {last.strip()}: "
                "its last line was edited, or lines were removed from or added at its end",
            )
        )
    if problems:
        err.print(
            f"[bold red]audit log BROKEN[/] {escape(str(log))}: {len(problems)} problem(s)",
            highlight=False,
        )
        for p in problems:
            err.print(f"  line {p.line}: {escape(p.message)}", highlight=False)
        raise typer.Exit(EXIT_BROKEN)
    command_console().print(
        f"[green]audit log OK[/]: {len(found.entries)} entries, {_rounds(found)}, "
        f"last hash {found.last_hash}",
        highlight=False,
    )
