"""Loading scenarios and site configs from YAML, with one clear error naming the file and the field."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from fedcore.config.base import ConfigError, MissingDataFiles
from fedcore.config.data import CsvData, DataSource, DicomData, PacsData
from fedcore.config.scenario import Scenario, SiteConfig


def format_loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic error location as a field path, using site ids where possible."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                entry = node[item]
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    label = f"[{item}] (id {entry['id']!r})"
                node = entry
            else:
                node = None
            parts.append(label)
        else:
            if isinstance(node, dict):
                node = node.get(item)
            else:
                node = None
            if item in ("generated", "csv") and parts and parts[-1].lstrip(".") == "data":
                continue  # discriminator tag: the user wrote `kind`, not this
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


_QUOTED = re.compile(r"'([^']*)'")


def closest_choice(found: object, choices: list[str]) -> str | None:
    """The valid choice closest to a mistyped ``found`` (difflib), or ``None`` if none is close.

    Case differences count as close (``'Retail'`` -> ``'retail'``).
    """
    if not isinstance(found, str) or not choices:
        return None
    folded = {c.lower(): c for c in choices}
    if found.strip().lower() in folded:
        return folded[found.strip().lower()]
    match = difflib.get_close_matches(found.strip().lower(), list(folded), n=1, cutoff=0.6)
    return folded[match[0]] if match else None


def _suggestion(e: Any) -> str:
    """``"; did you mean 'retail'?"`` for a mistyped literal or data kind, else ``""``."""
    ctx = e.get("ctx") or {}
    if e["type"] == "literal_error":
        found, expected = e.get("input"), str(ctx.get("expected", ""))
    elif e["type"] == "union_tag_invalid":
        found, expected = ctx.get("tag"), str(ctx.get("expected_tags", ""))
    else:
        return ""
    best = closest_choice(found, _QUOTED.findall(expected))
    return f"; did you mean {best!r}?" if best is not None and best != found else ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names valid at ``loc`` (a pydantic location) inside ``model``, sorted.

    List indexes are skipped, and a data source's ``kind`` tag in the location picks its
    model out of the union. An unknown path gives ``[]``.
    """
    models = [model]
    for item in loc:
        if isinstance(item, int):
            continue
        tagged = [
            m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == item
        ]
        if tagged:
            models = tagged
            continue
        models = [
            inner
            for m in models
            if item in m.model_fields
            for inner in _models_in(m.model_fields[item].annotation)
        ]
    return sorted({name for m in models for name in m.model_fields})


def validation_message(
    err: ValidationError,
    data: Any,
    unknown_hint: str = "see docs/scenario.md",
    model: type[BaseModel] | None = None,
) -> str:
    """Every problem of a validation error, one line each, located by field path.

    A mistyped choice (a literal such as ``customer_mix`` or a data ``kind``) gets the
    closest valid one ("did you mean 'retail'?"), and so does an unknown field when
    ``model`` is given.

    Args:
        err: The pydantic error.
        data: The raw YAML data (to name list items by their ``id``).
        unknown_hint: What to say after "unknown field (check the spelling; ...".
        model: The model that was validated, to suggest field names for unknown fields.
    """
    lines = []
    for e in err.errors():
        loc = format_loc(tuple(e["loc"]), data)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field (check the spelling; {unknown_hint})"
            name = e["loc"][-1] if e["loc"] else None
            if model is not None and isinstance(name, str):
                best = closest_choice(name, known_fields(model, tuple(e["loc"][:-1])))
                if best is not None:
                    msg += f"; did you mean {best!r}?"
        elif e["type"] == "missing":
            msg = "required field is missing"
            if e["loc"][-2:-1] == ("columns",) and e["loc"][-1] in ("payer", "payee"):
                msg += (
                    "; data kind csv is the bank graph of payers and payees: for a table "
                    "without account ids (or in another schema) use data kind table with "
                    "task.dataset: table (see docs/data.md)"
                )
        found = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(found, dict | list):
            msg += f" (found {found!r})"
        lines.append(f"  {loc}: {msg}{_suggestion(e)}")
    n = len(lines)
    return f"{n} problem{'s' if n > 1 else ''}:\n" + "\n".join(lines)


