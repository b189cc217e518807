"""``fedcore validate`` on mutated scenario files and site CSVs: exit 0 or 2, a message naming the file, never a crash.

Every example goes through the command in-process (typer's ``CliRunner``), the first
refused ones of each kind through ``fedcore run`` too (it must refuse them the same way,
before writing anything), and a few through a real ``fedcore validate`` process. An example *crashes* when it raises, exits
with another code than 0 or 2, prints a traceback, refuses without naming the file (and
a line, column or field), takes longer than :data:`TIME_BOUND_S`, or (the subprocesses)
peaks above :data:`MEMORY_BOUND_MB` resident. Each test prints its counts (accepted /
refused / crashed) and asserts that none crashed.

The examples are seeded: a run is reproducible. The default, a few hundred of each kind,
takes about a minute on 2 cores. A longer run scales every count::

    FEDCORE_FUZZ_SCALE=15 FEDCORE_FUZZ_SEED=7 \\
        python -m pytest -q tests/fedcore/cli/test_fuzz_validate.py

(300 mutated files of each kind, scenarios and CSVs, times ``FEDCORE_FUZZ_SCALE``, which
every fuzz suite shares; ``FEDCORE_FUZZ_SEED`` picks other mutations.)
"""

from __future__ import annotations

import dataclasses
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fedcore.config import GeneratedData
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions

pytestmark = pytest.mark.fuzz

EXAMPLES = round(300 * float(os.environ.get("FEDCORE_FUZZ_SCALE", "1")))
SEED = int(os.environ.get("FEDCORE_FUZZ_SEED", "20261207"))
TIME_BOUND_S = 20.0
"""Longest one in-process validation may take (generous: CI machines are shared)."""
MEMORY_BOUND_MB = 1024
"""Largest resident memory a ``fedcore validate`` process may peak at."""
GROWTH_BOUND_MB = 1024
"""How much the test process's peak resident memory may grow over all in-process examples."""

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "scenarios").glob("*.yaml"))
FEATURES = ["channel_online", "card_present", "hour_of_day", "account_age_days"]

WEIRD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    10**30,
    -(10**30),
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    3.5,
    "",
    "x" * 10_000,
    "ünïcödé ☃ \u202e",
    "../../etc/passwd",
    "bank a",
    [],
    {},
    [1, [2, [3]]],
    {"kind": "csv"},
    "2024-02-30",
]
WEIRD_CELLS = [
    "1_000",
    "0x1F",
    "-1",
    "1e309",
    "-1e308",
    "",
    "nan",
    "inf",
    "∞",
    "12,5",
    "١٢",
    '"',
    "9999-12-31T23:59:59Z",
    "1969-07-20",
    "2",
    "x" * 500,
    "\x00",
    "\ufeff",
]


@dataclasses.dataclass
class Outcome:
    """What one example did."""

    name: str
    kind: str  # accepted | refused | crashed
    why: str = ""


