"""The de-identification report: what was done to each file, counted per action and attribute, as JSON."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedcore.data.deid.ps315_profile import PROFILE_NAME
from fedcore.storage import atomic_write_text

ACTIONS: Final = ("removed", "replaced", "emptied", "uid-remapped", "private-removed")
"""What a :class:`Change` says was done to an element."""


@dataclass(frozen=True)
class Change:
    """One element changed in one file: its tag ``"(gggg,eeee)"``, keyword and what was done.

    ``action`` is one of :data:`ACTIONS`. Values are never recorded: a report holds no PHI.
    """

    tag: str
    keyword: str
    action: str


@dataclass
class FileReport:
    """What happened to one input file: where it went and what changed, or why it was skipped."""

    source: str
    target: str | None
    changes: list[Change] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was de-identified and written."""
        return self.error is None


def report_dict(reports: Sequence[FileReport]) -> dict[str, Any]:
    """The de-identification report as JSON-ready data: counts, then one entry per file.

    Keys: ``profile``; ``files_total``, ``files_written``, ``files_skipped``; ``actions`` (count
    per action); ``attributes`` (per ``"(gggg,eeee) Keyword"``, count per action); ``files``
    (per file: ``source``, ``target``, ``error``, ``changes`` as tag, keyword, action).
    """
    actions: Counter[str] = Counter()
    attributes: dict[str, Counter[str]] = {}
    for report in reports:
        for change in report.changes:
            actions[change.action] += 1
            name = f"{change.tag} {change.keyword}".rstrip()
            attributes.setdefault(name, Counter())[change.action] += 1
    written = sum(1 for r in reports if r.ok)
    return {
        "profile": PROFILE_NAME,
        "files_total": len(reports),
        "files_written": written,
        "files_skipped": len(reports) - written,
        "actions": dict(sorted(actions.items())),
        "attributes": {k: dict(sorted(v.items())) for k, v in sorted(attributes.items())},
        "files": [
            {
                "source": r.source,
                "target": r.target,
                "error": r.error,
                "changes": [
                    {"tag": c.tag, "keyword": c.keyword, "action": c.action} for c in r.changes
                ],
            }
            for r in reports
        ],
    }


def write_report(reports: Sequence[FileReport], path: Path) -> None:
    """Write :func:`report_dict` of ``reports`` as JSON to ``path`` (parent folders are made).

    Raises:
        OSError: If the file cannot be written.
    """
    atomic_write_text(path, json.dumps(report_dict(reports), indent=2) + "\n")
