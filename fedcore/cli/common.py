"""What every fedcore command shares: its consoles, logging set-up, loading a scenario with every check."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from fedcore.config import ConfigError, Scenario, load_scenario


def command_console(*, stderr: bool = False, markup: bool = True) -> Console:
    """A rich console for a command's output that never breaks a line when not a terminal.

    In a terminal rich wraps long lines at word boundaries to the window's width. Piped
    or redirected (a log file, CI, ``| tee``), it would wrap at 80 columns and split a
    path over two lines (``out`` / ``runs/bank-fraud``): there every printed line is
    written whole (``soft_wrap``), for the reader's terminal or editor to wrap. Tables
    and panels still take the console's width.

    Args:
        stderr: Write to stderr instead of stdout.
        markup: Read ``[bold]``-style markup in printed strings.
    """
    console = Console(stderr=stderr, markup=markup)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


def load_checked_scenario(path: Path) -> Scenario:
    """Load a scenario and also check what needs the privacy libraries (CKKS packing layout...).

    Raises:
        ConfigError: naming the file and what is wrong.
    """
    from scheduling.registry import build_selector
    from secure.codecs import privacy_problems

    scenario = load_scenario(path)
    problems = privacy_problems(scenario.privacy, len(scenario.sites))
    if problems:
        raise ConfigError(path, "; ".join(problems))
    try:  # plugin names and parameters, trained model files
        build_selector(scenario)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(path, f"scheduler: {exc}") from None
    return scenario


def configure_logging(verbose: bool, *, verbose_level: int = logging.DEBUG) -> None:
    """Log warnings (or everything from ``verbose_level`` up with ``--verbose``) to stderr."""
    logging.basicConfig(
        level=verbose_level if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Flower sets its logger to DEBUG when its logging module is first imported:
        # import it now, so that a later (lazy) import cannot undo the level set here
        import flwr.supercore.logger  # noqa: F401

        logging.getLogger("flwr").setLevel(logging.ERROR)