class Tally:
    """Counts of accepted, refused and crashed examples, with the crashes' reasons."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def report(self) -> Counter[str]:
        counts = Counter(o.kind for o in self.outcomes)
        print(
            f"\n{self.what}: {len(self.outcomes)} examples: accepted {counts['accepted']}, "
            f"refused {counts['refused']}, crashed {counts['crashed']}"
        )
        accepted = Counter(
            o.name.split("(", 1)[-1].rstrip(")") for o in self.outcomes if o.kind == "accepted"
        )
        if accepted:
            print("  accepted: " + ", ".join(f"{what} x{n}" for what, n in accepted.most_common()))
        for o in self.outcomes:
            if o.kind == "crashed":
                print(f"  CRASH {o.name}: {o.why[:2000]}")
        return counts


def _judge(
    name: str,
    exit_code: int,
    output: str,
    exc: BaseException | None,
    names: list[str],
    seconds: float,
) -> Outcome:
    """Sort one run into accepted / refused / crashed (see the module docstring)."""
    if exc is not None and not isinstance(exc, SystemExit):
        return Outcome(name, "crashed", f"{type(exc).__name__}: {exc}")
    if "Traceback" in output:
        return Outcome(name, "crashed", "traceback printed:\n" + output)
    if seconds > TIME_BOUND_S:
        return Outcome(name, "crashed", f"took {seconds:.1f} s > {TIME_BOUND_S} s")
    if exit_code == 0:
        return Outcome(name, "accepted")
    if exit_code != 2:
        return Outcome(name, "crashed", f"exit {exit_code}: {output}")
    flat = " ".join(output.split())
    if not any(n in flat for n in names):
        return Outcome(name, "crashed", f"refused without naming {names}: {output}")
    after = flat.split(next(n for n in names if n in flat), 1)[1]
    if not any(word in after for word in ("line", "column", ":")):
        return Outcome(name, "crashed", f"refused without a field, line or column: {output}")
    return Outcome(name, "refused")


def _validate_in_process(path: Path, names: list[str]) -> Outcome:
    from fedcore.cli.main import app

    start = time.perf_counter()
    res = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    seconds = time.perf_counter() - start
    return _judge(path.name, res.exit_code, res.output, res.exception, names, seconds)


RUN_EXAMPLES = 15
"""How many refused files of each kind also go through ``fedcore run`` (it must refuse them too)."""


def _run_in_process(path: Path, names: list[str], out: Path) -> Outcome:
    """``fedcore run`` on a file that validate refused: exit 2 naming the file, nothing run."""
    from fedcore.cli.main import app

    start = time.perf_counter()
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out)], env={"COLUMNS": "200"})
    seconds = time.perf_counter() - start
    outcome = _judge(f"run {path.name}", res.exit_code, res.output, res.exception, names, seconds)
    if outcome.kind == "accepted":
        return Outcome(outcome.name, "crashed", "fedcore run accepted what validate refused")
    if out.exists():
        return Outcome(outcome.name, "crashed", f"fedcore run wrote {out} for a refused file")
    return outcome


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- scenario mutations -----------------------------------------------------------------


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            paths += _leaf_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            paths += _leaf_paths(v, (*prefix, i))
    return paths


def _set_at(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _del_at(node: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _flip_bytes(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 12)):
        i = rng.randrange(len(data))
        op = rng.random()
        if op < 0.5:
            data[i] = rng.randrange(256)
        elif op < 0.75:
            del data[i]
        else:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(data)


def _scenario_mutation(base: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutated scenario: ``(what was done, the file's bytes)``."""
    data = yaml.safe_load(base)
    text = base.decode()
    choice = rng.randrange(14)
    if choice in (0, 1, 2):  # a value of another type, or out of range
        path = rng.choice(_leaf_paths(data))
        value = rng.choice(WEIRD_VALUES)
        _set_at(data, path, value)
        return f"set {path} to {str(value)[:30]!r}", _dump(data).encode()
    if choice == 3:
        path = rng.choice(_leaf_paths(data))
        _del_at(data, path)
        return f"delete {path}", _dump(data).encode()
    if choice == 4:
        data[rng.choice(["roudns", "privacy_mode", "x", "sites2"])] = rng.choice(WEIRD_VALUES)
        return "unknown key", _dump(data).encode()
    if choice == 5:
        depth = rng.choice([31, 33, 100, 500, 5000, 50_000])
        return f"nested {depth}", (text + "description: " + "[" * depth + "]" * depth).encode()
    if choice == 6:
        width = rng.randint(3, 12)
        lines = ["b0: &b0 [" + ", ".join(["lol"] * width) + "]"]
        lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]" for i in range(1, 9)]
        return f"alias bomb {width}^9", (text + "\n".join(lines) + "\n").encode()
    if choice == 7:  # a line of the file again: a duplicate key wherever it lands
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        lines.insert(rng.randint(i, len(lines)), lines[i])
        return f"line {i + 1} repeated", "\n".join(lines).encode()
    if choice in (8, 9, 10):
        return "byte flips", _flip_bytes(base, rng)
    if choice == 11:
        extra = rng.choice(
            [
                "rounds: 1e999\n",
                "seed: " + "9" * rng.choice([100, 4299, 5000]) + "\n",
                "name: !!python/object/apply:os.system ['true']\n",
                "rounds: !!binary aGVsbG8=\n",
                "description: \x07\n",
                "seed: 2024-02-30\n",
                "? [a, b]\n: 1\n",
                "<<: *nowhere\n",
            ]
        )
        return f"appended {extra[:20]!r}", (text + extra).encode()
    if choice == 12:
        return "unicode", rng.choice(
            [
                b"\xef\xbb\xbf" + base,
                text.encode("utf-16"),
                text.replace("bank", "b\u0430nk").encode(),
                base + b"\xc3\x28\n",
                text.replace("name: ", "name: \u202e", 1).encode(),
            ]
        )
    return "whole file", rng.choice(
        [
            b"",
            b"# only a comment\n",
            b"- a\n- b\n",
            b"42\n",
            b"---\na: 1\n---\nb: 2\n",
            b"\x00" * 64,
        ]
    )


