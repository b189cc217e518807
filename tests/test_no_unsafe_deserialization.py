"""No package deserializes with pickle or anything that can run code while it loads.

Model updates, checkpoints, predictor weights and configs cross machines; a loader that
unpickles (``pickle``/``dill``/``marshal``/``joblib``, ``torch.load`` without
``weights_only=True``, ``numpy.load`` without ``allow_pickle=False``, ``yaml.load`` without a
safe loader) would run whatever code the sender put in the bytes. The checker reads each
module's syntax tree (so comments and docstrings never count), resolves import aliases, and
reports every unsafe call as ``file:line``. An exception goes in :data:`ALLOWED`, with why it
is safe.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The packages checked.
PACKAGES = ("fedcore", "secure", "clients", "coordinator", "scheduling")

#: Calls that unpickle (or run code) whatever their arguments: never allowed.
ALWAYS_UNSAFE = frozenset(
    f"{module}.{name}"
    for module, names in {
        "pickle": ("load", "loads", "Unpickler"),
        "_pickle": ("load", "loads", "Unpickler"),
        "cPickle": ("load", "loads", "Unpickler"),
        "cloudpickle": ("load", "loads"),
        "dill": ("load", "loads", "Unpickler"),
        "marshal": ("load", "loads"),
        "shelve": ("open",),
        "joblib": ("load",),
        "pandas": ("read_pickle",),
        "jsonpickle": ("decode",),
        "yaml": ("unsafe_load", "unsafe_load_all", "full_load", "full_load_all"),
        "torch.serialization": ("_load",),
    }.items()
    for name in names
)

#: ``yaml`` loaders that build only plain data.
SAFE_YAML_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})

#: Exceptions: ``(path relative to the repository, the call's source line, stripped)`` ->
#: why it is safe. An entry that matches nothing fails the test (it would hide a future call).
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Finding:
    """One unsafe call: where, what, and why it is unsafe."""

    path: str
    line: int
    call: str
    why: str
    source: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}: {self.why}  [{self.source}]"


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it was imported as (``np`` -> ``numpy``, ``l`` -> ``pickle.loads``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load`` (through the module's imports), or ``None``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _unsafe(call: ast.Call, name: str, aliases: dict[str, str]) -> str | None:
    """Why ``call`` (to ``name``) deserializes unsafely, or ``None``."""
    if name in ALWAYS_UNSAFE:
        return "unpickles (or runs code from) its input"
    if name in ("torch.load", "torch.serialization.load"):
        if not _is_constant(_keyword(call, "weights_only"), True):
            return "torch.load unpickles unless weights_only=True"
    if name == "numpy.load" and not _is_constant(_keyword(call, "allow_pickle"), False):
        return "numpy.load must say allow_pickle=False (received bytes must never unpickle)"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        loader_name = _dotted(loader, aliases) if loader is not None else None
        if loader_name is None or loader_name.rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
            return "yaml.load without a safe loader builds arbitrary objects (use yaml.safe_load)"
    allow = _keyword(call, "allow_pickle")
    if allow is not None and not _is_constant(allow, False):
        return "allow_pickle other than False"
    return None


def find_unsafe(source: str, path: str = "<snippet>") -> list[Finding]:
    """Every unsafe deserializing call in ``source`` (Python), in line order."""
    tree = ast.parse(source, filename=path)
    aliases = _aliases(tree)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        why = _unsafe(node, name, aliases)
        if why is not None:
            text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
            found.append(Finding(path, node.lineno, name or "<call>", why, text))
    return sorted(found, key=lambda f: f.line)


def package_files(root: Path = ROOT) -> Iterator[Path]:
    """The checked packages' Python files under ``root``."""
    for package in PACKAGES:
        yield from sorted((root / package).rglob("*.py"))


def scan(root: Path = ROOT) -> tuple[int, list[Finding]]:
    """``(files read, findings)`` of the packages under ``root``; paths relative to it."""
    files = list(package_files(root))
    findings = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        findings += find_unsafe(path.read_text(encoding="utf-8"), rel)
    return len(files), findings


