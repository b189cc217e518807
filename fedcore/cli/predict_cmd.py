"""``fed-client predict``: score a transactions CSV with the site's exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

EXIT_INPUT = 2
EXIT_FAILED = 1


def predict(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            help="Exported model (model.int8.onnx, or its export folder holding manifest.json).",
        ),
    ],
    input_csv: Annotated[
        Path,
        typer.Option(
            "--input",
            help="Transactions CSV to score: columns payer, payee, amount, timestamp and one per "
            "task feature (optionally tx_id, merchant, device, label).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Scores CSV to write (tx_id, score, flagged). Default: INPUT.scores.csv."
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option("--threshold", min=0.0, max=1.0, help="Score at which a row is flagged."),
    ] = 0.5,
) -> None:
    """Score transactions with the model exported at this site; checks columns against its manifest."""
    from fedcore.data.transactions import DataError
    from fedcore.export.onnx_export import ExportError
    from fedcore.export.serve import InputError, score_csv, write_scores

    err = Console(stderr=True)
    if not input_csv.is_file():
        err.print(f"[bold red]no such input file[/] {escape(str(input_csv))}", highlight=False)
        raise typer.Exit(EXIT_INPUT)
    try:
        scores = score_csv(model, input_csv)
    except (InputError, DataError, FileNotFoundError) as exc:
        err.print(f"[bold red]cannot score[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from None
    except (ExportError, ValueError) as exc:  # a damaged or changed model, a bad manifest
        err.print(f"[bold red]model unusable[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    dest = out or input_csv.with_suffix(".scores.csv")
    write_scores(scores, dest, threshold)
    flagged = int((scores.score >= threshold).sum())
    Console(markup=False).print(
        f"scored {len(scores.tx_id)} transactions with {scores.model_path.name} "
        f"({scores.manifest.path_taken}); {flagged} flagged at {threshold:g}; wrote {dest}",
        highlight=False,
    )