# --- CSV mutations ----------------------------------------------------------------------


def _csv_mutation(lines: list[str], rng: random.Random) -> tuple[str, bytes]:
    """One mutated site CSV: ``(what was done, the file's bytes)``."""
    header = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1:]]

    def joined(rs: list[list[str]], head: list[str] | None = None, sep: str = ",") -> bytes:
        return ("\n".join(sep.join(r) for r in [head or header, *rs]) + "\n").encode()

    choice = rng.randrange(16)
    if choice in (0, 1, 2, 3):  # a strange cell
        for _ in range(rng.randint(1, 3)):
            r, c = rng.randrange(len(rows)), rng.randrange(len(header))
            rows[r][c] = rng.choice(WEIRD_CELLS)
        return "weird cells", joined(rows)
    if choice == 4:
        return "structure", rng.choice(
            [
                b"",
                lines[0].encode() + b"\n",
                b"\n\n  \n",
                joined(rows, sep=";"),
                joined(rows, sep="\t"),
            ]
        )
    if choice == 5:
        return "binary garbage", bytes(rng.randrange(256) for _ in range(rng.randint(1, 5000)))
    if choice == 6:
        i = rng.randrange(len(rows))
        return "repeated row or id", joined(
            [*rows, rows[i]]
            if rng.random() < 0.5
            else [*rows, [rows[i][0], *rows[(i + 1) % len(rows)][1:]]]
        )
    if choice == 7:
        order = rows[:]
        rng.shuffle(order)
        return "rows shuffled", joined(order)
    if choice == 8:
        col = header.index("timestamp")
        r = rng.randrange(len(rows))
        rows[r][col] = rng.choice(
            ["2999-01-01T00:00:00Z", "32503680000", "1709296200000", "0", "-5"]
        )
        return "timestamp out of range", joined(rows)
    if choice == 9:
        col = header.index("label")
        one = rng.choice(["0", "1"])
        return f"all labels {one}", joined([[*r[:col], one, *r[col + 1 :]] for r in rows])
    if choice == 10:
        head = header[:]
        op = rng.randrange(3)
        if op == 0:
            head.append(rng.choice(header))  # a column named twice
            return "header column twice", joined([[*r, "1"] for r in rows], head)
        if op == 1:
            del head[rng.randrange(len(head))]
            return "header column missing", joined(rows, head)
        return "extra field", joined([[*r, "x"] if i % 7 == 3 else r for i, r in enumerate(rows)])
    if choice == 11:
        return "BOM", b"\xef\xbb\xbf" + joined(rows)
    if choice == 12:
        raw = joined(rows)
        return "truncated", raw[: rng.randrange(len(raw))]
    if choice == 13:
        return "byte flips", _flip_bytes(joined(rows), rng)
    if choice == 14:  # characters inserted: quotes, delimiters, line breaks, NUL
        text = joined(rows).decode()
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(text))
            text = (
                text[:i]
                + rng.choice(['"', ",", "\n", "\r", "\x00", "\t", "é", "\u2028"])
                + text[i:]
            )
        return "characters inserted", text.encode()
    lines2 = [",".join(r) for r in rows]
    i = rng.randrange(len(lines2))
    lines2[i], lines2[-1 - i] = lines2[-1 - i], lines2[i]
    del lines2[rng.randrange(len(lines2))]
    return "lines swapped and dropped", ("\n".join([lines[0], *lines2]) + "\n").encode()


