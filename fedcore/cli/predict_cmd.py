"""``fed-client predict``: score a transactions CSV with the site's exported model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fedcore.cli.common import command_console

if TYPE_CHECKING:
    from fedcore.export.serve import HistoryContext

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
            "task feature (optionally tx_id, merchant, device, label). Each transaction is "
            "scored in the context of the site's history (its accounts' recent transactions, "
            "shared merchants and devices); scores are written in the file's row order.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Scores CSV to write (tx_id, score, flagged). Default: INPUT.scores.csv."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.0,
            max=1.0,
            help="Score at which a row is flagged. Default: the site's operating point, "
            "from the export's manifest.",
        ),
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="The site's history database. Default: the site file's history.database "
            "with --site, else STATE/history/history.sqlite beside the export "
            "(STATE/export/RUN/).",
        ),
    ] = None,
    site: Annotated[
        Path | None,
        typer.Option(
            "--site",
            help="The site's config: its history window (history.days, "
            "history.transactions) and database.",
        ),
    ] = None,
    no_history: Annotated[
        bool,
        typer.Option(
            "--no-history",
            help="Score the file alone, in the graph of its own rows: for a file that "
            "carries its accounts' recent history itself.",
        ),
    ] = False,
) -> None:
    """Score transactions with the model exported at this site; checks columns against its manifest.

    A transaction's score depends on its neighbourhood: the fraud GNN scores each one in
    the graph of its payer's and payee's other transactions, shared merchants and
    devices, and their counts over the last hour and day. By default each row is scored
    in the context of the site's history, the window of its recent transactions that the
    site keeps after export (the history is read, not changed). With --no-history the
    file is scored alone, so a row without its accounts' recent history in the file gets
    another score than in the site's own data. Rows are written in the file's order.
    """
    from fedcore.config import ConfigError
    from fedcore.data.transactions import DataError
    from fedcore.export.onnx_export import ExportError
    from fedcore.export.serve import InputError, score_csv, write_scores
    from fedcore.serving.history import HistoryError

    err = command_console(stderr=True)
    if not input_csv.is_file():
        err.print(f"[bold red]no such input file[/] {escape(str(input_csv))}", highlight=False)
        raise typer.Exit(EXIT_INPUT)
    try:
        context = None if no_history else history_context(model, history, site)
        scores = score_csv(model, input_csv, context)
    except (InputError, DataError, FileNotFoundError) as exc:
        err.print(f"[bold red]cannot score[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from None
    except (ConfigError, HistoryError) as exc:
        err.print(f"[bold red]cannot use the site's history[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from None
    except (ExportError, ValueError) as exc:  # a damaged or changed model, a bad manifest
        err.print(f"[bold red]model unusable[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    for note in scores.notes:
        err.print(f"[yellow]note[/] {escape(note)}", highlight=False)
    dest = out or input_csv.with_suffix(".scores.csv")
    if threshold is None:
        threshold = scores.threshold
    write_scores(scores, dest, threshold)
    flagged = int((scores.score >= threshold).sum())
    command_console(markup=False).print(
        f"scored {len(scores.tx_id)} transactions with {scores.model_path.name} "
        f"({scores.path_taken}) "
        f"{'in the context of the site history' if context else 'on the file alone'}; "
        f"{flagged} flagged at {threshold:g}; wrote {dest}",
        highlight=False,
    )


def history_context(model: Path, history: Path | None, site: Path | None) -> HistoryContext:
    """Where the site's history is and its window: ``--history``, ``--site``, or beside the export.

    Raises:
        FileNotFoundError: a site file that is not there.
        fedcore.config.ConfigError: a site file that does not load.
    """
    from fedcore.config import HistorySpec, load_site_config
    from fedcore.export.serve import HistoryContext
    from fedcore.serving.history import history_path
    from fedcore.site_paths import site_state_dir

    spec = HistorySpec()
    state: Path | None = None
    if site is not None:
        if not site.is_file():
            raise FileNotFoundError(f"no such site file: {site}")
        cfg = load_site_config(site, check_files=False)
        spec = cfg.history
        state = site_state_dir(cfg)
    if history is not None:
        return HistoryContext(history, spec)
    if state is None:
        export = model if model.is_dir() else model.parent
        state = export.parent.parent  # STATE/export/RUN/
    return HistoryContext(history_path(state, spec), spec)
