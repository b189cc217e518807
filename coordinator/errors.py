"""Errors of the coordinator's round loop."""

from __future__ import annotations


class FederationError(RuntimeError):
    """The federation cannot go on (too few sites, no sites at all...); the message says why."""
