"""``fed-client``: a site's service that joins the consortium (a Flower SuperNode)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import configure_logging
from fedcore.engines.deployment import (
    EXIT_USAGE,
    DeploymentError,
    SiteOptions,
    parse_address,
    serve_site,
)

app = typer.Typer(
    name="fed-client",
    help="Run a site's fedcore client: it trains on local data, which never leaves the site.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """fed-client: a site's fedcore service."""
    configure_logging(verbose)


@app.command()
def start(
    site: Annotated[Path, typer.Option("--site", help="Site config YAML (id, data, device).")],
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="HOST:PORT of the coordinator (its --listen).")
    ],
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="No TLS. Required for now, and only accepted on a loopback address."
        ),
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="Directory for the SuperNode's Flower home and logs. "
            "Default: the site config's state_dir, else ./fedcore-site-ID.",
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option("--log-file", help="SuperNode log file. Default: STATE/logs/supernode.log."),
    ] = None,
) -> None:
    """Join the coordinator and serve training requests until Ctrl-C or SIGTERM.

    Only the path of the site config is handed to the ClientApp, on this machine;
    the site's data never leaves it. Exit codes: 1 the SuperNode died, 2 bad
    arguments or site file, 130 interrupted.
    """
    console = Console(soft_wrap=True)
    try:
        host, port = parse_address(coordinator)
    except DeploymentError as exc:
        console.print(f"[red]error:[/] --coordinator: {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    options = SiteOptions(
        site_path=site.expanduser().resolve(),
        host=host,
        port=port,
        insecure=insecure,
        state_dir=state.expanduser().resolve() if state else None,
        log_file=log_file.expanduser().resolve() if log_file else None,
    )
    raise typer.Exit(serve_site(options, console))


if __name__ == "__main__":
    app()
