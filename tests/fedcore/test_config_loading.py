"""Scenario and site files as hostile input: duplicate keys, depth, size, encoding, aliases, tags, names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from fedcore.config import ConfigError, load_scenario, load_site_config
from fedcore.config.loading import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES

GOOD = textwrap.dedent(
    """
    name: tiny
    rounds: 2
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 300}}
      - {id: bank-b, data: {kind: generated, transactions: 300}}
    """
)
SITE = "id: bank-a\ndata: {kind: generated, transactions: 300}\n"


def _error(tmp_path: Path, text: str | bytes, name: str = "s.yaml") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert err.value.path == str(path)
    return err.value.message


def test_the_good_file_loads(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(GOOD)
    assert load_scenario(tmp_path / "s.yaml").name == "tiny"


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("privacy:\n  mode: ckks\n  mode: plaintext\n", "mode", 9, 8),
        ("rounds: 3\n", "rounds", 7, 3),  # top level: GOOD sets rounds on line 3
        ("task: {hidden: 8, hidden: 16}\n", "hidden", 7, 7),
    ],
)
def test_duplicate_keys_are_refused_at_any_depth(
    tmp_path: Path, text: str, key: str, line: int, first: int
) -> None:
    msg = _error(tmp_path, GOOD + text)
    assert f"key {key!r} appears twice (first at line {first})" in msg
    assert f"at line {line}" in msg


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = GOOD.replace(
        "sites:\n",
        "sites:\n  - &a {id: bank-c, data: {kind: generated, transactions: 300}}\n"
        "  - {<<: *a, id: bank-d}\n",
    )
    (tmp_path / "s.yaml").write_text(text)
    assert [s.id for s in load_scenario(tmp_path / "s.yaml").sites][:2] == ["bank-c", "bank-d"]


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 500, 5000])
def test_deep_nesting_is_refused_before_recursion(tmp_path: Path, depth: int) -> None:
    flow = GOOD + "description: " + "[" * depth + "]" * depth + "\n"
    block = GOOD + "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v: 1\n"
    for text in (flow, block) if depth <= 500 else (flow,):  # 5000 levels of block: > 1 MiB
        msg = _error(tmp_path, text)
        assert f"nested more than {MAX_YAML_DEPTH} levels deep" in msg


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    msg = _error(tmp_path, GOOD + "\n".join(lines) + "\n")
    assert f"more than the {MAX_YAML_NODES} allowed" in msg


def test_python_tags_are_refused(tmp_path: Path) -> None:
    msg = _error(tmp_path, "name: !!python/object/apply:os.system ['true']\n" + GOOD[12:])
    assert "could not determine a constructor" in msg and "line 1" in msg


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    msg = _error(tmp_path, GOOD + "# " + "x" * MAX_YAML_BYTES + "\n")
    assert f"larger than {MAX_YAML_BYTES} bytes" in msg


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (GOOD.encode() + b"description: caf\xe9\n", "line 7, column 17"),
        (b"\xff\xfe" + GOOD.encode("utf-16-le"), "line 1, column 1"),
    ],
)
def test_not_utf8_names_line_and_column(tmp_path: Path, raw: bytes, where: str) -> None:
    msg = _error(tmp_path, raw)
    assert "not UTF-8 text" in msg and where in msg


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f"])
def test_control_characters_are_refused(tmp_path: Path, char: str) -> None:
    msg = _error(tmp_path, GOOD + f"description: a{char}b\n")
    assert f"control character {char!r} at line 7, column 15" in msg


def test_a_bom_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_scenario(tmp_path / "s.yaml").name == "tiny"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("description: 2024-02-30\n", "'2024-02-30'"),
        ("seed: " + "9" * 5000 + "\n", "5000 characters"),
    ],
)
def test_unreadable_scalars_name_their_line(tmp_path: Path, text: str, found: str) -> None:
    msg = _error(tmp_path, GOOD + text)
    assert "at line 7" in msg and found in msg


@pytest.mark.parametrize(
    "name", ["../../etc", "a/b", "/abs", "..", ".hidden", "with space", "x" * 65, "naïve", ""]
)
def test_unsafe_scenario_names_are_refused(tmp_path: Path, name: str) -> None:
    msg = _error(tmp_path, GOOD.replace("name: tiny", f"name: {name!r}"))
    assert "name:" in msg
    assert "letters, digits, '.', '_' and '-'" in msg or "at least 1 character" in msg


@pytest.mark.parametrize("name", ["bank-fraud", "a", "Run_2.1", "x" * 64])
def test_safe_scenario_names_load(tmp_path: Path, name: str) -> None:
    (tmp_path / "s.yaml").write_text(GOOD.replace("name: tiny", f"name: {name}"))
    assert load_scenario(tmp_path / "s.yaml").name == name


def test_site_files_get_the_same_loader(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    assert load_site_config(path).id == "bank-a"
    for text, expected in [
        (SITE + "id: bank-b\n", "key 'id' appears twice"),
        (SITE + "device: " + "[" * 100 + "]" * 100 + "\n", "nested more than"),
        (SITE + "device: a\x00\n", "control character"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_site_config(path)


def test_a_dumped_site_file_is_private_and_reads_back(tmp_path: Path) -> None:
    import stat

    from fedcore.config import SiteConfig, dump_site_config

    path = tmp_path / "sites" / "bank-a.yaml"
    dump_site_config(load_site_config(_site_file(tmp_path)), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_site_config(path) == SiteConfig.model_validate(yaml.safe_load(SITE))


def _site_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.yaml"
    path.write_text(SITE)
    return path
