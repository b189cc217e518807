"""What every fedcore command shares: logging set-up."""

from __future__ import annotations

import logging


def configure_logging(verbose: bool, *, verbose_level: int = logging.DEBUG) -> None:
    """Log warnings (or everything from ``verbose_level`` up with ``--verbose``) to stderr."""
    logging.basicConfig(
        level=verbose_level if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
