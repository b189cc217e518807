"""A kit's manifest (``kit.json``): what a kit is, which files its role holds, reading it back, and their permissions."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from fedcore import pki
from fedcore.config import CkksSpec
from secure import kitfiles

__all__ = [
    "KIT_KIND",
    "KIT_VERSION",
    "ROLES",
    "KitError",
    "KitManifest",
    "Role",
    "describe_role",
    "expected_files",
    "is_secret",
    "permission_problems",
    "read_manifest",
]

KIT_KIND = "fedcore-kit"
KIT_VERSION = 1
Role = Literal["ca", "coordinator", "site"]
ROLES: tuple[Role, ...] = ("ca", "coordinator", "site")


class KitError(Exception):
    """A kit that cannot be used: not a kit, wrong role, files missing, permissions too open."""


class KitManifest(BaseModel):
    """``kit.json``: what a kit is and the SHA-256 of each of its files. Holds no secret material."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fedcore-kit"]
    version: Literal[1]
    role: Role
    consortium: str
    site_id: str | None = None
    created: dt.datetime
    not_after: dt.datetime
    ca_sha256: str
    """SHA-256 of the CA certificate (DER), to compare out of band."""
    coordinator_hosts: list[str]
    sites: list[str] = []
    """Coordinator kit: the sites whose node public keys are registered in ``nodes/``."""
    ckks: CkksSpec
    files: dict[str, str]
    """Every file of the kit but ``kit.json``, relative to the kit (``nodes/bank-a.pub``) -> SHA-256."""

    @model_validator(mode="after")
    def _role_fields(self) -> KitManifest:
        if self.role == "site" and not self.site_id:
            raise ValueError("a site kit must name its site_id")
        if self.role != "site" and self.site_id is not None:
            raise ValueError(f"a {self.role} kit has no site_id (found {self.site_id!r})")
        return self


def expected_files(manifest: KitManifest) -> list[str]:
    """The files a kit of this manifest's role holds besides ``kit.json``, relative to the kit."""
    if manifest.role == "ca":
        return [kitfiles.CA_CERT, kitfiles.CA_KEY]
    if manifest.role == "coordinator":
        return [
            kitfiles.CA_CERT,
            kitfiles.SERVER_CERT,
            kitfiles.SERVER_KEY,
            kitfiles.CKKS_PUBLIC,
            *(f"{kitfiles.NODES_DIR}/{s}.pub" for s in manifest.sites),
        ]
    return [
        kitfiles.CA_CERT,
        kitfiles.CLIENT_CERT,
        kitfiles.CLIENT_KEY,
        kitfiles.NODE_KEY,
        kitfiles.NODE_PUB,
        kitfiles.CKKS_SECRET,
    ]


def is_secret(rel: str) -> bool:
    """Whether a kit file (``client.key``, ``nodes/a.pub``) holds secret material."""
    return rel.rsplit("/", 1)[-1] in kitfiles.SECRET_FILES


def describe_role(manifest: KitManifest) -> str:
    """``the site kit of bank-a``, ``the coordinator kit``: a kit, for messages."""
    if manifest.role == "site":
        return f"the site kit of {manifest.site_id}"
    return f"the {manifest.role} kit"


def read_manifest(path: Path | str) -> KitManifest:
    """Read and validate ``PATH/kit.json``.

    Raises:
        KitError: ``path`` is not a kit directory, or its manifest is damaged.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise KitError(
            f"{path} {what}: expected a kit directory written by `fedcore provision` "
            "(KITS/coordinator or KITS/<site-id>)"
        )
    mpath = path / kitfiles.MANIFEST
    if not mpath.is_file():
        raise KitError(
            f"{path} is not a fedcore kit: it has no {kitfiles.MANIFEST}. Expected a directory written "
            "by `fedcore provision` (KITS/coordinator or KITS/<site-id>)"
        )
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(
            f"{mpath} cannot be read as JSON ({exc}): the kit is damaged; restore it or re-provision"
        ) from None
    if not isinstance(data, dict) or data.get("kind") != KIT_KIND:
        raise KitError(f"{mpath} is not a fedcore kit manifest (expected kind {KIT_KIND!r})")
    if data.get("version") != KIT_VERSION:
        raise KitError(
            f"{mpath} has kit version {data.get('version')!r}; this fedcore reads version "
            f"{KIT_VERSION}: upgrade fedcore or re-provision the kit"
        )
    try:
        return KitManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise KitError(f"{mpath} is damaged ({problems}): restore it or re-provision") from None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def permission_problems(path: Path, manifest: KitManifest) -> list[str]:
    """Secret files readable by others and kit directories writable by others, each with its fix."""
    if os.name != "posix":
        return []
    problems = []
    for rel in expected_files(manifest):
        p = path / rel
        problem = pki.loose_permissions(p, name=rel) if is_secret(rel) and p.is_file() else None
        if problem is not None:
            problems.append(problem)
    dirs = [path] + ([path / kitfiles.NODES_DIR] if manifest.role == "coordinator" else [])
    for d in dirs:
        if d.is_dir() and _mode(d) & 0o022:
            problems.append(
                f"{d} has permissions {_mode(d):04o}, others could replace the kit's files: chmod 700 {d}"
            )
    return problems
