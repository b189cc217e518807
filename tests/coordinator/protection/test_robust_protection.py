"""Robust aggregation through the protection objects, with real parsed replies: weights, rules, the record."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import RecordDict

from coordinator.protection import ProtectionInputs, build_protection
from coordinator.protection.base import (
    CappedWeights,
    ExchangeResult,
    FedNovaWeights,
    Protection,
    TrainRound,
    UniformWeights,
)
from coordinator.protection.dp import DifferentialPrivacy
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.robust import RobustAggregation
from coordinator.protection.secagg import SecAggPlus
from fedcore import records as R
from fedcore.config import AggregationSpec, Scenario, TaskSpec, load_scenario
from scheduling.base import Candidate

INIT = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
HONEST = {"bank-a": 1000, "bank-b": 1200, "bank-c": 1500, "bank-d": 1100}


def scenario(tmp_path: Path, aggregation: str, privacy: str = "{mode: plaintext}") -> Scenario:
    sites = "\n".join(f"  - {{id: {s}, data: {{kind: generated}}}}" for s in [*HONEST, "evil"])
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("name: r\nrounds: 3\nscheduler: {min_sites: 2}\nsites:\n")
        + sites
        + f"\nprivacy: {privacy}\naggregation: {aggregation}\n"
    )
    return load_scenario(path)


def build(tmp_path: Path, aggregation: str, privacy: str = "{mode: plaintext}") -> Protection:
    return build_protection(
        ProtectionInputs(scenario(tmp_path, aggregation, privacy), INIT, tmp_path)
    )


def train_round(
    round_: int, examples: Mapping[str, int], step: Mapping[str, float | np.ndarray]
) -> TrainRound:
    """A round whose sites each add ``step[site]`` to the global model they are sent."""
    chosen = [Candidate(s, i + 1, n) for i, (s, n) in enumerate(sorted(examples.items()))]
    node_site = {c.node_id: c.site_id for c in chosen}

    def exchange(
        targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> ExchangeResult:
        replies = []
        for nid, content in targets:
            arrays, _ = R.read_instruction(content)
            assert arrays is not None
            site = node_site[nid]
            out = {k: (v + np.float32(1) * step[site]).astype(v.dtype) for k, v in arrays.items()}
            reply = R.TrainReply(out, 100, 0.5, 0.01, site, round=round_).to_content()
            replies.append((nid, SimpleNamespace(content=reply)))
        return ExchangeResult(cast(Any, replies), {}, 0, 0)

    return TrainRound(
        round=round_,
        chosen=chosen,
        config_for=lambda site, weight: R.RoundConfig(round_, 7, TaskSpec(), weight=weight),
        exchange=exchange,
        verify=lambda reply, content: None,
        epochs_of=lambda site: 1,
        grid=cast(Any, None),
        timeout=1.0,
    )


def run_round(
    p: Protection, round_: int, examples: Mapping[str, int], step: Mapping[str, Any]
) -> dict[str, Any]:
    collected = p.collect(train_round(round_, examples, step))
    p.aggregate(round_, collected)
    return p.round_figures()


HONEST_STEPS = {"bank-a": 1.0, "bank-b": 1.1, "bank-c": 0.9, "bank-d": 1.05}


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # examples: evil weighs 1e12 / (1e12 + 4800): the model becomes evil's (+10)
        ("examples", 10.0),
        # capped: evil counts 4 x median(1000, 1100, 1200, 1500, 1e12) = 4 x 1200 = 4800, as much
        # as the four honest banks together (4800): (4800 x 10 + 1000 + 1320 + 1350 + 1155) / 9600
        ("capped", (48_000 + 1000 + 1320 + 1350 + 1155) / 9600),
        # equal: (10 + 1 + 1.1 + 0.9 + 1.05) / 5
        ("equal", 14.05 / 5),
    ],
)
def test_a_site_claiming_1e12_examples_no_longer_replaces_the_model(
    tmp_path: Path, weights: str, expected: float
) -> None:
    p = build(tmp_path, f"{{weights: {weights}}}")
    assert isinstance(p, Plaintext)  # fedavg without a norm bound needs no wrapper
    run_round(p, 1, {**HONEST, "evil": 10**12}, {**HONEST_STEPS, "evil": 10.0})
    assert p.global_arrays["w"] == pytest.approx(np.full((2, 3), expected), rel=1e-5)
    assert p.global_arrays["w"].dtype == np.float32


def test_median_rule_ignores_the_inflated_site(tmp_path: Path) -> None:
    p = build(tmp_path, "{rule: median}")
    assert isinstance(p, RobustAggregation) and isinstance(p.weights, CappedWeights)
    figures = run_round(p, 1, {**HONEST, "evil": 10**12}, {**HONEST_STEPS, "evil": 10.0})
    # median(1, 1.1, 0.9, 1.05, 10) = 1.05, whatever evil's weight
    assert p.global_arrays["w"] == pytest.approx(np.full((2, 3), 1.05))
    assert p.global_arrays["w"].dtype == np.float32
    assert figures["robust"] == {
        "rule": "median",
        "norm_bound": None,
        "clipped": [],
        "left_out": {},
    }


def test_trimmed_mean_rule(tmp_path: Path) -> None:
    p = build(tmp_path, "{rule: trimmed_mean, trim_fraction: 0.2}")
    run_round(p, 1, {**HONEST, "evil": 10**12}, {**HONEST_STEPS, "evil": -10.0})
    # cut int(0.2 x 5) = 1 each end (-10 and 1.1): (0.9 + 1 + 1.05) / 3
    assert p.global_arrays["b"] == pytest.approx(np.full(3, 2.95 / 3))


def test_multi_krum_leaves_the_outlier_out_and_says_so(tmp_path: Path) -> None:
    p = build(tmp_path, "{rule: multi_krum, byzantine: 1, weights: equal}")
    figures = run_round(p, 1, {**HONEST, "evil": 1000}, {**HONEST_STEPS, "evil": 10.0})
    # the four honest updates are kept, their equal-weight mean: (1 + 1.1 + 0.9 + 1.05) / 4
    assert p.global_arrays["w"] == pytest.approx(np.full((2, 3), 4.05 / 4), rel=1e-6)
    robust = figures["robust"]
    assert robust["rule"] == "multi_krum" and list(robust["left_out"]) == ["evil"]
    assert "multi_krum: score" in robust["left_out"]["evil"]


def test_multi_krum_memory_keeps_a_past_outlier_out_when_it_looks_central(tmp_path: Path) -> None:
    spec = "{rule: multi_krum_memory, byzantine: 1, weights: equal}"
    p = build(tmp_path, spec)
    five = {**HONEST, "evil": 1000}
    # round 1: evil's step 10 is far out; it is left out like plain Multi-Krum does
    figures = run_round(p, 1, five, {**HONEST_STEPS, "evil": 10.0})
    assert list(figures["robust"]["left_out"]) == ["evil"]
    # round 2: evil sends the mean step, bank-b strays (3.0): plain Multi-Krum would leave
    # bank-b out; with the memory evil's remembered score is still the highest
    round2 = {**HONEST_STEPS, "bank-b": 3.0, "evil": 1.0}
    plain = build(tmp_path, "{rule: multi_krum, byzantine: 1, weights: equal}")
    assert list(run_round(plain, 2, five, round2)["robust"]["left_out"]) == ["bank-b"]
    figures = run_round(p, 2, five, round2)
    robust = figures["robust"]
    assert robust["rule"] == "multi_krum_memory" and list(robust["left_out"]) == ["evil"]
    assert "multi_krum_memory: remembered score" in robust["left_out"]["evil"]
    # round 1's mean 4.05 / 4, then (1 + 3 + 0.9 + 1.05) / 4
    expected = 4.05 / 4 + 5.95 / 4
    assert p.global_arrays["w"] == pytest.approx(np.full((2, 3), expected), rel=1e-6)
    # a resumed run keeps the memory
    resumed = build(tmp_path, spec)
    resumed.load_state_dict(p.state_dict(), p.global_arrays)
    again = run_round(resumed, 3, five, round2)
    assert list(again["robust"]["left_out"]) == ["evil"]


def test_multi_krum_with_too_few_replies_takes_the_median(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p2 = build(tmp_path, "{rule: multi_krum, byzantine: 1}")
    # 4 replies (a site dropped out): Multi-Krum with f = 1 needs more than 2 x 1 + 2 = 4
    four = {k: HONEST[k] for k in ("bank-a", "bank-b", "bank-c")} | {"evil": 1000}
    figures = run_round(p2, 1, four, {"bank-a": 1.0, "bank-b": 2.0, "bank-c": 3.0, "evil": 10.0})
    # median(1, 2, 3, 10) = 2.5
    assert p2.global_arrays["w"] == pytest.approx(np.full((2, 3), 2.5))
    assert figures["robust"]["rule"] == "median (multi_krum fallback)"
    assert "needs more than 4 updates, got 4; taking the coordinate-wise median" in caplog.text


def test_norm_bound_clips_the_scaled_update_and_keeps_its_history(tmp_path: Path) -> None:
    p = build(tmp_path, "{norm_bound: {factor: 3.0, window: 5}, weights: equal}")
    assert isinstance(p, RobustAggregation)
    one_vec = np.ones(1, np.float32)  # a step of s moves 9 values by s: norm 3 s
    steps = {**{k: v * one_vec for k, v in HONEST_STEPS.items()}, "evil": 10.0 * one_vec}
    figures = run_round(p, 1, {**HONEST, "evil": 1000}, steps)
    # norms 3 x (1, 1.1, 0.9, 1.05, 10); median 3 x 1.05 = 3.15 -> bound 9.45, evil cut to
    # 9.45 (a step of 3.15): mean step (1 + 1.1 + 0.9 + 1.05 + 3.15) / 5 = 1.44
    assert figures["robust"]["norm_bound"] == pytest.approx(9.45)
    assert figures["robust"]["clipped"] == ["evil"]
    assert p.global_arrays["w"] == pytest.approx(np.full((2, 3), 1.44), rel=1e-6)
    # a resumed run keeps the learned history: round 2's bound is again 3 x median of round 1's
    # accepted norms (3, 3.3, 2.7, 3.15, 9.45) = 3 x 3.15
    resumed = build(tmp_path, "{norm_bound: {factor: 3.0, window: 5}, weights: equal}")
    resumed.load_state_dict(p.state_dict(), p.global_arrays)
    figures = run_round(
        resumed, 2, {**HONEST, "evil": 1000}, {k: 20.0 * one_vec for k in [*HONEST, "evil"]}
    )
    assert figures["robust"]["norm_bound"] == pytest.approx(9.45)
    assert figures["robust"]["clipped"] == sorted([*HONEST, "evil"])


def test_dp_over_robust_sets_equal_weights_on_the_inner_plaintext(tmp_path: Path) -> None:
    p = build(
        tmp_path,
        "{norm_bound: {factor: 3.0, window: 2}}",
        "{mode: plaintext, dp: {noise_multiplier: 1.0, clip_norm: 1.0}}",
    )
    assert isinstance(p, DifferentialPrivacy) and isinstance(p.inner, RobustAggregation)
    assert isinstance(p.inner.inner, Plaintext) and isinstance(
        p.inner.inner.weights, UniformWeights
    )


def test_registry_weight_policies_and_site_clip(tmp_path: Path) -> None:
    assert isinstance(build(tmp_path, "{weights: examples}").weights, FedNovaWeights)
    capped = build(tmp_path, "{weight_cap: 2.5}").weights
    assert isinstance(capped, CappedWeights) and capped.cap == 2.5
    secagg = build(tmp_path, "{site_clip: 2.0}", "{mode: secagg+}")
    assert isinstance(secagg, SecAggPlus) and secagg.site_clip == 2.0
    # the site clip travels in every instruction's round config
    content = secagg.instruction(R.RoundConfig(1, 7, TaskSpec()), Candidate("bank-a", 1, 10))
    assert R.RoundConfig.from_record(content.config_records[R.CONFIG]).site_clip == 2.0


def test_registry_refuses_a_rule_the_mode_cannot_run(tmp_path: Path) -> None:
    sc = scenario(tmp_path, "{}", "{mode: secagg+}")
    bad = sc.model_copy(update={"aggregation": AggregationSpec(rule="median")})
    with pytest.raises(
        ValueError, match="aggregation.rule median needs each site's update in clear"
    ):
        build_protection(ProtectionInputs(bad, INIT, tmp_path))
    with pytest.raises(ValueError, match="robust aggregation needs each site's update in clear"):
        RobustAggregation(SecAggPlus(sc.privacy, INIT), AggregationSpec(rule="median"))


@pytest.mark.parametrize(
    ("examples", "cap", "largest"),
    [
        ({"a": 1000, "b": 1200, "c": 10**12}, 4.0, 4800.0),  # 4 x median 1200
        ({"a": 14000, "b": 5000, "c": 4000}, 4.0, 14000.0),  # 14000 < 4 x 5000: unchanged
        ({"a": 0, "b": 0}, 4.0, None),
    ],
)
def test_capped_secagg_max_weight(
    examples: dict[str, int], cap: float, largest: float | None
) -> None:
    chosen = [Candidate(s, i, n) for i, (s, n) in enumerate(examples.items())]
    assert CappedWeights(cap).max_site_weight(chosen) == largest
