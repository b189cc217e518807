"""``fedcore validate FILE``: check a scenario file and say what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import load_checked_scenario
from fedcore.config import ConfigError

EXIT_CONFIG = 2


def validate(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario YAML file to check.", show_default=False)
    ],
) -> None:
    """Validate a scenario file: syntax, fields, types, site ids, data files. Exit 2 if invalid."""
    console = Console(stderr=True)
    try:
        s = load_checked_scenario(scenario)
    except ConfigError as exc:
        console.print(
            f"[bold red]invalid scenario[/] {escape(str(exc.path))}\n{escape(exc.message)}",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG) from None
    Console().print(
        f"[green]ok[/] {escape(str(scenario))}: scenario {escape(repr(s.name))}, {len(s.sites)} sites "
        f"({', '.join(x.id for x in s.sites)}), {s.rounds} rounds, privacy {s.privacy.mode}, "
        f"engine {s.engine.name}",
        highlight=False,
    )
    from secure.modes import PROMISES

    promise = PROMISES[s.privacy.mode] + (f"; {PROMISES['dp']}" if s.privacy.dp else "")
    Console().print(f"  privacy promise: {promise}", highlight=False)
