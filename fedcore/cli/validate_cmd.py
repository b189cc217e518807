"""``fedcore validate FILE``: check a scenario or site file, and the data it names, and say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import command_console, load_checked_scenario
from fedcore.config import (
    ConfigError,
    DataSource,
    Scenario,
    TaskSpec,
    is_site_file,
    load_site_config,
    read_yaml,
)

EXIT_CONFIG = 2


def validate(
    scenario: Annotated[
        Path,
        typer.Argument(
            help="Scenario YAML file to check, or a site file (what fed-client start --site reads).",
            show_default=False,
        ),
    ],
) -> None:
    """Validate a scenario or site file: syntax, fields, types, site ids, data files and their contents. Exit 2 if invalid."""
    console = command_console(stderr=True)
    try:
        site_file = is_site_file(read_yaml(scenario))
    except ConfigError as exc:
        _fail(console, "invalid file", exc)
    if site_file:
        _validate_site_file(scenario, console)
    else:
        _validate_scenario(scenario, console)


def _fail(console: Console, what: str, exc: ConfigError, note: str = "") -> NoReturn:
    console.print(
        f"[bold red]{what}[/] {escape(str(exc.path))}\n{escape(note + exc.message)}",
        highlight=False,
    )
    raise typer.Exit(EXIT_CONFIG)


def data_problem_lines(
    sites: list[tuple[str, DataSource, list[str] | None]],
    test_fraction: float | None = None,
    task: TaskSpec | None = None,
) -> list[str]:
    """Read every site's data files as a run would: a heading and each bad site's problems.

    ``task`` (a scenario's) names the roles a table must provide; ``None``: every mapped one.

    Returns:
        ``[]`` when every site's data can be read; else the lines to print (each problem
        names its file, line and column).
    """
    from fedcore.data.checks import site_data_problems

    bad = [
        (label, problems)
        for label, src, feats in sites
        if (problems := site_data_problems(src, feats, test_fraction, task))
    ]
    if not bad:
        return []
    lines = [f"{len(bad)} of {len(sites)} site(s) have data a run cannot use:"]
    for label, problems in bad:
        lines.append(f"  {label}:")
        lines.extend(f"    {p}" for p in problems)
    return lines


def scenario_data_lines(s: Scenario) -> list[str]:
    """:func:`data_problem_lines` for every site of scenario ``s`` (its task's features and split)."""
    return data_problem_lines(
        [(f"site {x.id!r} (data kind {x.data.kind})", x.data, s.task.features) for x in s.sites],
        s.task.test_fraction,
        s.task,
    )


def _data_problems(console: Console, path: Path, lines: list[str]) -> None:
    """Print the data problems and exit 2, if there are any."""
    if not lines:
        return
    console.print(
        f"[bold red]invalid site data[/] {escape(str(path))}\n" + escape("\n".join(lines)),
        highlight=False,
    )
    raise typer.Exit(EXIT_CONFIG)


def _validate_scenario(path: Path, console: Console) -> None:
    try:
        s = load_checked_scenario(path)
    except ConfigError as exc:
        _fail(console, "invalid scenario", exc)
    _data_problems(console, path, scenario_data_lines(s))
    command_console().print(
        f"[green]ok[/] {escape(str(path))}: scenario {escape(repr(s.name))}, {len(s.sites)} sites "
        f"({', '.join(x.id for x in s.sites)}), {s.rounds} rounds, privacy {s.privacy.mode}, "
        f"engine {s.engine.name}",
        highlight=False,
    )
    from secure.modes import PROMISES

    promise = PROMISES[s.privacy.mode] + (f"; {PROMISES['dp']}" if s.privacy.dp else "")
    command_console().print(f"  privacy promise: {promise}", highlight=False)


def _validate_site_file(path: Path, console: Console) -> None:
    from fedcore.site_paths import site_state_dir

    try:
        cfg = load_site_config(path)
    except ConfigError as exc:
        note = "this is a site file (what `fed-client start --site` reads), checked as one; "
        _fail(console, "invalid site file", exc, note)
    label = f"site {cfg.id!r} (data kind {cfg.data.kind})"
    _data_problems(console, path, data_problem_lines([(label, cfg.data, None)]))
    command_console().print(
        f"[green]ok[/] {escape(str(path))}: site file of {escape(repr(cfg.id))} ({cfg.kind}), "
        f"data {cfg.data.kind}, device {escape(cfg.device)}, state directory "
        f"{escape(str(site_state_dir(cfg)))}",
        highlight=False,
    )