MAX_YAML_BYTES = 1_048_576
"""Largest scenario or site file read (1 MiB); real ones are a few KiB."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings and lists in a scenario or site file (real ones: about 5)."""
MAX_YAML_NODES = 100_000
"""Most values a file may hold once every alias is expanded (guards against alias bombs)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys and nesting deeper than :data:`MAX_YAML_DEPTH`.

    The depth is counted while the document is composed, before any deep recursion, so a
    file nested thousands of levels deep gets a message, not a ``RecursionError``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep (mappings and lists); "
                    "a scenario needs about 5",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # e.g. 2024-02-30, an int of 5000 digits
            text = str(node.value) if isinstance(node, yaml.ScalarNode) else node.tag
            shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {shown!r}: {exc}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges, and keys written here override it on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: the safe loader reports it below
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    f"while reading the mapping at line {node.start_mark.line + 1}",
                    node.start_mark,
                    f"key {key!r} appears twice (first at line {first.start_mark.line + 1}); "
                    "keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` holds with every alias expanded (a shared node counts each time)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def _where(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"


def _decode(path: Path, raw: bytes) -> str:
    """The file's text: UTF-8 (a BOM is allowed) without control characters other than tab and newline."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            path,
            f"not UTF-8 text: byte {raw[exc.start : exc.start + 1]!r} at line {line}, column "
            f"{column}; expected a YAML text file saved as UTF-8",
        ) from None
    bad = _CONTROL.search(text)
    if bad is not None:
        raise ConfigError(
            path,
            f"control character {bad.group()!r} at {_where(text, bad.start())}; expected plain "
            "text (tabs and line breaks only): remove it, or quote it as an escape such as "
            '"\\u0007" if it is meant',
        )
    return text


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")


