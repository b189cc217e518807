"""Checks that each reply comes from the site it names: signatures with the site's registered node key."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import RecordDict

from fedcore import records as R

log = logging.getLogger(__name__)


class ReplyVerifier:
    """Verifies reply signatures against the node keys registered in the coordinator's kit.

    Args:
        registered: Site id -> OpenSSH public key; ``None`` turns checking off (no kit).
    """

    def __init__(self, registered: Mapping[str, bytes] | None) -> None:
        self.registered = dict(registered) if registered is not None else None
        if self.registered is None:
            log.warning(
                "no coordinator kit: replies are not authenticated (any node may claim any site)"
            )

    @property
    def enabled(self) -> bool:
        """Whether replies must carry a valid signature."""
        return self.registered is not None

    def check(
        self, kind: str, site_id: str, round_: int, run_key: str, body: bytes, content: RecordDict
    ) -> str | None:
        """The reason to refuse a reply, or ``None`` when it is authentic (or checking is off).

        The signature covers :func:`fedcore.records.signing_payload`: the reply's kind, the
        site it names, the round the coordinator expects, the run key and ``body`` (the
        reply's digest). A reply signed by another site's key, for another round (a replay)
        or another run, or over other figures fails here.

        Args:
            kind: ``train``, ``evaluate`` or ``query.telemetry``.
            site_id: The site the reply names.
            round_: The round the coordinator asked about (never the round the reply claims).
            run_key: This run's key.
            body: The reply's digest, computed by the coordinator from what it parsed.
            content: The reply's content (where the signature is).
        """
        if self.registered is None:
            return None
        key = self.registered.get(site_id)
        if key is None:
            return f"site {site_id!r} has no registered node key in the coordinator kit"
        try:
            signature = R.read_signature(content)
        except ValueError as exc:
            return f"malformed signature: {exc}"
        if signature is None:
            return "reply is not signed (the site must run with its kit)"
        from secure.kit import verify_signature

        payload = R.signing_payload(kind, site_id, round_, run_key, body)
        if not verify_signature(key, payload, signature):
            return f"signature does not verify with site {site_id!r}'s registered node key"
        return None
