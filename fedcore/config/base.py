"""The base of every configuration model (frozen, no unknown keys), the config error and site id pattern."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
)

SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConfigError(Exception):
    """A scenario or site file that cannot be used, with a message naming file and field."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class MissingDataFiles(ConfigError):
    """A scenario or site file whose data files (or folders) are not there."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
