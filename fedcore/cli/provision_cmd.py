"""``fedcore provision``: write a consortium's key and certificate kits, or check one kit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from fedcore.cli.common import command_console, configure_logging
from fedcore.config import ConfigError
from secure import kitfiles
from secure.kit import KitCheck, KitError, check_kit
from secure.provision import (
    ConsortiumSpec,
    ProvisionError,
    ProvisionReport,
    load_consortium,
)
from secure.provision import (
    provision as provision_kits,
)

EXIT_FAILED = 1
EXIT_CONFIG = 2


def _date(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")


_HOLDS = {
    "ca": "CA key and certificate",
    "coordinator": "TLS server key, CKKS public context, {n} node public keys",
    "site": "TLS client key, node key, CKKS secret key",
}


def _written_table(report: ProvisionReport) -> Table:
    t = Table(
        title=f"kits of consortium {report.consortium!r} in {report.out_dir}/",
        title_justify="left",
    )
    for col in ("kit", "role", "goes to", "holds", "expires"):
        t.add_column(col)
    n_sites = sum(k.role == "site" for k in report.kits)
    for k in report.kits:
        if k.role == "ca":
            where = "nowhere: keep offline"
        elif k.role == "coordinator":
            where = "the coordinator machine"
        else:
            where = f"site {k.site_id}"
        holds = _HOLDS[k.role].format(n=n_sites)
        t.add_row(escape(f"{k.path}/"), k.role, escape(where), holds, _date(k.not_after))
    return t


def _next_steps(report: ProvisionReport) -> str:
    out = report.out_dir
    return "\n".join(
        [
            f"1. Copy [bold]{out}/{kitfiles.COORDINATOR_DIR}/[/] to the coordinator machine and start it "
            f"with [bold]fed-coordinator start --kit PATH/{kitfiles.COORDINATOR_DIR}/[/].",
            f"2. Copy each [bold]{out}/<site-id>/[/] to that site only, over a channel you trust "
            f"(scp, an encrypted drive): it holds the site's keys and the consortium's CKKS secret "
            f"key. The site starts with [bold]fed-client start --kit PATH/<site-id>/[/].",
            f"3. On arrival, each party checks its kit: [bold]fedcore provision --check KIT_DIR[/], "
            f"and compares the CA fingerprint with this one: SHA-256 {report.ca_sha256}",
            f"4. Keep [bold]{out}/{kitfiles.CA_DIR}/[/] offline (it signs certificates; needed only "
            f"to re-provision). Certificates expire on {_date(report.not_after)}: provision again before.",
        ]
    )


def _print_check(console: Console, result: KitCheck) -> None:
    who = {"ca": "CA", "coordinator": "coordinator"}.get(result.role, f"site {result.site_id}")
    console.print(
        f"[bold]{result.path}[/]: {who} kit of consortium {result.consortium!r}", highlight=False
    )
    for c in result.checks:
        mark = "[green]✓[/]" if c.ok else "[bold red]✗[/]"
        console.print(f"  {mark} {escape(c.name)}: {escape(c.detail)}", highlight=False)
    console.print("  holds:", highlight=False)
    for k in result.keys:
        console.print(f"    {k}", highlight=False)
    failed = len(result.failures)
    if failed:
        console.print(
            f"  [bold red]{failed} of {len(result.checks)} checks failed[/]", highlight=False
        )
    else:
        console.print(f"  [green]all {len(result.checks)} checks passed[/]", highlight=False)


def _kit_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a kit, else the kits directly inside it (a whole KITS/ directory)."""
    if (path / kitfiles.MANIFEST).is_file() or not path.is_dir():
        return [path]
    inner = sorted(p for p in path.iterdir() if (p / kitfiles.MANIFEST).is_file())
    return inner or [path]


def _check(path: Path, err: Console) -> None:
    console = command_console()
    results = []
    for kit_dir in _kit_dirs(path):
        try:
            results.append(check_kit(kit_dir))
        except KitError as exc:
            err.print(f"[bold red]not a usable kit:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_CONFIG) from None
    for i, result in enumerate(results):
        if i:
            console.print()
        _print_check(console, result)
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAILED)


def _with_hosts(spec: ConsortiumSpec, hosts: list[str]) -> ConsortiumSpec:
    data = spec.model_dump()
    data["coordinator"] = {"hosts": hosts}
    return ConsortiumSpec.model_validate(data)


def provision(
    consortium: Annotated[
        Path | None,
        typer.Argument(
            help="Consortium YAML (name, sites, coordinator.hosts, validity_days, ckks) or a scenario YAML.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Directory for the kits: ca/, coordinator/, <site-id>/."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace kits that already exist in --out (their keys are lost)."
        ),
    ] = False,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Coordinator DNS name or IP for the server certificate (repeat; overrides the file's coordinator.hosts).",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            help="Check a kit (or every kit in a KITS/ directory) instead of provisioning; exit 1 if a check fails.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a consortium's key and certificate kits into --out, or check a kit with --check (exit 1: a check failed, 2: bad input)."""
    err = command_console(stderr=True)
    configure_logging(False)
    if check is not None:
        if consortium is not None or out is not None or force or host:
            err.print(
                "[bold red]--check[/] takes only a kit directory: drop CONSORTIUM, --out, --force "
                "and --host, or drop --check to provision",
                highlight=False,
            )
            raise typer.Exit(EXIT_CONFIG)
        _check(check, err)
        return
    if consortium is None or out is None:
        missing = " and ".join(
            x for x, v in (("CONSORTIUM", consortium), ("--out", out)) if v is None
        )
        err.print(
            f"[bold red]missing {missing}[/]: run `fedcore provision CONSORTIUM.yaml --out KITS/` "
            "to provision, or `fedcore provision --check KIT_DIR` to check a kit",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG)
    try:
        spec = load_consortium(consortium)
    except ConfigError as exc:
        err.print(
            f"[bold red]invalid consortium file[/] {escape(str(exc.path))}\n{escape(exc.message)}",
            highlight=False,
        )
        raise typer.Exit(EXIT_CONFIG) from None
    if host:
        try:
            spec = _with_hosts(spec, host)
        except ValidationError as exc:
            reason = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            err.print(f"[bold red]--host[/]: {escape(str(reason))}", highlight=False)
            raise typer.Exit(EXIT_CONFIG) from None
    try:
        report = provision_kits(spec, out, force=force)
    except ProvisionError as exc:
        err.print(f"[bold red]not provisioned:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    except OSError as exc:
        err.print(f"[bold red]cannot write the kits:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None

    console = command_console()
    console.print(_written_table(report))
    for p in report.replaced:
        console.print(
            f"[yellow]replaced[/] {p}/ (its old keys and certificates are gone)", highlight=False
        )
    for p in report.others:
        console.print(
            f"[yellow]note[/] {p}/ is a kit, but not of this consortium's sites: left as it was",
            highlight=False,
        )
    console.print(
        f"coordinator certificate names: {', '.join(spec.hosts)}; every file is 0600, every "
        "directory 0700",
        highlight=False,
    )
    console.print(
        Panel(_next_steps(report), title="next steps", title_align="left"), soft_wrap=False
    )
