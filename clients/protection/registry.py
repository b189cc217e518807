"""Builds the site's protection for a round's privacy settings, by mode name, within the site's policy."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import RecordDict

from clients.protection.base import SiteProtection
from clients.protection.ckks import CkksSite
from clients.protection.dp import ClippedUpdates
from clients.protection.plaintext import PlaintextSite
from clients.protection.secagg import SecAggSite, is_secagg_fit, read_fit
from fedcore import records as R
from fedcore.config import PrivacySpec, SitePrivacy

log = logging.getLogger(__name__)

SITE_PROTECTIONS: dict[str, Callable[[], SiteProtection]] = {
    "plaintext": PlaintextSite,
    "ckks": CkksSite,
    "secagg+": SecAggSite,
}
"""Privacy mode name -> the site's side of it."""


class PrivacyRefused(ValueError):
    """A round whose privacy the site's policy (its site config's ``privacy``) does not accept."""


def check_privacy(privacy: PrivacySpec | None, policy: SitePrivacy, site_config: str = "") -> None:
    """Refuse a round this site's ``policy`` does not accept, logged at WARNING at the site.

    Args:
        privacy: The round's privacy settings as the coordinator sent them; ``None`` for a
            SecAgg+ stage message, which carries no round config (its mode is ``secagg+``;
            DP is checked at its fit).
        policy: The site's policy (:class:`fedcore.config.SitePrivacy`).
        site_config: The site file's path, named in the message.

    Raises:
        PrivacyRefused: naming the mode asked, the modes allowed and where to change them.
    """
    if privacy is None:
        reason = policy.mode_refusal("secagg+", site_config)
    else:
        reason = policy.refusal(privacy, site_config)
    if reason:
        log.warning("%s", reason)
        raise PrivacyRefused(reason)


def site_protection(
    privacy: PrivacySpec, policy: SitePrivacy, site_config: str = ""
) -> SiteProtection:
    """The site's protection for ``privacy``: its mode, wrapped in clipping under DP.

    Nothing is built for a round the site does not accept (:func:`check_privacy`), so
    no instruction reaches a mode the site did not allow.

    Args:
        privacy: The round's privacy settings as the coordinator sent them.
        policy: The privacy this site accepts (its site config's ``privacy``).
        site_config: The site file's path, named in a refusal.

    Raises:
        PrivacyRefused: the mode, or a round without DP, is not accepted by ``policy``.
        ValueError: an unknown mode (the message lists the valid ones).
    """
    builder = SITE_PROTECTIONS.get(privacy.mode)
    if builder is None:
        raise ValueError(
            f"unknown privacy mode {privacy.mode!r}; valid: {', '.join(sorted(SITE_PROTECTIONS))}"
        )
    check_privacy(privacy, policy, site_config)
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