# --- fixtures and tests -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bank_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[str]]:
    """A valid generated CSV: its path, its column mapping (as YAML data) and its lines."""
    tx = generate_transactions(GeneratedData(transactions=200, fraud_rate=0.05), seed=5)
    path = tmp_path_factory.mktemp("bank") / "bank.csv"
    mapping = write_transactions_csv(tx, path)
    return path, mapping.model_dump(exclude_none=True), path.read_text().splitlines()


def _csv_scenario(csv_name: str, columns: dict[str, Any], name: str = "fuzz") -> str:
    site = {"id": "bank-c", "data": {"kind": "csv", "path": csv_name, "columns": columns}}
    return _dump(
        {
            "name": name,
            "rounds": 2,
            "sites": [
                {"id": "bank-a", "data": {"kind": "generated", "transactions": 300}},
                site,
            ],
            "task": {"features": FEATURES},
        }
    )


def test_shipped_scenarios_and_the_base_csv_are_accepted(
    tmp_path: Path, bank_csv: tuple[Path, dict[str, Any], list[str]]
) -> None:
    shutil.copytree(REPO / "scenarios", tmp_path / "scenarios")
    for path in SHIPPED:
        outcome = _validate_in_process(tmp_path / "scenarios" / path.name, [path.name])
        if "../data/real/" in path.read_text():
            # public data prepared by benchmarks/real_data.py (tests/benchmarks/test_real_data.py
            # validates these on prepared stand-ins): unprepared, they are refused, not crashed
            assert outcome.kind == "refused", outcome
            continue
        assert outcome.kind == "accepted", outcome
    csv, columns, _ = bank_csv
    (tmp_path / "base.yaml").write_text(_csv_scenario(str(csv), columns))
    assert _validate_in_process(tmp_path / "base.yaml", ["base.yaml"]).kind == "accepted"


def test_mutated_scenarios(
    tmp_path: Path, bank_csv: tuple[Path, dict[str, Any], list[str]]
) -> None:
    shutil.copytree(REPO / "scenarios", tmp_path / "scenarios")
    csv, columns, _ = bank_csv
    bases = [p.read_bytes() for p in SHIPPED] + [_csv_scenario(str(csv), columns).encode()]
    rng = random.Random(SEED)
    tally = Tally("mutated scenario files")
    runs: Counter[str] = Counter()
    before = _peak_mb()
    for i in range(EXAMPLES):
        what, raw = _scenario_mutation(rng.choice(bases), rng)
        path = tmp_path / "scenarios" / f"fuzz-{i}.yaml"
        path.write_bytes(raw)
        outcome = _validate_in_process(path, [path.name])
        outcome.name = f"{path.name} ({what})"
        tally.add(outcome)
        if outcome.kind == "refused" and runs.total() < RUN_EXAMPLES:
            ran = _run_in_process(path, [path.name], tmp_path / "out")
            runs[ran.kind] += 1
            if ran.kind == "crashed":
                tally.add(ran)
        path.unlink()
    counts = tally.report()
    print(f"  fedcore run on {runs.total()} of the refused files: refused {runs['refused']}")
    growth = _peak_mb() - before
    print(f"  peak resident memory grew by {growth:.0f} MB")
    assert counts["crashed"] == 0
    assert runs["refused"] == runs.total() == min(RUN_EXAMPLES, counts["refused"])
    assert counts["refused"] >= EXAMPLES // 2  # the mutations do break most files
    assert growth < GROWTH_BOUND_MB


