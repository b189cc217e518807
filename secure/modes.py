"""Privacy modes and what each promises; plaintext announces itself loudly wherever it runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PLAINTEXT_WARNING = (
    "privacy mode plaintext: site updates travel and are aggregated in clear, so the coordinator "
    "can read every site's update. For tests and benchmarks only; never with real institutions' data: "
    "set privacy.mode to ckks or secagg+ (see docs/privacy.md)."
)

PROMISES: dict[str, str] = {
    "plaintext": "none: the coordinator reads each site's update and the global model",
    "ckks": "the coordinator adds ciphertexts without a secret key: it reads no site's update "
    "and not the global model; sites share one key",
    "secagg+": "the coordinator learns only the masked sum (the global model), no site's update; "
    "survives dropouts up to num_shares - reconstruction_threshold",
    "dp": "adds (epsilon, delta)-DP per site to any mode: clipped updates, Gaussian noise on the sum",
}

_shown_lock = threading.Lock()
_shown_depth = 0  # open plaintext_warning_shown() blocks in this process


@contextmanager
def plaintext_warning_shown() -> Iterator[None]:
    """Say that the command has shown :data:`PLAINTEXT_WARNING` to its user itself.

    A command that prints the warning (``fedcore run``'s box) runs the federation inside
    this block, so that :func:`warn_if_plaintext` does not log it a second time in the
    same process. Everywhere else (a coordinator whose output goes to a log file, a
    Flower app started on its own) the log line stays. Blocks may nest and run in threads.
    """
    global _shown_depth
    with _shown_lock:
        _shown_depth += 1
    try:
        yield
    finally:
        with _shown_lock:
            _shown_depth -= 1


def warn_if_plaintext(mode: str, logger: logging.Logger) -> bool:
    """Log the plaintext warning when ``mode`` is plaintext; returns whether it did.

    Nothing is logged inside :func:`plaintext_warning_shown`: the user has seen it.
    """
    if mode != "plaintext":
        return False
    with _shown_lock:
        shown = _shown_depth > 0
    if shown:
        logger.debug("plaintext warning already shown by the command")
        return False
    logger.warning(PLAINTEXT_WARNING)
    return True
