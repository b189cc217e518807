"""benchmarks/deployment.py: its arithmetic, targets and report on synthetic measurements; the bare Flower app's message pattern; a short bare Flower smoke run (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = _load("deployment_bench", ROOT / "benchmarks" / "deployment.py")
bare = _load("bare_serverapp_bench", ROOT / "benchmarks" / "bare_flower" / "bare_serverapp.py")


def test_median_after_first_drops_round_one() -> None:
    # rounds 2..4: 4, 6, 5 -> median 5 (round 1's 10 s of start-up is left out)
    assert bench.median_after_first([10.0, 4.0, 6.0, 5.0]) == 5.0
    assert bench.median_after_first([10.0, 3.0]) == 3.0
    assert bench.median_after_first([10.0]) is None
    assert bench.median_after_first([]) is None


def test_starts_between_counts_rounds_after_the_first() -> None:
    starts = [
        (5.0, "flower-superlink"),  # start-up: before round 1 ended
        (10.0, "flwr-clientapp"),  # at round 1's end: round 1's
        (12.0, "flwr-clientapp"),  # round 2
        (20.0, "flwr-clientapp"),  # at round 2's end: round 2's
        (25.0, "flower-superexec"),  # round 3
        (31.0, "flwr-clientapp"),  # after the last round (export): not counted
    ]
    out = bench.starts_between(starts, [10.0, 20.0, 30.0])
    assert out["by_round"] == [2, 1]
    assert out["per_round"] == 1.5  # 3 starts over 2 measured rounds
    assert out["by_command"] == {"flwr-clientapp": 2, "flower-superexec": 1}
    assert out["total_seen"] == 6
    assert out["seen_by_command"]["flwr-clientapp"] == 4
    assert bench.starts_between(starts, [10.0])["per_round"] is None


def test_cpu_per_round() -> None:
    # (7.0 - 1.0) / 2 measured rounds
    assert bench.cpu_per_round([1.0, 4.0, 7.0]) == 3.0
    assert bench.cpu_per_round([None, 4.0]) is None
    assert bench.cpu_per_round([1.0]) is None


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/venv/bin/python3", "/venv/bin/flwr-clientapp", "--token", "t"], "flwr-clientapp"),
        (
            ["/usr/bin/python3.11", "-m", "fedcore.cli.client_cmd", "start", "--site", "s"],
            "fedcore.cli.client_cmd start",
        ),
        (["/usr/bin/python3", "-m", "pkg.mod", "--flag"], "pkg.mod"),
        (["/bin/sleep", "1"], "sleep"),
        ([], "zombie-name"),
    ],
)
def test_command_name(cmdline: list[str], expected: str) -> None:
    assert bench.command_name(cmdline, "zombie-name") == expected


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/venv/bin/python3", "/venv/bin/flower-superlink", "--insecure"], "flower-superlink"),
        (["/venv/bin/flower-supernode", "--insecure"], "flower-supernode"),
        (
            [
                "/venv/bin/python3",
                "-m",
                "fedcore.x.flower_runtime",
                "supernode",
                "--superlink",
                "a",
            ],
            "flower-supernode",
        ),
        (["/venv/bin/python3", "-m", "fedcore.x.flower_runtime", "worker"], None),
        (["/venv/bin/python3", "/venv/bin/flwr-clientapp", "--token", "t"], None),
        ([], None),
    ],
)
def test_flower_role(cmdline: list[str], expected: str | None) -> None:
    assert bench.flower_role(cmdline) == expected


def test_transport_of_reads_tls_and_node_auth_from_command_lines() -> None:
    py = "/venv/bin/python3"
    secure = {
        "flower-superlink": [
            [py, "flower-superlink", "--ssl-ca-certfile", "ca", "--ssl-certfile", "c"]
            + ["--ssl-keyfile", "k", "--enable-supernode-auth", "--port", "1"]
        ],
        "flower-supernode": [
            [
                py,
                "flower-supernode",
                "--root-certificates",
                "ca",
                "--auth-supernode-private-key",
                "k",
            ]
        ]
        * 2,
    }
    out = bench.transport_of(secure)
    assert out["tls"] is True and out["node_auth"] is True
    insecure = {
        "flower-superlink": [[py, "flower-superlink", "--insecure"]],
        "flower-supernode": [[py, "flower-supernode", "--insecure"]],
    }
    out = bench.transport_of(insecure)
    assert out["tls"] is False and out["node_auth"] is False
    assert bench.transport_of({}) == {"seen": False}


def _setups(**spr: float) -> dict[str, dict[str, float]]:
    return {name.replace("_", "-"): {"seconds_per_round": s} for name, s in spr.items()}


def test_targets_on_synthetic_measurements() -> None:
    setups = _setups(
        bare_flower=40.0,
        fedcore_plaintext=8.0,  # 8 / 40 = 0.2 <= 0.25: met
        fedcore_ckks=20.0,  # 20 / 40 = 0.5 > 0.4: missed
        fedcore_inprocess=2.0,  # 8 / 2 = 4 <= 5: met
    )  # no SecAgg+ run: met is null, never true
    goals = bench.build_targets(setups)
    assert set(goals) == {
        "plaintext_vs_bare",
        "ckks_vs_bare",
        "secagg_vs_bare",
        "deployment_vs_inprocess",
    }
    assert goals["plaintext_vs_bare"] | {} == {
        "value": 0.2,
        "goal": "<= 0.25",
        "met": True,
        "numerator": "fedcore-plaintext",
        "denominator": "bare-flower",
    }
    assert goals["ckks_vs_bare"]["value"] == 0.5
    assert goals["ckks_vs_bare"]["goal"] == "<= 0.4"
    assert goals["ckks_vs_bare"]["met"] is False
    assert goals["secagg_vs_bare"] == {
        "value": None,
        "goal": "<= 0.5",
        "met": None,
        "numerator": "fedcore-secagg",
        "denominator": "bare-flower",
    }
    assert goals["deployment_vs_inprocess"]["value"] == 4.0
    assert goals["deployment_vs_inprocess"]["goal"] == "<= 5"
    assert goals["deployment_vs_inprocess"]["met"] is True
    # a failed setup ({"error": ...}) and a zero denominator give no ratio
    failed = bench.build_targets({"bare-flower": {"error": "boom"}, "fedcore-plaintext": {}})
    assert failed["plaintext_vs_bare"]["met"] is None
    zero = bench.build_targets(_setups(bare_flower=0.0, fedcore_plaintext=1.0))
    assert zero["plaintext_vs_bare"]["value"] is None


def test_setups_and_targets_keep_bare_flower_as_the_issues_baseline() -> None:
    assert bench.SETUPS[:2] == ("bare-flower", "bare-flower-1x")
    assert bench.BARE_EXCHANGES == {"bare-flower": None, "bare-flower-1x": 1}
    # the targets compare against the 3-exchange bare-flower, never the 1x one
    assert {den for _, den, _ in bench.GOALS.values()} == {"bare-flower", "fedcore-inprocess"}
    assert {k: v[2] for k, v in bench.GOALS.items()} == {
        "plaintext_vs_bare": 0.25,
        "ckks_vs_bare": 0.4,
        "secagg_vs_bare": 0.5,
        "deployment_vs_inprocess": 5.0,
    }


def test_like_for_like_on_synthetic_measurements() -> None:
    setups = _setups(
        bare_flower=40.0,
        bare_flower_1x=10.0,
        fedcore_plaintext=8.0,  # 8 / 10
        fedcore_ckks=15.0,  # 15 / 10
    )  # no SecAgg+ run: null
    out = bench.like_for_like(setups)
    assert "not targets" in out["about"]
    ratios = out["ratios"]
    assert set(ratios) == {"plaintext_vs_bare_1x", "ckks_vs_bare_1x", "secagg_vs_bare_1x"}
    assert ratios["plaintext_vs_bare_1x"] == {
        "value": 0.8,
        "numerator": "fedcore-plaintext",
        "denominator": "bare-flower-1x",
        "numerator_exchanges_per_round": 1,
        "denominator_exchanges_per_round": 1,
    }
    assert ratios["ckks_vs_bare_1x"]["value"] == 1.5
    assert "note" not in ratios["ckks_vs_bare_1x"]
    secagg = ratios["secagg_vs_bare_1x"]
    assert secagg["value"] is None
    assert secagg["numerator"] == "fedcore-secagg"
    assert secagg["numerator_exchanges_per_round"] == 5
    assert "5 exchanges" in secagg["note"] and "overstates" in secagg["note"]
    setups["fedcore-secagg"] = {"seconds_per_round": 25.0}
    assert bench.like_for_like(setups)["ratios"]["secagg_vs_bare_1x"]["value"] == 2.5
    # without bare-flower-1x (not run, or failed) every ratio is null, even with bare-flower
    for base in ({}, {"bare-flower-1x": {"error": "boom"}}):
        rest = {k: v for k, v in setups.items() if k != "bare-flower-1x"} | base
        assert [r["value"] for r in bench.like_for_like(rest)["ratios"].values()] == [None] * 3


def test_run_setup_gives_each_bare_setup_its_exchanges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, tuple[object, ...]]] = []
    monkeypatch.setattr(bench, "run_bare", lambda *a: calls.append(("bare", a)) or {"ok": 1})
    monkeypatch.setattr(bench, "run_fedcore", lambda *a: calls.append(("fedcore", a)) or {})
    arrays = [["w", [2], "float32"]]
    assert bench.run_setup("bare-flower-1x", tmp_path, 7, arrays, 4, 3, 60.0) == {"ok": 1}
    bench.run_setup("bare-flower", tmp_path, 7, arrays, 4, 3, 60.0)
    bench.run_setup("bare-flower-1x", tmp_path, 7, arrays, 4, 5, 60.0)  # --exchanges 5
    bench.run_setup("bare-flower", tmp_path, 7, arrays, 4, 5, 60.0)
    # run_bare(tmp, num_sites, arrays, rounds, exchanges, timeout, setup)
    assert calls == [
        ("bare", (tmp_path, 7, arrays, 4, 1, 60.0, "bare-flower-1x")),
        ("bare", (tmp_path, 7, arrays, 4, 3, 60.0, "bare-flower")),
        ("bare", (tmp_path, 7, arrays, 4, 1, 60.0, "bare-flower-1x")),
        ("bare", (tmp_path, 7, arrays, 4, 5, 60.0, "bare-flower")),
    ]
    calls.clear()
    bench.run_setup("fedcore-ckks", tmp_path, 7, arrays, 4, 3, 60.0)
    bench.run_setup("fedcore-inprocess", tmp_path, 7, arrays, 4, 3, 60.0)
    assert calls == [
        ("fedcore", (tmp_path, "fedcore-ckks", bench.SCENARIOS["ckks"], "deployment", 4, 60.0)),
        (
            "fedcore",
            (tmp_path, "fedcore-inprocess", bench.SCENARIOS["plaintext"], "inprocess", 4, 60.0),
        ),
    ]


def test_show_prints_the_like_for_like_ratios() -> None:
    setups = _setups(bare_flower=40.0, bare_flower_1x=10.0, fedcore_plaintext=8.0)
    with bench.console.capture() as captured:
        bench.show({}, bench.build_targets(setups), bench.like_for_like(setups))
    text = captured.get()
    assert "plaintext_vs_bare: 0.200 (goal <= 0.25): met" in text
    assert "plaintext_vs_bare_1x: 0.800" in text
    assert "ckks_vs_bare_1x: n/a (a setup did not run)" in text
    assert "secagg_vs_bare_1x: n/a (a setup did not run) (fedcore's SecAgg+ round is 5" in text


def test_report_is_json_with_results_and_targets(tmp_path: Path) -> None:
    trees = bench.Trees()
    me = psutil.Process()
    for created, command in [(1.0, "flower-superlink"), (15.0, "flwr-clientapp")]:
        trees.seen[(len(trees.seen) + 1, created)] = bench.Seen(created, [command], command, me)
    trees.superlink_cpu = 9.0
    measured = bench.Measured("bare-flower", ["flower-superlink"])
    measured.round_seconds = [30.0, 20.0, 22.0]
    measured.round_ends = [10.0, 30.0, 52.0]
    measured.superlink_cpu_at_round_end = [3.0, 5.0, 7.0]
    row = measured.result(trees, wall=80.0)
    assert row["seconds_per_round"] == 21.0  # median of 20 and 22
    assert row["round_end_intervals_s"] == [20.0, 22.0]
    assert row["seconds_per_round_by_interval"] == 21.0
    assert row["process_starts"]["per_round"] == 0.5  # one start (t=15) over 2 rounds
    assert row["superlink_cpu_s"] == 9.0
    assert row["superlink_cpu_s_per_round"] == 2.0  # (7 - 3) / 2

    setups = {
        "bare-flower": row,
        "bare-flower-1x": {"seconds_per_round": 3.5},
        "fedcore-plaintext": {"seconds_per_round": 7.0},
    }
    report = bench.build_report(
        {"rounds": 3, "exchanges": 3}, setups, {"cpu_count": 2}, complete=True, seconds=1.0
    )
    path = tmp_path / "sub" / "out.json"
    bench.write_report(path, report)
    loaded = json.loads(path.read_text())
    assert set(loaded) >= {"results", "targets", "machine", "command", "complete"}
    assert loaded["results"]["settings"]["exchanges"] == 3
    assert loaded["results"]["setups"]["bare-flower"]["round_seconds"] == [30.0, 20.0, 22.0]
    for t in loaded["targets"].values():
        assert set(t) >= {"value", "goal", "met"}
    assert loaded["targets"]["plaintext_vs_bare"]["value"] == pytest.approx(1 / 3)
    assert loaded["targets"]["plaintext_vs_bare"]["met"] is False
    assert set(loaded["targets"]) == set(bench.GOALS)  # like for like is not a target
    alike = loaded["results"]["like_for_like"]["ratios"]
    assert alike["plaintext_vs_bare_1x"]["value"] == 2.0  # 7 / 3.5
    assert alike["ckks_vs_bare_1x"]["value"] is None
    assert not list(path.parent.glob("*.partial"))


def test_trees_see_descendants_and_stop_them_all(tmp_path: Path) -> None:
    """A grandchild in a session of its own (as Flower's SuperExec starts ClientApps) is stopped too."""
    grandchild = "import time; time.sleep(60)"
    child = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], start_new_session=True); "
        "time.sleep(60)"
    )
    trees = bench.Trees()
    root = trees.start([sys.executable, "-c", child], tmp_path / "log.txt", dict(os.environ))
    deadline = time.monotonic() + 20
    while len(trees.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        trees.tick()
    procs = [s.proc for s in trees.seen.values()]
    assert len(procs) == 2
    assert all(s.command == "python" or s.command.startswith("python") for s in trees.seen.values())
    trees.stop(grace=2.0)
    assert root.poll() is not None
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def test_message_pattern() -> None:
    three = bare.message_pattern(3)
    assert [e.name for e in three] == ["telemetry", "train", "evaluate"]
    assert [e.message_type for e in three] == ["query.telemetry", "train", "evaluate"]
    assert [e.sends_model for e in three] == [False, True, True]
    assert [e.reply for e in three] == ["tiny", "model", "metrics"]
    assert [e.name for e in bare.message_pattern(1)] == ["train"]
    assert [e.name for e in bare.message_pattern(2)] == ["train", "evaluate"]
    five = bare.message_pattern(5)
    assert [e.name for e in five] == ["telemetry", "train", "evaluate", "extra-1", "extra-2"]
    assert {e.message_type for e in five[3:]} == {"query.extra"}
    with pytest.raises(ValueError, match="found 0"):
        bare.message_pattern(0)


def test_weighted_mean_and_initial_arrays() -> None:
    spec = [["w", [2, 3], "float32"], ["b", [2], "float32"]]
    a = bare.initial_arrays(spec, seed=1)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "w": ((2, 3), np.float32),
        "b": ((2,), np.float32),
    }
    assert all(np.array_equal(a[k], v) for k, v in bare.initial_arrays(spec, seed=1).items())
    ones = {k: np.ones_like(v) for k, v in a.items()}
    fives = {k: np.full_like(v, 5.0) for k, v in a.items()}
    # (1 * 1 + 3 * 5) / 4 = 4
    mean = bare.weighted_mean([ones, fives], [1.0, 3.0])
    assert all(v.dtype == np.float32 and np.all(v == 4.0) for v in mean.values())
    with pytest.raises(ValueError, match="one weight per model"):
        bare.weighted_mean([ones], [1.0, 2.0])
    with pytest.raises(ValueError, match="sum to more than 0"):
        bare.weighted_mean([ones], [0.0])


