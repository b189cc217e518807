"""Approved app bundles: the Flower app bundle (FAB) fedcore builds with Flower's own builder, its hash, and which bundles a site runs."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AppApproval", "AppNotApproved", "app_bundle", "bundle_hash", "directory_bundle"]


def app_bundle(app_dir: Path | None = None) -> bytes:
    """fedcore's Flower app bundle (FAB), built by Flower's own builder from ``app_dir``.

    Only the app's files (:data:`~.flower_cli.APP_FILES`) go in, so a stray ``__pycache__``
    or editor file beside them changes nothing; ``flwr run`` on the coordinator's copy of
    those files (see ``coordinator._copy_app``) builds the same bytes: Flower's builder is
    deterministic (sorted files, fixed dates).

    Args:
        app_dir: The app directory; default the installed ``fedcore/cli/flowerapp``.
    """
    from flwr.cli.build import build_fab_from_files

    from fedcore.engines.deployment.flower_cli import APP_DIR, APP_FILES

    root = APP_DIR if app_dir is None else app_dir
    with _quiet_builder():
        return build_fab_from_files({name: root / name for name in APP_FILES})[0]


def directory_bundle(app_dir: Path) -> bytes:
    """The bundle ``flwr run APP_DIR`` submits: Flower's builder on the whole directory."""
    from flwr.cli.build import build_fab_from_disk

    with _quiet_builder():
        return build_fab_from_disk(app_dir)


@contextlib.contextmanager
def _quiet_builder() -> Iterator[None]:
    """Flower 1.42's builder trips a DeprecationWarning of its ``pathspec`` per pattern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pathspec\b")
        yield


def bundle_hash(fab: bytes) -> str:
    """The hash Flower gives an app bundle: the sha256 of its bytes, in hex."""
    return hashlib.sha256(fab).hexdigest()


class AppNotApproved(PermissionError):
    """A run whose app bundle the site did not approve; the message says which and how to."""


@dataclass(frozen=True)
class AppApproval:
    """Which app bundles a site runs: by default the one its own installed fedcore builds.

    The site runs its own installed code whatever a bundle holds; approval makes the site
    refuse a run that was submitted with anything else (a tampered copy of fedcore's app,
    another app), so nothing but the consortium's agreed app is ever served.

    Attributes:
        approved: sha256 digests of the approved bundles.
        own: The digest of the bundle built from this site's installed fedcore.
        configured: Whether ``approved`` comes from the site config's ``approved_apps``.
    """

    approved: frozenset[str]
    own: str
    configured: bool = False

    @classmethod
    def for_site(cls, approved_apps: Iterable[str] | None = None) -> AppApproval:
        """The approval of a site: ``approved_apps`` (its site config's list) or its own bundle."""
        own = bundle_hash(app_bundle())
        if approved_apps is None:
            return cls(frozenset([own]), own)
        return cls(frozenset(h.lower() for h in approved_apps), own, configured=True)

    def describe(self) -> str:
        """The approved digests, the site's own bundle marked, for logs and messages."""
        return ", ".join(
            f"{h} (its own fedcore's)" if h == self.own else h for h in sorted(self.approved)
        )

    def refusal(
        self, fab_content: bytes, fab_id: str, run_id: int, site_config: str = ""
    ) -> str | None:
        """Why the run must be refused, or ``None`` when its bundle is approved.

        The bundle's digest is computed here from its bytes, not taken from the run's claim.
        """
        got = bundle_hash(fab_content)
        if got in self.approved:
            return None
        where = f"the site config {site_config}" if site_config else "the site config"
        if self.configured:
            runs = f"the bundles approved_apps lists in {where}: {self.describe()}"
        else:
            runs = f"the bundle of its own fedcore ({self.own})"
        app = f"app {fab_id!r}" if fab_id else "an app without id"
        return (
            f"refused run {run_id}: its app bundle ({app}, sha256 {got}) is not approved at "
            f"this site, which runs only {runs}. If the consortium agreed on this bundle (e.g. "
            f"the coordinator runs another fedcore release), add {got} to approved_apps in "
            f"{where} and restart fed-client; otherwise ask the coordinator's operator why "
            "the bundle differs"
        )
