"""Dependencies point one way (DESIGN.md): checked on every import statement of the packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedcore", "secure", "clients", "coordinator", "scheduling")
ALLOWED = {
    "fedcore": {"fedcore"},
    "secure": {"fedcore", "secure"},
    "scheduling": {"fedcore", "scheduling"},
    "clients": {"fedcore", "secure", "clients"},
    "coordinator": {"fedcore", "secure", "scheduling", "coordinator"},
}
# the composition root (the command line) and the Flower app shim may wire everything together
EXEMPT = ("fedcore/cli/",)


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(EXEMPT):
            continue
        for dep in imported_packages(path) - ALLOWED[package]:
            bad.append(f"{rel} imports {dep}")
    assert not bad, "\n".join(bad)


def test_only_the_command_line_imports_the_command_line() -> None:
    """``fedcore/cli`` is the composition root: engines and libraries never import it."""
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(EXEMPT):
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                bad += [f"{rel} imports {n}" for n in names if n.startswith("fedcore.cli")]
    assert not bad, "\n".join(bad)
