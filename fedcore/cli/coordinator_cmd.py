"""``fed-coordinator``: the consortium's coordinator service (a Flower SuperLink)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import configure_logging
from fedcore.cli.progress import format_round, print_deployment_error, print_event
from fedcore.cli.version import VERSION_OPTION
from fedcore.config import ConfigError, load_scenario
from fedcore.engines.deployment import (
    CoordinatorOptions,
    CoordinatorSecurity,
    DeploymentError,
    parse_address,
    serve_coordinator,
)
from fedcore.exit_codes import EXIT_OK, EXIT_USAGE
from secure import kitfiles
from secure.kit import Kit, KitError, load_kit
from secure.modes import PLAINTEXT_WARNING

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
    version: Annotated[bool, VERSION_OPTION] = False,
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
            "--state",
            help="State directory: Flower home and the submitted app (the SuperLink's own "
            "state is in memory; rounds are kept under --out).",
        ),
    ] = Path("fedcore-state"),
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            help="HOST:PORT the sites connect to: the SuperLink's Fleet API only. Its Control "
            "API (submit runs, register nodes; no authentication of its own) is served on "
            "127.0.0.1 only, see --control-port.",
        ),
    ] = "127.0.0.1:9092",
    control_port: Annotated[
        int | None,
        typer.Option(
            "--control-port",
            min=1,
            max=65535,
            help="Port of the SuperLink's Control API on 127.0.0.1 (this machine only; "
            "`FLWR_HOME=STATE/flwr-home flwr ls fedcore` finds it). Default: a free port.",
        ),
    ] = None,
    kit: Annotated[
        Path | None,
        typer.Option(
            "--kit",
            help="The coordinator kit written by `fedcore provision` (KITS/coordinator): the "
            "consortium CA, the server certificate and key for TLS, and the node public keys "
            "of the member sites, registered with the SuperLink before any site connects. "
            "Required unless --insecure.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="No TLS and no node authentication, for a test on one machine: accepted only "
            "with a loopback --listen address. With --kit, the kit still reaches the ServerApp.",
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
    metrics_listen: Annotated[
        str,
        typer.Option(
            "--metrics-listen",
            help="HOST:PORT of the operator endpoint: /healthz, /readyz (200 once the run is "
            "submitted) and /metrics (Prometheus). Loopback by default; another host is "
            "allowed, but the endpoint has no TLS and no authentication. 'off' serves none.",
        ),
    ] = "127.0.0.1:9093",
) -> None:
    """Start the SuperLink, wait for the sites, run the scenario, and report.

    Exit codes: 0 completed, 1 failed, 2 bad arguments, scenario or kit (none given
    without --insecure included), 3 address in use, 130 interrupted.
    """
    console = Console(soft_wrap=True)
    try:
        host, port = parse_address(listen)
    except DeploymentError as exc:
        console.print(f"[red]error:[/] --listen: {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    metrics_address: tuple[str, int] | None = None
    if metrics_listen.strip().lower() not in ("", "off"):
        try:
            metrics_address = parse_address(metrics_listen)
        except DeploymentError as exc:
            console.print(
                f"[red]error:[/] --metrics-listen: {escape(str(exc))} (or 'off')", highlight=False
            )
            raise typer.Exit(EXIT_USAGE) from None
    try:
        if load_scenario(scenario, check_files=False).privacy.mode == "plaintext":
            console.print(f"[bold yellow]warning:[/] {PLAINTEXT_WARNING}", highlight=False)
    except ConfigError:
        pass  # serve_coordinator reports it with the exit code for a bad scenario
    kit_dir = kit.expanduser().resolve() if kit is not None else None
    security: CoordinatorSecurity | None = None
    if kit_dir is not None:
        try:
            loaded = load_kit(kit_dir, role="coordinator")
        except KitError as exc:
            console.print(f"[red]error:[/] --kit: {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        if insecure:
            console.print(
                "[bold yellow]warning:[/] --insecure: no TLS and no node authentication; the "
                "kit only reaches the ServerApp",
                highlight=False,
            )
        else:
            security = coordinator_security(loaded)
    state_dir = state.expanduser().resolve()
    out_dir = out.expanduser().resolve() if out else state_dir / "run"
    options = CoordinatorOptions(
        scenario_path=scenario.expanduser().resolve(),
        state_dir=state_dir,
        out_dir=out_dir,
        log_dir=(log_dir.expanduser().resolve() if log_dir else out_dir / "logs"),
        host=host,
        port=port,
        security=security,
        insecure=insecure,
        kit_dir=kit_dir,
        rounds=rounds,
        exit_when_done=exit_when_done,
        site_timeout=site_timeout,
        metrics_listen=metrics_address,
        control_port=control_port,
    )
    try:
        serve_coordinator(
            options,
            on_event=lambda event: print_event(console, event),
            on_round=lambda record: console.print(f"  {format_round(record)}", highlight=False),
        )
    except DeploymentError as exc:
        raise typer.Exit(print_deployment_error(console, exc)) from None
    raise typer.Exit(EXIT_OK)


def coordinator_security(kit: Kit) -> CoordinatorSecurity:
    """The SuperLink's TLS files and the members' node keys, from a loaded coordinator kit."""
    nodes = {site: kit.file(f"{kitfiles.NODES_DIR}/{site}.pub") for site in kit.manifest.sites}
    return CoordinatorSecurity(
        ca_cert=kit.ca_cert,
        server_cert=kit.cert,
        server_key=kit.key,
        node_public_keys=nodes,
    )


if __name__ == "__main__":
    app()
