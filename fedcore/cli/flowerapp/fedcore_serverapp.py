"""Flower app shim: the coordinator's ServerApp, built by the installed ``coordinator`` package."""

from __future__ import annotations

from coordinator.app import make_server_app

app = make_server_app()
