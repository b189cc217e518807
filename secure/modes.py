"""Privacy modes and what each promises; plaintext announces itself loudly wherever it runs."""

from __future__ import annotations

import logging

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


def warn_if_plaintext(mode: str, logger: logging.Logger) -> bool:
    """Log the plaintext warning when ``mode`` is plaintext; returns whether it did."""
    if mode == "plaintext":
        logger.warning(PLAINTEXT_WARNING)
        return True
    return False