def parse_yaml_text(path: Path, text: str) -> Any:
    """Parse one YAML document strictly: safe tags only, no duplicate keys, bounded depth and size.

    Raises:
        ConfigError: naming the file, the line and column, and the problem.
    """
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        memo: dict[int, int] = {}
        size = _expanded_size(node, memo)
        if size > MAX_YAML_NODES:
            where = ""
            if isinstance(node, yaml.MappingNode) and node.value:
                key, _ = max(node.value, key=lambda kv: memo[id(kv[1])])
                where = f" (most under {key.value!r} at line {key.start_mark.line + 1})"
            raise ConfigError(
                path,
                f"its aliases (*name) expand to {size} values, more than the {MAX_YAML_NODES} "
                f"allowed{where}; write the values out, or reuse fewer anchors",
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, f"invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # e.g. a date such as 2024-02-30, or an integer of thousands of digits
        raise ConfigError(path, f"invalid YAML: cannot read a value: {exc}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """Read a scenario or site file: a YAML mapping, checked by :func:`parse_yaml_text`.

    The file must be at most :data:`MAX_YAML_BYTES`, UTF-8 (a BOM is allowed) and free of
    control characters other than tab and line breaks.

    Raises:
        ConfigError: naming the file and what is wrong (line and column where it has them).
    """
    if not path.exists():
        raise ConfigError(path, "file not found")
    if path.is_dir():
        raise ConfigError(path, "is a directory, expected a YAML file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc}") from exc
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(
            path,
            f"larger than {MAX_YAML_BYTES} bytes; a scenario or site file is a few KiB: "
            "is this the right file?",
        )
    data = parse_yaml_text(path, _decode(path, raw))
    if data is None:
        raise ConfigError(path, "line 1: the file holds no YAML document (it is empty)")
    if not isinstance(data, dict):
        found = {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
            type(data), type(data).__name__
        )
        raise ConfigError(
            path,
            f"line 1: expected a mapping at the top level (fields such as name: and sites:), "
            f"found {found}",
        )
    return data


def is_site_file(data: Any) -> bool:
    """Whether raw YAML ``data`` is a site file (what ``fed-client start --site`` reads), not a scenario.

    A scenario lists ``sites``; a site file has none, and names its own ``id`` (or a
    ``state_dir``, which only a site file has).
    """
    return isinstance(data, dict) and "sites" not in data and bool({"id", "state_dir"} & set(data))


def _resolve_csv_paths(data: dict[str, Any], sites: list[Any], base: Path) -> None:
    for site in sites:
        src = site.get("data") if isinstance(site, dict) else None
        if not isinstance(src, dict):
            continue
        keys = {
            "csv": ("path",),
            "table": ("path",),
            "dicom": ("path", "candidates"),
            "pacs": ("candidates",),
        }
        for key in keys.get(str(src.get("kind")), ()):
            if isinstance(src.get(key), str):
                p = Path(src[key]).expanduser()
                src[key] = str(p if p.is_absolute() else (base / p).resolve())


def _resolve_scheduler_paths(data: dict[str, Any], base: Path) -> None:
    """Make ``scheduler.predictor.model`` and ``scheduler.scaling.model`` relative to the scenario."""
    sched = data.get("scheduler")
    if not isinstance(sched, dict):
        return
    for section in ("predictor", "scaling"):
        part = sched.get(section)
        if isinstance(part, dict) and isinstance(part.get("model"), str):
            p = Path(part["model"]).expanduser()
            part["model"] = str(p if p.is_absolute() else (base / p).resolve())


def _check_files(path: Path, sites: list[tuple[str, DataSource]]) -> None:
    problems = []
    for label, src in sites:
        if isinstance(src, CsvData) and not src.path.is_file():
            problems.append(f"  {label}.data.path: file not found: {src.path}")
        if isinstance(src, DicomData) and not src.path.exists():
            problems.append(f"  {label}.data.path: no such folder or DICOMDIR: {src.path}")
        if isinstance(src, DicomData | PacsData) and not src.candidates.is_file():
            problems.append(f"  {label}.data.candidates: file not found: {src.candidates}")
    if problems:
        n = len(problems)
        raise MissingDataFiles(path, f"{n} problem{'s' if n > 1 else ''}:\n" + "\n".join(problems))


def load_scenario(path: Path | str, *, check_files: bool = True) -> Scenario:
    """Load and validate a scenario YAML file.

    Args:
        path: The scenario file.
        check_files: Also check that every CSV data file exists.

    Returns:
        The validated scenario.

    Raises:
        ConfigError: naming the file and each bad field path.
    """
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data.get("sites"), list):
        _resolve_csv_paths(data, data["sites"], path.resolve().parent)
    _resolve_scheduler_paths(data, path.resolve().parent)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, validation_message(exc, data, model=Scenario)) from None
    if check_files:
        _check_files(
            path, [(f"sites[{i}] (id {s.id!r})", s.data) for i, s in enumerate(scenario.sites)]
        )
    return scenario


def load_site_config(path: Path | str, *, check_files: bool = True) -> SiteConfig:
    """Load and validate a site config YAML (what ``fed-client start --site`` reads).

    Raises:
        ConfigError: naming the file and each bad field path.
    """
    path = Path(path)
    data = read_yaml(path)
    base = path.resolve().parent
    _resolve_csv_paths(data, [data], base)
    if isinstance(data.get("state_dir"), str):
        sd = Path(data["state_dir"]).expanduser()
        data["state_dir"] = str(sd if sd.is_absolute() else (base / sd).resolve())
    history = data.get("history")
    if isinstance(history, dict) and isinstance(history.get("database"), str):
        db = Path(history["database"]).expanduser()
        history["database"] = str(db if db.is_absolute() else (base / db).resolve())
    try:
        cfg = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            path, validation_message(exc, data, "see docs/scenario.md, Site files", SiteConfig)
        ) from None
    if check_files:
        _check_files(path, [("(site)", cfg.data)])
    return cfg


def dump_site_config(cfg: SiteConfig, path: Path) -> None:
    """Write a site config as YAML (used by ``fedcore run --engine deployment``), owner-only (0600)."""
    from fedcore.storage import atomic_write_text

    text = yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
    atomic_write_text(path, text)
