"""``fed-client``: a site's service that joins the consortium (a Flower SuperNode)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import configure_logging
from fedcore.cli.deid_cmd import deid
from fedcore.cli.predict_cmd import predict
from fedcore.cli.progress import print_deployment_error, print_event
from fedcore.cli.serve_cmd import serve
from fedcore.cli.version import VERSION_OPTION
from fedcore.config import ConfigError, load_site_config
from fedcore.engines.deployment import (
    DeploymentError,
    SiteOptions,
    SiteSecurity,
    parse_address,
    serve_site,
)
from fedcore.exit_codes import EXIT_USAGE
from secure.kit import Kit, KitError, load_kit

app = typer.Typer(
    name="fed-client",
    help="Run a site's fedcore client: it trains on local data, which never leaves the site.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.command("predict")(predict)
app.command("deid")(deid)
app.command("serve")(serve)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    version: Annotated[bool, VERSION_OPTION] = False,
) -> None:
    """fed-client: a site's fedcore service."""
    configure_logging(verbose)


@app.command()
def start(
    site: Annotated[Path, typer.Option("--site", help="Site config YAML (id, data, device).")],
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="HOST:PORT of the coordinator (its --listen).")
    ],
    kit: Annotated[
        Path | None,
        typer.Option(
            "--kit",
            help="This site's kit written by `fedcore provision` (KITS/SITE-ID): the consortium "
            "CA, the only issuer trusted for the coordinator's certificate, and the site's "
            "node key, which the coordinator must have registered. Required unless --insecure.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="No TLS and no node key, for a test on one machine: accepted only with a "
            "loopback --coordinator address. With --kit, the kit still reaches the ClientApp.",
        ),
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="The site's state directory: the SuperNode's Flower home and logs, and the "
            "ClientApp's model copy and exports (node config state-dir). "
            "Default: the site config's state_dir, else ./fedcore-site-ID.",
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option("--log-file", help="SuperNode log file. Default: STATE/logs/supernode.log."),
    ] = None,
    refused_retry_for: Annotated[
        float,
        typer.Option(
            "--refused-retry-for",
            min=0.0,
            help="Seconds to keep trying again (every 5 s) while the coordinator refuses this "
            "site's node key: it may still be registering the keys, or an earlier connection "
            "of this site has not timed out yet. 0 gives up at once (exit code 1).",
        ),
    ] = 90.0,
) -> None:
    """Join the coordinator and serve training requests until Ctrl-C or SIGTERM.

    Only the paths of the site config and the kit are handed to the ClientApp, on
    this machine; the site's data never leaves it. Exit codes: 1 the SuperNode died
    or the coordinator refused it (the message says why), 2 bad arguments, site
    file or kit (another site's kit, or none without --insecure), 130 interrupted.
    """
    console = Console(soft_wrap=True)
    try:
        host, port = parse_address(coordinator)
    except DeploymentError as exc:
        console.print(f"[red]error:[/] --coordinator: {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    site_path = site.expanduser().resolve()
    kit_dir = kit.expanduser().resolve() if kit is not None else None
    security: SiteSecurity | None = None
    if kit_dir is not None:
        try:
            loaded = load_kit(kit_dir, role="site")
        except KitError as exc:
            console.print(f"[red]error:[/] --kit: {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        _check_kit_site(loaded, site_path, console)
        if insecure:
            console.print(
                "[bold yellow]warning:[/] --insecure: no TLS and no node key; the kit only "
                "reaches the ClientApp",
                highlight=False,
            )
        else:
            security = site_security(loaded)
    options = SiteOptions(
        site_path=site_path,
        host=host,
        port=port,
        security=security,
        insecure=insecure,
        kit_dir=kit_dir,
        state_dir=state.expanduser().resolve() if state else None,
        log_file=log_file.expanduser().resolve() if log_file else None,
        refused_retry_for=refused_retry_for,
    )
    try:
        serve_site(options, on_event=lambda event: print_event(console, event))
    except DeploymentError as exc:
        raise typer.Exit(print_deployment_error(console, exc)) from None


def site_security(kit: Kit) -> SiteSecurity:
    """The CA to trust and the node key to sign with, from a loaded site kit."""
    return SiteSecurity(
        ca_cert=kit.ca_cert,
        node_private_key=kit.node_key,
        node_public_key=kit.node_pub,
        site_id=kit.site_id,
    )


def _check_kit_site(kit: Kit, site_path: Path, console: Console) -> None:
    """Exit 2 if the kit was provisioned for another site than the site config's."""
    try:
        site_id = load_site_config(site_path).id
    except ConfigError:
        return  # serve_site reports the bad site file, with its exit code
    if kit.site_id != site_id:
        console.print(
            "[red]error:[/] --kit: "
            + escape(
                f"{kit.path} is the kit of site {kit.site_id!r}, but {site_path} is site "
                f"{site_id!r}: expected this site's own kit. Fix: pass the kit provisioned "
                f"for {site_id!r} (KITS/{site_id})"
            ),
            highlight=False,
        )
        raise typer.Exit(EXIT_USAGE)


if __name__ == "__main__":
    app()
