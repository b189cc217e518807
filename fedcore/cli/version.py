"""``--version`` of the site and coordinator services: fedcore's version and the Flower it runs on."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from fedcore import __version__


def version_text() -> str:
    """``fedcore X.Y.Z (Flower A.B.C)``, read from the installed packages without importing Flower."""
    try:
        flower = version("flwr")
    except PackageNotFoundError:
        flower = "not installed"
    return f"fedcore {__version__} (Flower {flower})"


def print_version(value: bool) -> None:
    """Eager ``--version`` option callback: print :func:`version_text` and exit 0."""
    if value:
        typer.echo(version_text())
        raise typer.Exit()


VERSION_OPTION = typer.Option(
    "--version", callback=print_version, is_eager=True, help="Print the version and exit."
)
