"""``fedcore``: the data scientist's command line (run, validate)."""

from __future__ import annotations

from typing import Annotated

import typer

from fedcore.cli.audit_cmd import app as audit_app
from fedcore.cli.provision_cmd import provision
from fedcore.cli.report_cmd import report
from fedcore.cli.run_cmd import run
from fedcore.cli.validate_cmd import validate
from fedcore.cli.version import version_text

app = typer.Typer(
    name="fedcore",
    help="Privacy-preserving federated training across institutions. Simulate a consortium with `fedcore run`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Privacy-preserving federated training across institutions."""


app.command("run")(run)
app.command("validate")(validate)
app.command("provision")(provision)
app.command("report")(report)
app.add_typer(audit_app, name="audit")


if __name__ == "__main__":  # pragma: no cover
    app()
