"""``fed-client predict``: score a transactions CSV with the site's exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedcore.cli.common import command_console

EXIT_INPUT = 2
EXIT_FAILED = 1


def predict(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            help="A site's exported model: model.int8.onnx (or model.fp32.onnx) or the export "
            "folder holding them and manifest.json. `fedcore run` writes it to "
            "OUT/sites/SITE/export/RUN/; a site started with `fed-client start` to "
            "STATE/export/RUN/.",
        ),
    ],
    input_csv: Annotated[
        Path,
        typer.Option(
            "--input",
            help="Transactions CSV to score: columns payer, payee, amount, timestamp and one per "
            "task feature (optionally tx_id, merchant, device, label). Scores depend on the "
            "other rows of the file: each transaction is scored in the graph of the file's "
            "transactions (its accounts' other transactions, shared merchants and devices), "
            "so include the accounts' recent history. Scores are written in the file's row order.",
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
    """Score transactions with the model exported at this site; checks columns against its manifest.

    A transaction's score depends on the other transactions in the same file: the fraud
    GNN scores each one in the graph the file's rows make (its payer's and payee's other
    transactions, shared merchants and devices, their counts over the last hour and day),
    so a row scored alone, or without its accounts' recent history, gets another score
    than in the site's own data. Rows are written in the file's order.
    """
    from fedcore.data.transactions import DataError
    from fedcore.export.onnx_export import ExportError
    from fedcore.export.serve import InputError, score_csv, write_scores

    err = command_console(stderr=True)
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
    for note in scores.notes:
        err.print(f"[yellow]note[/] {escape(note)}", highlight=False)
    dest = out or input_csv.with_suffix(".scores.csv")
    write_scores(scores, dest, threshold)
    flagged = int((scores.score >= threshold).sum())
    command_console(markup=False).print(
        f"scored {len(scores.tx_id)} transactions with {scores.model_path.name} "
        f"({scores.path_taken}); {flagged} flagged at {threshold:g}; wrote {dest}",
        highlight=False,
    )
