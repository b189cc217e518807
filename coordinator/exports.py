"""The sites' export replies, read into one manifest (or error) per site."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import Message

from fedcore import records as R

log = logging.getLogger(__name__)

__all__ = ["read_export_replies"]


def read_export_replies(
    replies: Sequence[tuple[int, Message]], errors: Mapping[int, str], site_of: Mapping[int, str]
) -> dict[str, Any]:
    """Each site's export manifest, or ``{"error": ...}`` with why it has none, sorted by site.

    Args:
        replies: ``(node id, reply)`` of the export exchange.
        errors: Why a node gave no reply.
        site_of: The site each node was asked for.
    """
    out: dict[str, Any] = {site_of[n]: {"error": e} for n, e in errors.items()}
    for nid, rep in replies:
        site = site_of[nid]
        try:
            claimed, manifest, error = R.read_export_reply(rep.content)
        except ValueError as exc:
            out[site] = {"error": f"malformed export reply: {exc}"}
            continue
        if claimed != site:
            out[site] = {"error": f"reply names site {claimed!r}"}
            continue
        out[site] = manifest if not error else {"error": error, **manifest}
    for site, m in sorted(out.items()):
        if "error" in m:
            log.warning("export at %s failed: %s", site, m["error"])
        else:
            log.info("export at %s: %s via %s", site, m.get("path_taken"), m.get("provider"))
    return dict(sorted(out.items()))
