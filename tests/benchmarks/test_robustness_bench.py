"""benchmarks/attacks.py and benchmarks/robustness.py: the attacks' arithmetic, the hostile-site harness on a real 3-bank run (its replies verify with the site's key), FedAvg damaged by a x100 update and a robust rule that is not."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from flwr.app import Message

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


attacks = _load("robustness_attacks", ROOT / "benchmarks" / "attacks.py")
bench = _load("robustness_bench", ROOT / "benchmarks" / "robustness.py")


# --------------------------------------------------------------------------- the attacks


def _models() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    g: dict[str, np.ndarray] = {
        "w": np.array([1.0, 2.0], np.float32),
        "steps": np.array([7], np.int64),
    }
    local: dict[str, np.ndarray] = {
        "w": np.array([1.5, 1.0], np.float32),
        "steps": np.array([9], np.int64),
    }
    return g, local


def test_scaled_update_is_global_plus_k_times_the_update() -> None:
    g, local = _models()
    # update (0.5, -1); x10 -> (5, -10); global + that = (6, -8)
    out = attacks.scaled_update(g, local, 10.0)
    np.testing.assert_array_equal(out["w"], np.array([6.0, -8.0], np.float32))
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["steps"], g["steps"])  # integer arrays are not updates
    np.testing.assert_array_equal(attacks.scaled_update(g, local, 1.0)["w"], local["w"])


def test_sign_flip_reverses_the_update() -> None:
    g, local = _models()
    # global - (0.5, -1) = (0.5, 3); x2: global - (1, -2) = (0, 4)
    np.testing.assert_array_equal(attacks.sign_flipped(g, local)["w"], [0.5, 3.0])
    np.testing.assert_array_equal(attacks.sign_flipped(g, local, 2.0)["w"], [0.0, 4.0])


def test_gaussian_replaces_the_update_by_seeded_noise() -> None:
    g = {"w": np.zeros(20000, np.float64), "b": np.ones(3, np.float64)}
    out = attacks.gaussian_model(g, 0.1, np.random.default_rng(5))
    expected = np.random.default_rng(5).normal(0.0, 0.1, size=20000)
    np.testing.assert_array_equal(out["w"], expected)
    assert abs(float(np.std(out["w"])) - 0.1) < 0.002
    np.testing.assert_array_equal(
        attacks.gaussian_model(g, 0.0, np.random.default_rng(1))["b"], g["b"]
    )
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        attacks.gaussian_model(g, -1.0, np.random.default_rng(0))


def test_alie_z_max_follows_the_paper() -> None:
    # n=5, f=1: s = floor(3.5) - 1 = 2, Phi(z) = 3/5 -> z = 0.2533
    assert attacks.alie_z_max(5, 1) == pytest.approx(0.253347, abs=1e-6)
    # n=10, f=2: s = 6 - 2 = 4, Phi(z) = 6/10, the same z
    assert attacks.alie_z_max(10, 2) == pytest.approx(0.253347, abs=1e-6)
    # n=50, f=12 (the paper's setting): s = 26 - 12 = 14, Phi(z) = 36/50 -> z = 0.5828
    assert attacks.alie_z_max(50, 12) == pytest.approx(0.582842, abs=1e-6)
    for n, f in ((1, 1), (5, 0), (5, 5)):
        with pytest.raises(ValueError, match="1 <= f < n"):
            attacks.alie_z_max(n, f)


def test_alie_update_is_mean_minus_z_std_per_coordinate() -> None:
    honest = np.array([[1.0, 0.0], [3.0, 4.0]])
    # mean (2, 2), std (1, 2) (ddof 0); z = 0.5 -> (1.5, 1.0)
    np.testing.assert_allclose(attacks.alie_update(honest, 0.5), [1.5, 1.0])
    with pytest.raises(ValueError, match="2-D"):
        attacks.alie_update(np.ones(3), 1.0)


def test_flatten_and_unflatten_round_trip() -> None:
    upd = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([7.0])}
    vec = attacks.flatten(upd)
    np.testing.assert_array_equal(vec, [0, 1, 2, 3, 4, 5, 7])
    back = attacks.unflatten(vec, upd)
    assert back.keys() == upd.keys()
    for k in upd:
        np.testing.assert_array_equal(back[k], upd[k])
    with pytest.raises(ValueError, match="7 values"):
        attacks.unflatten(np.zeros(3), upd)


def test_update_of_refuses_models_of_other_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        attacks.update_of({"w": np.zeros(2, np.float32)}, {"w": np.zeros(3, np.float32)})


def test_label_flip_flips_training_rows_only() -> None:
    label = np.array([0, 1, 0, 0, 1, 0])
    test = np.array([False, False, False, False, True, True])
    np.testing.assert_array_equal(attacks.flip_training_labels(label, test), [1, 0, 1, 1, 1, 0])


def test_unknown_attack_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: none, scaled-x10"):
        attacks.attack_named("scaled-x1000")


# --------------------------------------------------------------------------- target arithmetic


def _row(cons: str, rule: str, attack: str, pr: float, seconds: float = 10.0) -> dict[str, Any]:
    return {
        "consortium": cons,
        "rule": rule,
        "attack": attack,
        "final_pr_auc": pr,
        "seconds": seconds,
    }


def test_best_rule_is_chosen_once_by_its_worst_gap() -> None:
    five, ten = bench.CONSORTIA
    rows = [
        _row(five, "fedavg", "none", 0.75),
        _row(ten, "fedavg", "none", 0.62, 20.0),
        _row(five, "fedavg", "scaled-x100", 0.10),
        _row(ten, "fedavg", "scaled-x100", 0.50),
        # rule A: best on scaled at 5 banks, but loses 0.10 on sign-flip at 10 banks
        _row(five, "A", "none", 0.76),
        _row(ten, "A", "none", 0.61, 22.0),
        _row(five, "A", "scaled-x100", 0.75),
        _row(ten, "A", "scaled-x100", 0.62),
        _row(ten, "A", "sign-flip", 0.52),
        # rule B: never more than 0.015 below clean FedAvg; label flip at 10 banks excluded
        _row(five, "B", "none", 0.74),
        _row(ten, "B", "none", 0.615, 30.0),
        _row(five, "B", "scaled-x100", 0.735),
        _row(ten, "B", "scaled-x100", 0.612),
        _row(ten, "B", "sign-flip", 0.61),
        _row(ten, "B", "label-flip", 0.40),
        # rule C: better than both where it ran, but it did not run sign-flip: not comparable
        _row(five, "C", "scaled-x100", 0.757),
        _row(ten, "C", "scaled-x100", 0.625),
    ]
    assert bench.worst_gap(rows, "C") is None
    t = bench.build_targets(rows, ["A", "B", "C"])
    a = t["best_rule_gap"]
    assert a["rule"] == "B"
    assert a["value"] == pytest.approx(0.015)  # 0.75 - 0.735
    assert a["met"] is True
    assert a["label_flip_2_of_10"] == pytest.approx(0.22)  # reported, not counted
    assert a["worst_gap_by_rule"]["A"] == pytest.approx(0.10)
    b = t["fedavg_scaled_damage"]
    assert b["value"] == pytest.approx(0.12) and b["met"] is True  # min(0.65, 0.12)
    c = t["robust_clean_cost"]["value"]
    assert c[ten]["seconds_ratio"] == pytest.approx(1.5)
    assert c[five]["pr_auc_change"] == pytest.approx(-0.01)
    # a gap of 0.03 fails the target
    rows.append(_row(five, "B", "gaussian", 0.72))
    assert bench.build_targets(rows, ["B"])["best_rule_gap"]["met"] is False


def test_gap_vs_honest_only_is_reported_beside_the_target() -> None:
    five, ten = bench.CONSORTIA
    rows = [
        _row(five, bench.HONEST_ONLY, "none", 0.74),
        _row(ten, bench.HONEST_ONLY, "none", 0.60),
        _row(five, "fedavg", "none", 0.75),
        _row(ten, "fedavg", "none", 0.62),
        _row(five, "B", "scaled-x100", 0.735),
        _row(ten, "B", "scaled-x100", 0.59),
        _row(ten, "B", "sign-flip", 0.57),
        _row(ten, "B", "label-flip", 0.40),
    ]
    t = bench.build_targets(rows, ["B"])["best_rule_gap"]
    # the target still counts against clean FedAvg: 0.62 - 0.57
    assert t["rule"] == "B" and t["value"] == pytest.approx(0.05) and t["met"] is False
    h = t["gap_vs_honest_only"]
    assert h["honest_only_pr_auc"] == {five: 0.74, ten: 0.60}
    # against the honest-only reference: 0.74 - 0.735, 0.60 - 0.59, 0.60 - 0.57
    assert h["gaps"][f"{five}/scaled-x100"] == pytest.approx(0.005)
    assert h["gaps"][f"{ten}/sign-flip"] == pytest.approx(0.03)
    assert h["value"] == pytest.approx(0.03)  # label flip at 2 of 10 left out, as for (a)
    assert h["worst_by_rule"] == {"B": pytest.approx(0.03)}
    # no reference run: no figure
    assert bench.worst_gap_vs_honest_only(rows[2:], "B") is None


def test_quick_plan_keeps_fedavg_to_its_target_runs() -> None:
    plan = bench.plan_runs(True, bench.QUICK_RULES)
    fedavg = {a for c, r, a in plan if r == "fedavg"}
    assert fedavg == set(bench.QUICK_FEDAVG_ATTACKS)
    # the honest-only references first, one per consortium, clean
    assert plan[: len(bench.CONSORTIA)] == [(c, bench.HONEST_ONLY, "none") for c in bench.CONSORTIA]
    robust = [p for p in plan if p[1] not in ("fedavg", bench.HONEST_ONLY)]
    assert len(robust) == len(bench.CONSORTIA) * (len(bench.QUICK_RULES) - 1) * len(
        bench.ATTACK_NAMES
    )


# --------------------------------------------------------------------------- the harness, for real


def _tiny(tmp: Path, name: str, aggregation: dict[str, Any] | None) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "seed": 7,
        "rounds": 3,
        "sites": [
            {
                "id": f"bank-{c}",
                "data": {"kind": "generated", "transactions": n, "fraud_rate": 0.02},
            }
            for c, n in (("a", 1500), ("b", 1200), ("c", 1200))
        ],
        "task": {"hidden": 16, "features": ["channel_online", "card_present", "hour_of_day"]},
        "training": {"local_epochs": 2, "lr": 0.03},
        "scheduler": {"policy": "random", "fraction": 1.0, "min_sites": 2},
        "privacy": {"mode": "plaintext"},
        "export": {"enabled": False},
        "baselines": {"local_only": False, "centralized": False, "non_graph": False},
    }
    if aggregation is not None:
        spec["aggregation"] = aggregation
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class CheckingHook:
    """The hostile hook, then a check of every train reply's signature with the coordinator's kit."""

    def __init__(self, inner: Any, kits: Path) -> None:
        self.inner = inner
        self.kits = kits
        self.verified: list[tuple[str, int]] = []
        self.stale_refused = 0

    def __call__(self, batch: Sequence[Any]) -> list[Message]:
        from fedcore import records as R
        from secure import kitfiles
        from secure.kit import load_kit, verify_site_signature

        coordinator = load_kit(self.kits / kitfiles.COORDINATOR_DIR, role="coordinator")
        honest = {d.site_id: R.read_signature(d.reply.content) for d in batch}
        out: list[Message] = self.inner(batch)
        for d, rep in zip(batch, out, strict=True):
            if d.instruction.metadata.message_type != R.TRAIN or rep.has_error():
                continue
            _, cfg = R.read_instruction(d.instruction.content)
            assert cfg is not None
            reply = R.TrainReply.from_content(rep.content)
            payload = R.signing_payload(R.TRAIN, d.site_id, cfg.round, cfg.run_key, reply.digest())
            sig = R.read_signature(rep.content)
            assert sig is not None
            assert verify_site_signature(coordinator, d.site_id, payload, sig)
            # the check can fail: the honest reply's signature does not cover the hostile update
            stale = honest[d.site_id]
            if sig != stale:
                assert stale is not None
                assert not verify_site_signature(coordinator, d.site_id, payload, stale)
                self.stale_refused += 1
            self.verified.append((d.site_id, cfg.round))
        return out


def _run(tmp: Path, name: str, attack: str, aggregation: dict[str, Any] | None) -> dict[str, Any]:
    from fedcore.cli.runner import RunPlan, run_scenario
    from fedcore.config import load_scenario

    path = _tiny(tmp, name, aggregation)
    sc = load_scenario(path)
    plan = RunPlan(path, sc, tmp / name, "inprocess", sc.rounds)
    hook = attacks.HostileSites(frozenset({"bank-c"}), attacks.attack_named(attack), seed=7)
    checking = CheckingHook(hook, (tmp / name / "kits").resolve())
    records: list[dict[str, Any]] = []
    summary = run_scenario(plan, on_round=lambda r: records.append(dict(r)), reply_hook=checking)
    return {"summary": summary, "records": records, "hook": hook, "checking": checking}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("robust")
    fedavg = {"rule": "fedavg", "weights": "examples"} if bench.aggregation_supported() else None
    out = {
        "clean": _run(tmp, "clean", "none", fedavg),
        "x100": _run(tmp, "x100", "scaled-x100", fedavg),
    }
    if bench.aggregation_supported():
        out["median-x100"] = _run(tmp, "median-x100", "scaled-x100", {"rule": "median"})
    return out


def test_hostile_replies_are_signed_with_the_sites_own_key_and_accepted(
    runs: dict[str, dict[str, Any]],
) -> None:
    r = runs["x100"]
    log = r["hook"].log
    assert [(e["round"], e["site"]) for e in log] == [(1, "bank-c"), (2, "bank-c"), (3, "bank-c")]
    for e in log:  # the sent update is the honest one x100 (float32 rounding aside)
        assert e["sent_norm"] == pytest.approx(100 * e["honest_norm"], rel=1e-3)
        assert e["honest_norm"] > 0
    # every train reply verified with its site's key; the hostile ones were re-signed
    assert sorted(r["checking"].verified) == [
        (s, n) for s in ("bank-a", "bank-b", "bank-c") for n in (1, 2, 3)
    ]
    assert r["checking"].stale_refused == 3
    # and the coordinator took the hostile update every round: nothing rejected
    for rec in r["records"]:
        assert "bank-c" in rec["sites"] and not rec["rejected"]


def test_clean_run_changes_nothing(runs: dict[str, dict[str, Any]]) -> None:
    assert runs["clean"]["hook"].log == []
    assert runs["clean"]["checking"].stale_refused == 0


def test_fedavg_is_damaged_by_a_x100_update(runs: dict[str, dict[str, Any]]) -> None:
    clean = runs["clean"]["summary"]["final"]["pr_auc"]
    hit = runs["x100"]["summary"]["final"]["pr_auc"]
    assert math.isfinite(clean) and clean > 0.2, clean
    assert clean - hit >= 0.05, (clean, hit)


def test_median_keeps_the_model_close_to_clean(runs: dict[str, dict[str, Any]]) -> None:
    if "median-x100" not in runs:
        pytest.skip("this fedcore has no aggregation section (robust rules)")
    clean = runs["clean"]["summary"]["final"]["pr_auc"]
    robust = runs["median-x100"]["summary"]["final"]["pr_auc"]
    assert abs(clean - robust) <= 0.05, (clean, robust)


def test_a_reply_hook_needs_the_inprocess_engine(tmp_path: Path) -> None:
    from fedcore.cli.runner import RunPlan, run_federation
    from fedcore.config import load_scenario

    path = _tiny(tmp_path, "deployed", None)
    plan = RunPlan(path, load_scenario(path), tmp_path / "out", "deployment", 1)
    with pytest.raises(ValueError, match="needs the inprocess engine"):
        run_federation(plan, {}, None, None, reply_hook=lambda batch: [d.reply for d in batch])
    assert not (tmp_path / "out").exists()  # refused before anything started
