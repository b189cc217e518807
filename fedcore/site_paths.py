"""Where a site keeps its state: the one resolver for the site service, the ClientApp and simulation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcore.config import SiteConfig

STATE_DIR_KEY = "state-dir"
"""Node-config key naming the site's state directory (set by ``fed-client start``)."""


def site_state_dir(site: SiteConfig, override: str | Path | None = None) -> Path:
    """The site's state directory, absolute.

    In order: ``override`` (``fed-client start --state``, passed to the ClientApp as node
    config :data:`STATE_DIR_KEY`), the site config's ``state_dir`` (relative: to the site
    file, as :func:`fedcore.config.load_site_config` resolves it), else
    ``./fedcore-site-<ID>`` in the current directory, never next to the site file. The
    SuperNode's Flower home and logs, the site's data cache and data size
    (``data-size.json``), its copy of the global model (``ckks``) and its exports all live
    under this one directory.

    Args:
        site: The site's config.
        override: An explicit directory, or ``None``/``""`` for the site's own setting.
    """
    if override:
        return Path(override).expanduser().resolve()
    if site.state_dir is not None:
        return Path(site.state_dir).expanduser().resolve()
    return Path(f"fedcore-site-{site.id}").resolve()


def state_dir_from_node_config(site: SiteConfig, node_config: Mapping[str, Any]) -> Path:
    """:func:`site_state_dir` for a ClientApp, with the override from its node config."""
    value = node_config.get(STATE_DIR_KEY)
    return site_state_dir(site, str(value) if value else None)