@pytest.mark.slow
def test_bare_flower_smoke(tmp_path: Path) -> None:
    """Two sites, one exchange (bare-flower-1x), two rounds of the real bare Flower deployment; nothing left running."""
    arrays = [["w", [4, 3], "float32"], ["b", [4], "float32"]]
    row = bench.run_bare(
        tmp_path, 2, arrays, rounds=2, exchanges=1, timeout=120.0, setup="bare-flower-1x"
    )
    assert row["setup"] == "bare-flower-1x" and row["exchanges"] == 1
    assert [e["name"] for e in row["pattern"]] == ["train"]
    assert row["rounds"] == 2 and len(row["round_seconds"]) == 2
    assert row["reply_errors"] == []
    starts = row["process_starts"]
    assert starts["by_command"].get("flwr-clientapp") == 2, starts  # 2 sites x 1 message
    assert row["transport"]["tls"] is False and row["transport"]["superlink_flags"] == [
        "--insecure"
    ]
    assert row["superlink_cpu_s"] > 0
    rounds = [
        json.loads(line) for line in (tmp_path / "work" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["event"] for r in rounds] == ["sites", "round", "round", "done"]
    assert all(r["replies"] == 2 for r in rounds if r["event"] == "round")
    assert all(list(r["exchange_seconds"]) == ["train"] for r in rounds if r["event"] == "round")
    leftovers = []  # every process of the run had FLWR_HOME under tmp_path
    for proc in psutil.process_iter(["pid"]):
        try:
            home = proc.environ().get("FLWR_HOME", "")
        except psutil.Error:
            continue
        if home.startswith(str(tmp_path)):
            leftovers.append(proc.info["pid"])
    assert leftovers == [], [psutil.Process(p).cmdline() for p in leftovers if psutil.pid_exists(p)]