def test_mutated_site_csvs(
    tmp_path: Path, bank_csv: tuple[Path, dict[str, Any], list[str]]
) -> None:
    _, columns, lines = bank_csv
    rng = random.Random(SEED + 1)
    tally = Tally("mutated site CSVs")
    runs: Counter[str] = Counter()
    before = _peak_mb()
    for i in range(EXAMPLES):
        what, raw = _csv_mutation(lines, rng)
        csv = tmp_path / f"bank-{i}.csv"
        csv.write_bytes(raw)
        if i % 2:  # a site file, as fed-client reads it
            config = tmp_path / f"site-{i}.yaml"
            config.write_text(
                _dump(
                    {"id": "bank-c", "data": {"kind": "csv", "path": csv.name, "columns": columns}}
                )
            )
        else:
            config = tmp_path / f"scenario-{i}.yaml"
            config.write_text(_csv_scenario(csv.name, columns))
        outcome = _validate_in_process(config, [csv.name])
        outcome.name = f"{csv.name} ({what})"
        tally.add(outcome)
        scenario = not i % 2  # fedcore run takes scenarios only
        if scenario and outcome.kind == "refused" and runs.total() < RUN_EXAMPLES:
            ran = _run_in_process(config, [csv.name], tmp_path / "out")
            runs[ran.kind] += 1
            if ran.kind == "crashed":
                tally.add(ran)
        csv.unlink()
        config.unlink()
    counts = tally.report()
    print(f"  fedcore run on {runs.total()} of the refused files: refused {runs['refused']}")
    growth = _peak_mb() - before
    print(f"  peak resident memory grew by {growth:.0f} MB")
    assert counts["crashed"] == 0
    # fedcore run takes the scenario files only (every other example): it refused each one
    assert runs["refused"] == runs.total() > 0
    assert counts["refused"] >= EXAMPLES // 2
    assert growth < GROWTH_BOUND_MB


def _fedcore() -> list[str]:
    script = Path(sys.executable).parent / "fedcore"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fedcore.cli.main"]


def _subprocess_cases(
    tmp_path: Path, bank_csv: tuple[Path, dict[str, Any], list[str]]
) -> list[tuple[Path, str, int]]:
    """``(file to validate, name its refusal must show, expected exit code)``."""
    _, columns, lines = bank_csv
    base = SHIPPED[0].read_text()
    cases: list[tuple[Path, str, int]] = []

    def scenario(name: str, text: str | bytes, expect: int = 2) -> None:
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append((path, name, expect))

    def csv_case(name: str, raw: bytes, expect: int = 2) -> None:
        (tmp_path / name).write_bytes(raw)
        config = tmp_path / f"{name}.yaml"
        config.write_text(_csv_scenario(name, columns))
        cases.append((config, name, expect))

    scenario("deep.yaml", base + "description: " + "[" * 50_000 + "]" * 50_000 + "\n")
    bomb = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    scenario("bomb.yaml", base + "\n".join(bomb) + "\n")
    scenario("dupe.yaml", base + "privacy:\n  mode: ckks\n  mode: plaintext\n")
    scenario("escape.yaml", base.replace("name: bank-fraud", "name: ../../outside", 1))
    good = ("\n".join(lines) + "\n").encode()
    csv_case("good.csv", good, 0)
    csv_case("long.csv", good + b"x" * 10_000_000 + b"\n")
    csv_case("garbage.csv", bytes(random.Random(SEED).randrange(256) for _ in range(200_000)))
    return cases


def test_a_real_fedcore_validate_process(
    tmp_path: Path, bank_csv: tuple[Path, dict[str, Any], list[str]]
) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    for path, name, expect in _subprocess_cases(tmp_path, bank_csv):
        start = time.perf_counter()
        proc = subprocess.run(
            [*_fedcore(), "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=120,  # subprocess.run kills the process (by its PID) when it runs over
            env=env,
            cwd=tmp_path,
            check=False,
        )
        seconds = time.perf_counter() - start
        output = proc.stdout + proc.stderr
        assert proc.returncode == expect, f"{name}: exit {proc.returncode}\n{output}"
        assert "Traceback" not in output, output
        if expect == 2:
            assert name in " ".join(output.split()), output
        assert seconds < 60, f"{name}: {seconds:.1f} s"
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nlargest fedcore validate process: {peak:.0f} MB resident at its peak")
    assert peak < MEMORY_BOUND_MB
