"""Privacy modes at the site as objects: one file per mode, DP clipping as a wrapper, a registry."""

from clients.protection.base import SiteProtection
from clients.protection.registry import SITE_PROTECTIONS, read_round, site_protection

__all__ = ["SITE_PROTECTIONS", "SiteProtection", "read_round", "site_protection"]
