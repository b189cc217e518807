"""Flower app shim: a site's ClientApp, built by the site's installed ``clients`` package."""

from __future__ import annotations

from clients.app import make_client_app

app = make_client_app()