# --------------------------------------------------------------------------- the matcher


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(data)",
        "import pickle as pk\nobj = pk.load(fh)",
        "from pickle import loads\nloads(blob)",
        "from pickle import loads as undo\nundo(blob)",
        "import cPickle\ncPickle.loads(b)",
        "import dill\ndill.load(f)",
        "import marshal\nmarshal.loads(code)",
        "import joblib\nmodel = joblib.load(path)",
        "import torch\ntorch.load(path)",
        "import torch\nstate = torch.load(\n    io.BytesIO(data),\n    map_location='cpu',\n)",
        "import torch\ntorch.load(path, weights_only=False)",
        "import torch\ntorch.load(path, weights_only=flag)",
        "from torch import load\nload(path)",
        "import numpy as np\nnp.load(io.BytesIO(received))",
        "import numpy as np\nnp.load(buf, allow_pickle=True)",
        "import numpy\nnumpy.save(path, arr, allow_pickle=True)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.load(text, yaml.UnsafeLoader)",
        "import yaml\nyaml.full_load(text)",
        "import yaml\nyaml.unsafe_load(text)",
        "import pandas as pd\npd.read_pickle(path)",
    ],
)
def test_the_checker_flags_unsafe_loads(snippet: str) -> None:
    found = find_unsafe(snippet)
    assert len(found) == 1, (snippet, found)
    assert found[0].line == 2  # every snippet's call starts on its second line
    assert str(found[0]).startswith("<snippet>:2: ")


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(path, weights_only=True)",
        "import torch\ntorch.load(\n    io.BytesIO(data),\n    weights_only=True,\n)",
        "import numpy as np\nnp.load(buf, allow_pickle=False)",
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
        "import json\njson.loads(text)",
        "# pickle.loads(data) in a comment\nx = 1",
        '"""torch.load(path) in a docstring"""',
        "import pickle\npickle.dumps(obj)",
        "obj.load(path)",
    ],
)
def test_the_checker_passes_safe_loads(snippet: str) -> None:
    assert find_unsafe(snippet) == []


def test_a_multiline_call_is_reported_at_its_first_line() -> None:
    found = find_unsafe("import torch\n\nstate = torch.load(\n    io.BytesIO(data),\n)\n", "m.py")
    assert [(f.path, f.line, f.call) for f in found] == [("m.py", 3, "torch.load")]
    assert found[0].source == "state = torch.load("


# --------------------------------------------------------------------------- the packages


def test_the_scan_names_the_file_and_line_of_a_bad_module(tmp_path: Path) -> None:
    (tmp_path / "coordinator" / "state").mkdir(parents=True)
    (tmp_path / "coordinator" / "state" / "resume.py").write_text(
        '"""Resume."""\n\nimport pickle\n\n\ndef resume(blob):\n    return pickle.loads(blob)\n'
    )
    (tmp_path / "fedcore").mkdir()
    (tmp_path / "fedcore" / "fine.py").write_text("import json\njson.loads('{}')\n")
    count, findings = scan(tmp_path)
    assert count == 2
    assert [str(f).split(": ")[0] for f in findings] == ["coordinator/state/resume.py:7"]


def test_no_package_deserializes_unsafely() -> None:
    count, findings = scan()
    assert count > 50, "the packages were not found: the check would prove nothing"
    used = {(f.path, f.source) for f in findings} & set(ALLOWED)
    unexplained = [f for f in findings if (f.path, f.source) not in ALLOWED]
    assert unexplained == [], (
        "unsafe deserialization (use torch.load(..., weights_only=True), "
        "numpy.load(..., allow_pickle=False), yaml.safe_load, safetensors or JSON; or add an "
        "entry to ALLOWED that says why it is safe):\n  " + "\n  ".join(map(str, unexplained))
    )
    stale = sorted(set(ALLOWED) - used)
    assert stale == [], f"ALLOWED entries that match no call any more: {stale}"
    assert all(reason.strip() for reason in ALLOWED.values()), "every exception says why"
