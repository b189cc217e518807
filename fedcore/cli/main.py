"""``fedcore``: the data scientist's command line (run, validate)."""

from __future__ import annotations

import typer

from fedcore.cli.run_cmd import run
from fedcore.cli.validate_cmd import validate

app = typer.Typer(
    name="fedcore",
    help="Privacy-preserving federated training across institutions. Simulate a consortium with `fedcore run`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run)
app.command("validate")(validate)


if __name__ == "__main__":  # pragma: no cover
    app()
