"""Builds the site's protection for a round's privacy settings, by mode name."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import RecordDict

from clients.protection.base import SiteProtection
from clients.protection.ckks import CkksSite
from clients.protection.dp import ClippedUpdates
from clients.protection.plaintext import PlaintextSite
from clients.protection.secagg import SecAggSite, is_secagg_fit, read_fit
from fedcore import records as R
from fedcore.config import PrivacySpec

SITE_PROTECTIONS: dict[str, Callable[[], SiteProtection]] = {
    "plaintext": PlaintextSite,
    "ckks": CkksSite,
    "secagg+": SecAggSite,
}
"""Privacy mode name -> the site's side of it."""


def site_protection(privacy: PrivacySpec) -> SiteProtection:
    """The site's protection for ``privacy``: its mode, wrapped in clipping under DP.

    Raises:
        ValueError: an unknown mode (the message lists the valid ones).
    """
    builder = SITE_PROTECTIONS.get(privacy.mode)
    if builder is None:
        raise ValueError(
            f"unknown privacy mode {privacy.mode!r}; valid: {', '.join(sorted(SITE_PROTECTIONS))}"
        )
    protection = builder()
    if privacy.dp is not None:
        protection = ClippedUpdates(protection, privacy.dp)
    return protection


def read_round(content: RecordDict) -> R.RoundConfig:
    """The round config of any instruction (a SecAgg+ fit carries it in its fit config).

    Raises:
        ValueError: the instruction has no round config.
    """
    if is_secagg_fit(content):
        return read_fit(content)[0]
    if R.CONFIG not in content.config_records:
        raise ValueError("instruction lacks its 'config' record (the round config)")
    return R.RoundConfig.from_record(content.config_records[R.CONFIG])
