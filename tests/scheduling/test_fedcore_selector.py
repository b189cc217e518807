"""fedcore's scheduler on hand-made telemetry, and inside a real `fedcore run`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedcore.config import SchedulerSpec
from scheduling.base import Candidate, SiteResult
from scheduling.fedcore_selector import FedcoreSelector
from scheduling.policy import build_policy
from scheduling.predictor import EwmaForecaster


def cand(
    site: str, util: float, temp: float = 60.0, devices: float = 1.0, n: int = 1000
) -> Candidate:
    return Candidate(
        site,
        hash(site) % 1000,
        n,
        {
            "device_utilization_percent": util,
            "background_load_percent": util,
            "device_temperature_c": temp,
            "device_memory_used_mib": 1000.0,
            "device_memory_total_mib": 40000.0,
            "relative_throughput": 1.0,
            "num_devices": devices,
        },
    )


def spec(**kw: object) -> SchedulerSpec:
    base = {
        "policy": "fedcore",
        "fraction": 1.0,
        "min_sites": 1,
        "allocator": {"deadline_s": 10.0, "headroom": 0.2, "margin": 0.1},
    }
    return SchedulerSpec.model_validate(base | kw)


def test_hot_sites_are_filtered_and_slow_sites_get_less_work() -> None:
    sel = FedcoreSelector(spec(), base_epochs=8, num_sites=3, forecaster=EwmaForecaster())
    sites = [cand("a", 10.0), cand("b", 10.0), cand("c", 10.0, temp=95.0)]
    first = sel.select(1, sites)
    assert [c.site_id for c in first.chosen] == ["a", "b"]
    assert any("95.0" in r for r in first.rejected["c"])  # the reason quotes the reading
    # round 1 measured: a took 4 s for 8 epochs, b 16 s (4x slower per epoch)
    sel.observe(
        1,
        {
            "a": SiteResult("a", 4.0, 0.5, 8, 1000),
            "b": SiteResult("b", 16.0, 0.5, 8, 1000),
        },
    )
    second = sel.select(2, sites[:2])
    # EWMA: a 0.5 s/epoch, b 2 s/epoch (measured with the headroom kept free, so no further
    # share is applied); work is sized for (1 - margin 0.1) x 10 s = 9 s:
    # a floor(9 / 0.5) = 18 -> capped at 8 epochs; b floor(9 / 2) = 4 epochs, predicted 8 s
    assert second.epochs == {"a": 8, "b": 4}
    assert second.predicted_s["b"] == pytest.approx(8.0)
    assert second.headroom == 0.2
    assert second.deadline_s == 10.0
    assert second.details["forecast"]["source"] == {"a": "ewma", "b": "ewma"}  # type: ignore[index]


def test_a_site_whose_load_leaves_no_room_after_the_headroom_is_left_out() -> None:
    sel = FedcoreSelector(spec(), base_epochs=4, num_sites=2)
    out = sel.select(1, [cand("a", 10.0), cand("b", 85.0)])  # 85 % + 20 % headroom > 100 %
    assert [c.site_id for c in out.chosen] == ["a"]
    assert any("background load 85% plus headroom 20%" in r for r in out.rejected["b"])


def test_equal_work_when_the_aggregation_cannot_reweight() -> None:
    sel = FedcoreSelector(spec(), base_epochs=8, num_sites=2, unequal_work=False)
    sites = [cand("a", 10.0), cand("b", 10.0)]
    sel.select(1, sites)
    sel.observe(
        1, {"a": SiteResult("a", 4.0, 0.5, 8, 1000), "b": SiteResult("b", 9.0, 0.5, 8, 1000)}
    )
    assert set(sel.select(2, sites).epochs.values()) == {8}


def test_the_scaling_policy_migrates_a_straggler_within_its_pool() -> None:
    s = spec(fraction=0.75, scaling={"policy": "rules", "period": 1})
    sel = FedcoreSelector(s, base_epochs=4, num_sites=4, policy=build_policy("rules"))
    sites = [cand(x, 5.0, devices=2.0) for x in "abcd"]
    assert len(sel.select(1, sites).chosen) == 3
    chosen = sel.select(1, sites).chosen
    sel.observe(
        1,
        {
            c.site_id: SiteResult(c.site_id, 10.0 if i == 2 else 1.0, 0.5, 4, 1000)
            for i, c in enumerate(chosen)
        },
    )
    nxt = sel.select(2, sites)
    scaling = nxt.details["scaling"]
    assert isinstance(scaling, dict) and scaling["action"] == "migrate"
    slow = chosen[2].site_id  # 10 s against a median of 1 s: it moves to device 1 of its pool
    assert scaling["moved"] == {slow: 1}
    state = json.loads(json.dumps(sel.state_dict()))
    again = FedcoreSelector(s, base_epochs=4, num_sites=4)
    again.load_state_dict(state)
    assert again.devices == {slow: 1} and len(again.history.for_site(slow)) >= 1


SCENARIO = textwrap.dedent(
    """
    name: tiny-fedcore
    seed: 5
    rounds: 3
    sites:
      - {id: bank-a, data: {kind: generated, transactions: 700, fraud_rate: 0.03}}
      - {id: bank-b, data: {kind: generated, transactions: 400, fraud_rate: 0.03}}
      - {id: bank-c, data: {kind: generated, transactions: 500, fraud_rate: 0.03}}
    task: {hidden: 8}
    training: {local_epochs: 3}
    export: {enabled: false}
    scheduler:
      policy: fedcore
      min_sites: 2
      predictor: {kind: ewma}
      scaling: {policy: rules, period: 1}
      allocator: {deadline_s: 30}
    """
)


def test_fedcore_run_keeps_every_decision_in_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    schedule = summary["schedule"]
    assert [s["round"] for s in schedule] == [1, 2, 3]
    for entry, rnd in zip(schedule, summary["rounds"], strict=True):
        assert set(entry["chosen"]) >= set(rnd["sites"]) and entry["deadline_s"] == 30
        assert set(entry["epochs"]) == set(entry["chosen"])
        assert all(1 <= e <= 3 for e in entry["epochs"].values())
        assert set(entry["measured_s"]) == set(rnd["sites"])
        assert all(v > 0 for v in entry["measured_s"].values())
        assert set(entry["scores"]) >= set(entry["chosen"])
        assert rnd["schedule"]["policy"] == "fedcore"  # the digest the progress display shows
    # round 1: nothing measured yet, every chosen site runs the scenario's 3 epochs
    assert set(schedule[0]["epochs"].values()) == {3} and "predicted_s" not in schedule[0]
    assert "no measured round yet" in schedule[0]["details"]["note"]
    # later rounds: forecasts from the measured history, for every chosen site
    for entry in schedule[1:]:
        assert set(entry["predicted_s"]) == set(entry["chosen"])
        assert set(entry["details"]["forecast"]["source"].values()) == {"ewma"}
    assert "scaling" in schedule[1]["details"]


def test_the_deadline_backs_off_after_a_round_most_sites_missed() -> None:
    sel = FedcoreSelector(spec(allocator={"headroom": 0.2}), base_epochs=4, num_sites=2)
    sites = [cand("a", 10.0), cand("b", 10.0)]
    sel.select(1, sites)
    sel.observe(
        1, {"a": SiteResult("a", 4.0, 0.5, 4, 1000), "b": SiteResult("b", 8.0, 0.5, 4, 1000)}
    )
    # the 0.8 quantile of the forecasts 4 s and 8 s: 4 + 0.8 x (8 - 4) = 7.2 s
    first = sel.select(2, sites).deadline_s
    assert first == pytest.approx(7.2)
    missed = {s: SiteResult(s, None, None, 4, 1000, failed="site went offline") for s in "ab"}
    sel.observe(2, missed)
    assert sel.select(3, sites).deadline_s == pytest.approx(14.4)  # twice the time
    sel.observe(
        3, {"a": SiteResult("a", 4.0, 0.5, 4, 1000), "b": SiteResult("b", 8.0, 0.5, 4, 1000)}
    )
    assert sel.deadline_scale == 1.0  # a clean round halves it back


def test_a_site_that_missed_the_deadline_is_forecast_slower() -> None:
    sel = FedcoreSelector(
        spec(allocator={"deadline_s": 10.0, "margin": 0.1}), base_epochs=4, num_sites=2
    )
    sites = [cand("a", 10.0), cand("b", 10.0)]
    sel.select(1, sites)
    sel.observe(
        1,
        {
            "a": SiteResult("a", 4.0, 0.5, 4, 1000),
            "b": SiteResult(
                "b", None, None, 4, 1000, failed="site error: no update by the round deadline"
            ),
        },
    )
    # b is recorded at 1.5 x the 10 s deadline (a lower bound): 15 s for 4 epochs, 3.75 s
    # each; within (1 - 0.1) x 10 s it fits 2 epochs, instead of being sent 4 and missing again
    assert sel.history.for_site("b")[-1].duration_s == pytest.approx(15.0)
    assert sel.select(2, sites).epochs["b"] == 2


def test_last_loss_feeds_the_statistical_utility_and_survives_a_restart() -> None:
    s = spec(scores=[{"name": "statistical-utility"}], fraction=0.5)
    sel = FedcoreSelector(s, base_epochs=2, num_sites=2, forecaster=EwmaForecaster())
    sites = [cand("a", 10.0, n=1000), cand("b", 10.0, n=1000)]
    sel.select(1, sites)
    # both trained; a's data still has a high loss (0.9), b's is nearly learnt (0.1)
    sel.observe(
        1, {"a": SiteResult("a", 2.0, 0.9, 2, 1000), "b": SiteResult("b", 2.0, 0.1, 2, 1000)}
    )
    nxt = sel.select(2, sites)
    assert nxt.scores == {"a": 100.0, "b": 0.0}  # 1000 x 0.9 vs 1000 x 0.1, min-max
    assert [c.site_id for c in nxt.chosen] == ["a"]
    again = FedcoreSelector(s, base_epochs=2, num_sites=2, forecaster=EwmaForecaster())
    again.load_state_dict(json.loads(json.dumps(sel.state_dict())))
    assert again.select(2, sites).scores == nxt.scores


def test_busy_device_is_left_out_with_the_device_free_filter() -> None:
    filters = [{"name": "health"}, {"name": "device-free"}]
    sel = FedcoreSelector(
        spec(filters=filters), base_epochs=2, num_sites=2, forecaster=EwmaForecaster()
    )
    first = sel.select(1, [cand("a", 10.0), cand("b", 100.0)])
    assert [c.site_id for c in first.chosen] == ["a"]
    assert any("device busy" in r for r in first.rejected["b"])
