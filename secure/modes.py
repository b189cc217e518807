"""Privacy modes and what each promises; plaintext announces itself loudly wherever it runs."""

from __future__ import annotations

import logging

PLAINTEXT_WARNING = (
    "privacy mode plaintext: site updates travel and are aggregated in clear, so the coordinator "
    "can read every site's update. For tests and benchmarks only; never with real institutions' data."
)

PROMISES: dict[str, str] = {
    "plaintext": "none: the coordinator reads each site's update and the global model",
}


def warn_if_plaintext(mode: str, logger: logging.Logger) -> bool:
    """Log the plaintext warning when ``mode`` is plaintext; returns whether it did."""
    if mode == "plaintext":
        logger.warning(PLAINTEXT_WARNING)
        return True
    return False
