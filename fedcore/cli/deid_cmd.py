"""``fed-client deid``: de-identify DICOM files (PS3.15 Basic Profile) before any training use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from fedcore.data.deid import Deidentifier, FileReport

EXIT_SKIPPED = 1
EXIT_USAGE = 2
SECRET_ENV = "FEDCORE_DEID_SECRET"
REPORT_NAME = "deid-report.json"
_LISTED_SKIPS = 20


def deid(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="IN",
            help="A DICOM file, or a folder searched recursively (it is only read).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Argument(
            metavar="OUT",
            help="Folder for the de-identified files: IN's layout is mirrored, with file and "
            "folder names kept (they must not hold patient names). Must not be IN, inside IN, "
            "or above it.",
            show_default=False,
        ),
    ],
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            help=f"File holding the site's secret, which decides the new UIDs (else the "
            f"{SECRET_ENV} environment variable holds the secret itself). Keep it at the site "
            "and use the same one for every run, so that series still group.",
        ),
    ] = None,
    site_id: Annotated[
        str, typer.Option("--site-id", help="Site label for logs (does not change the UIDs).")
    ] = "",
    report: Annotated[
        Path | None,
        typer.Option("--report", help=f"JSON report of what changed. Default: OUT/{REPORT_NAME}."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            min=1,
            help="Worker processes for a folder. Default: the usable CPU cores, at most 4. "
            "The output is the same for any number.",
        ),
    ] = None,
) -> None:
    """De-identify DICOM files per the PS3.15 Basic Application Level Confidentiality Profile.

    Removes or blanks names, IDs, dates, addresses, institution, devices and comments, removes
    private tags, and remaps UIDs with the site secret (the same UID gives the same new UID at
    this site). Exit codes: 0 every file written, 1 some skipped (not DICOM, a DICOMDIR, burned-in
    text; the rest are written and the report lists why), 2 bad arguments or no secret.
    """
    from fedcore.data.deid import (
        DeidentificationError,
        Deidentifier,
        check_output_outside,
        default_jobs,
        load_site_secret,
        write_report,
    )

    err = Console(stderr=True, soft_wrap=True)

    def usage_error(message: str) -> typer.Exit:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        return typer.Exit(EXIT_USAGE)

    try:
        if secret_file is not None:
            secret = load_site_secret(secret_file)
        elif os.environ.get(SECRET_ENV, "").strip():
            secret = os.environ[SECRET_ENV].strip().encode("utf-8")
        else:
            raise usage_error(
                f"no site secret: pass --secret-file PATH or set {SECRET_ENV}. The secret keeps "
                "remapped UIDs from being traced back; make one once per site with\n"
                '  python -c "import secrets; print(secrets.token_hex(32))" > site.secret\n'
                "keep it at the site, and pass --secret-file site.secret on every run"
            )
        deidentifier = Deidentifier(secret, site_id=site_id)
    except DeidentificationError as exc:
        raise usage_error(str(exc)) from None
    if not input_path.exists():
        raise usage_error(f"input {str(input_path)!r} does not exist: expected a file or folder")
    if output.exists() and not output.is_dir():
        raise usage_error(
            f"output {str(output)!r} is a file: expected a folder (made if missing) to write "
            "the de-identified files and the report into"
        )

    report_path = report if report is not None else output / REPORT_NAME
    src_root = input_path.resolve() if input_path.is_dir() else input_path.resolve().parent
    if report_path.resolve().is_relative_to(src_root) and report is not None:
        raise usage_error(
            f"--report {str(report)!r} is inside the input folder {str(src_root)!r}: expected a "
            "path outside it, since nothing is written among the originals"
        )

    reports: list[FileReport]
    if input_path.is_dir():
        try:
            check_output_outside(input_path, output)
        except DeidentificationError as exc:
            raise usage_error(str(exc)) from None
        reports = _run_tree(deidentifier, input_path, output, err, jobs or default_jobs())
    else:
        target = output / input_path.name
        if target.resolve() == input_path.resolve():
            raise usage_error(
                f"output {str(target)!r} would overwrite the input file: expected OUT to be "
                "another folder than the one holding IN"
            )
        reports = [deidentifier.file(input_path, target)]

    try:
        write_report(reports, report_path)
    except OSError as exc:
        err.print(f"[bold red]cannot write the report[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_SKIPPED) from None
    _print_summary(reports, output, report_path)
    if any(not r.ok for r in reports):
        raise typer.Exit(EXIT_SKIPPED)


def _run_tree(
    deidentifier: Deidentifier, src: Path, dst: Path, err: Console, jobs: int
) -> list[FileReport]:
    """De-identify a folder with a progress bar on stderr."""
    progress = Progress(
        TextColumn("[bold blue]de-identifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("files", total=None)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        return deidentifier.tree(src, dst, progress=on_progress, jobs=jobs)


def _print_summary(reports: list[FileReport], output: Path, report_path: Path) -> None:
    """Files written, files skipped with their reasons, attributes changed per action."""
    from fedcore.data.deid import report_dict

    summary = report_dict(reports)
    out = Console(soft_wrap=True)
    out.print(
        f"de-identified {summary['files_written']} of {summary['files_total']} files into "
        f"{escape(str(output))}",
        highlight=False,
    )
    skipped = [r for r in reports if not r.ok]
    if skipped:
        out.print(f"[bold yellow]skipped {len(skipped)}:[/]", highlight=False)
        for r in skipped[:_LISTED_SKIPS]:
            out.print(f"  {escape(r.source)}: {escape(r.error or '')}", highlight=False)
        if len(skipped) > _LISTED_SKIPS:
            out.print(f"  ... and {len(skipped) - _LISTED_SKIPS} more, listed in the report")
    actions: dict[str, int] = summary["actions"]
    detail = ", ".join(f"{action} {count}" for action, count in actions.items())
    out.print(
        f"attributes changed: {sum(actions.values())}" + (f" ({detail})" if detail else ""),
        highlight=False,
    )
    out.print(f"report: {escape(str(report_path))}", highlight=False)
