"""``fed-coordinator``: the consortium's coordinator service (a Flower SuperLink)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import configure_logging
from fedcore.config import ConfigError, load_scenario  # noqa: E402
from fedcore.engines.deployment import (
    EXIT_USAGE,
    CoordinatorOptions,
    DeploymentError,
    parse_address,
    serve_coordinator,
)
from secure.modes import PLAINTEXT_WARNING  # noqa: E402

app = typer.Typer(
    name="fed-coordinator",
    help="Run the consortium's coordinator: a Flower SuperLink that schedules fedcore rounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """fed-coordinator: the consortium's coordinator service."""
    configure_logging(verbose)


@app.command()
def start(
    scenario: Annotated[
        Path, typer.Option("--scenario", help="Scenario YAML (sites, task, rounds, scheduler).")
    ],
    state: Annotated[
        Path,
        typer.Option(
            "--state", help="State directory: SuperLink database superlink.db, Flower home."
        ),
    ] = Path("fedcore-state"),
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT of the SuperLink (all its APIs).")
    ] = "127.0.0.1:9092",
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="No TLS. Required for now, and only accepted on a loopback address."
        ),
    ] = False,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Rounds to run (default: the scenario's).")
    ] = None,
    exit_when_done: Annotated[
        bool,
        typer.Option(
            "--exit-when-done",
            help="Exit when the run ends: code 0 if it completed, 1 if it failed. "
            "Default: keep serving until Ctrl-C.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Results directory (rounds.jsonl, federation.json, model). Default: STATE/run.",
        ),
    ] = None,
    log_dir: Annotated[
        Path | None, typer.Option("--log-dir", help="Where superlink.log goes. Default: OUT/logs.")
    ] = None,
    site_timeout: Annotated[
        float,
        typer.Option(
            "--site-timeout",
            min=0.0,
            help="Seconds to wait for every scenario site to connect; after that the run "
            "starts if at least scheduler.min_sites are connected, else fails.",
        ),
    ] = 600.0,
) -> None:
    """Start the SuperLink, wait for the sites, run the scenario, and report.

    Exit codes: 0 completed, 1 failed, 2 bad arguments or scenario, 3 address in
    use, 130 interrupted.
    """
    console = Console(soft_wrap=True)
    try:
        host, port = parse_address(listen)
    except DeploymentError as exc:
        console.print(f"[red]error:[/] --listen: {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        if load_scenario(scenario, check_files=False).privacy.mode == "plaintext":
            console.print(f"[bold yellow]warning:[/] {PLAINTEXT_WARNING}", highlight=False)
    except ConfigError:
        pass  # serve_coordinator reports it with the exit code for a bad scenario
    state_dir = state.expanduser().resolve()
    out_dir = out.expanduser().resolve() if out else state_dir / "run"
    options = CoordinatorOptions(
        scenario_path=scenario.expanduser().resolve(),
        state_dir=state_dir,
        out_dir=out_dir,
        log_dir=(log_dir.expanduser().resolve() if log_dir else out_dir / "logs"),
        host=host,
        port=port,
        insecure=insecure,
        rounds=rounds,
        exit_when_done=exit_when_done,
        site_timeout=site_timeout,
    )
    raise typer.Exit(serve_coordinator(options, console))


if __name__ == "__main__":
    app()
