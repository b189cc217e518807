"""The coordinator's protection objects: weights, the registry, the DP wrapper, reply bounds."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import RecordDict

from coordinator.protection import ProtectionInputs, build_protection
from coordinator.protection.base import (
    ExchangeResult,
    FedNovaWeights,
    TrainRound,
    UniformWeights,
)
from coordinator.protection.ckks import Ckks
from coordinator.protection.dp import DifferentialPrivacy
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.secagg import SecAggPlus
from fedcore import records as R
from fedcore.config import DpSpec, PrivacySpec, Scenario, TaskSpec, load_scenario
from scheduling.base import Candidate

INIT = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
SIZES = {"bank-a": 100, "bank-b": 300, "bank-c": 600}


def candidates(sizes: dict[str, int] = SIZES) -> list[Candidate]:
    return [Candidate(s, i + 1, n) for i, (s, n) in enumerate(sorted(sizes.items()))]


def scenario(tmp_path: Path, privacy: str) -> Scenario:
    sites = "\n".join(f"  - {{id: {s}, data: {{kind: generated}}}}" for s in SIZES)
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("name: p\nrounds: 2\nscheduler: {min_sites: 2}\nsites:\n")
        + sites
        + f"\nprivacy: {privacy}\n"
    )
    return load_scenario(path)


def train_round(
    chosen: list[Candidate], step: dict[str, float], epochs: dict[str, int] | None = None
) -> TrainRound:
    """A round whose sites each add ``step[site]`` to every weight and sign nothing."""
    node_site = {c.node_id: c.site_id for c in chosen}

    def exchange(
        targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> ExchangeResult:
        replies = []
        for nid, content in targets:
            arrays, _ = R.read_instruction(content)
            assert arrays is not None
            site = node_site[nid]
            out = {k: v + np.float32(step[site]) for k, v in arrays.items()}
            reply = R.TrainReply(out, SIZES[site], 0.5, 0.01, site).to_content()
            replies.append((nid, SimpleNamespace(content=reply)))
        return ExchangeResult(cast(Any, replies), {}, 0, 0)

    def config_for(site: Candidate | None, weight: float) -> R.RoundConfig:
        return R.RoundConfig(1, 7, TaskSpec(), weight=weight)

    return TrainRound(
        round=1,
        chosen=chosen,
        config_for=config_for,
        exchange=exchange,
        verify=lambda reply, content: None,
        epochs_of=lambda site: (epochs or {}).get(site, 1),
        grid=cast(Any, None),
        timeout=1.0,
    )


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("sizes", "epochs", "expected"),
    [
        # equal epochs: examples relative to the largest, 100/600, 300/600, 600/600
        ({"a": 100, "b": 300, "c": 600}, {}, {"a": 1 / 6, "b": 0.5, "c": 1.0}),
        # FedNova: 100/1 = 100, 300/3 = 100, 600/2 = 300 -> relative 1/3, 1/3, 1
        ({"a": 100, "b": 300, "c": 600}, {"b": 3, "c": 2}, {"a": 1 / 3, "b": 1 / 3, "c": 1.0}),
        # a site that reports no data counts 0; nobody with data: everyone 1
        ({"a": 0, "b": 50}, {}, {"a": 0.0, "b": 1.0}),
        ({"a": 0, "b": 0}, {}, {"a": 1.0, "b": 1.0}),
    ],
)
def test_fednova_weights(
    sizes: dict[str, int], epochs: dict[str, int], expected: dict[str, float]
) -> None:
    got = FedNovaWeights().weights(candidates(sizes), lambda s: epochs.get(s, 1))
    assert got == pytest.approx(expected)


def test_weight_policies_for_secagg_site_reports() -> None:
    assert FedNovaWeights().max_site_weight(candidates()) == 600.0
    assert FedNovaWeights().max_site_weight(candidates({"a": 0})) is None
    assert UniformWeights().max_site_weight(candidates()) == 1.0
    assert UniformWeights().weights(candidates(), lambda s: 4) == {s: 1.0 for s in SIZES}


# --------------------------------------------------------------------------- registry


def test_registry_builds_each_mode(tmp_path: Path) -> None:
    from secure.ckks import CkksParams, public_context

    plain = build_protection(
        ProtectionInputs(scenario(tmp_path, "{mode: plaintext}"), INIT, tmp_path)
    )
    assert isinstance(plain, Plaintext) and plain.holds_global_model
    secagg = build_protection(
        ProtectionInputs(scenario(tmp_path, "{mode: secagg+}"), INIT, tmp_path)
    )
    assert isinstance(secagg, SecAggPlus) and not secagg.can_skip_round
    sc = scenario(tmp_path, "{mode: ckks}")
    ctx = public_context(CkksParams.from_spec(sc.privacy.ckks))
    ckks = build_protection(ProtectionInputs(sc, INIT, tmp_path, ctx))
    assert isinstance(ckks, Ckks) and not ckks.holds_global_model
    assert ckks.directory == tmp_path / "ckks"
    dp = build_protection(
        ProtectionInputs(
            scenario(tmp_path, "{mode: plaintext, dp: {noise_multiplier: 1.0, clip_norm: 1.0}}"),
            INIT,
            tmp_path,
        )
    )
    assert isinstance(dp, DifferentialPrivacy) and isinstance(dp.inner, Plaintext)
    assert dp.name == "plaintext" and isinstance(dp.inner.weights, UniformWeights)


def test_registry_refuses_what_cannot_run(tmp_path: Path) -> None:
    sc = scenario(tmp_path, "{mode: ckks}")
    with pytest.raises(ValueError, match="needs the coordinator kit's public CKKS context"):
        build_protection(ProtectionInputs(sc, INIT, tmp_path))
    odd = sc.model_copy(update={"privacy": PrivacySpec.model_construct(mode="rot13")})
    with pytest.raises(
        ValueError, match=r"unknown privacy mode 'rot13'; valid: ckks, plaintext, secagg\+"
    ):
        build_protection(ProtectionInputs(odd, INIT, tmp_path))


# --------------------------------------------------------------------------- rounds


def test_plaintext_round_is_the_weighted_mean() -> None:
    p = Plaintext(INIT)
    collected = p.collect(train_round(candidates(), {"bank-a": 1.0, "bank-b": 2.0, "bank-c": 3.0}))
    assert collected.sites == sorted(SIZES) and collected.rejected == {}
    p.aggregate(1, collected)
    # (100*1 + 300*2 + 600*3) / 1000 = 2.5
    assert np.allclose(p.global_arrays["w"], 2.5) and p.global_arrays["w"].dtype == np.float32
    assert INIT["w"].sum() == 0  # the caller's arrays are untouched


def test_dp_wrapper_noises_the_uniform_mean_and_counts_the_round() -> None:
    spec = DpSpec(noise_multiplier=1.0, clip_norm=0.5)
    dp = DifferentialPrivacy(Plaintext(INIT), spec, population_size=3, rng=np.random.default_rng(5))
    collected = dp.collect(train_round(candidates(), {"bank-a": 1.0, "bank-b": 2.0, "bank-c": 3.0}))
    assert collected.weights == {s: 1.0 for s in SIZES}  # every site counts once
    assert dp.round_figures() == {}  # nothing spent before the aggregate
    dp.aggregate(1, collected)
    # uniform mean (1 + 2 + 3) / 3 = 2, plus N(0, (z C / m)^2) = N(0, (0.5 / 3)^2) per value
    from secure.dp import gaussian_noise

    rng = np.random.default_rng(5)
    expected = {
        k: (2.0 + gaussian_noise(v.shape, 0.5 / 3, rng)).astype(v.dtype) for k, v in INIT.items()
    }
    for k in INIT:
        assert np.allclose(dp.global_arrays[k], expected[k])
    figures = dp.round_figures()
    assert set(figures) == {"epsilon"} and figures["epsilon"] > 0
    state = dp.state_dict()
    assert "dp" in state and dp.summary()["rounds"] == 1
    again = DifferentialPrivacy(Plaintext(INIT), spec, population_size=3)
    again.load_state_dict(state, dp.global_arrays)
    assert again.accountant.epsilon == pytest.approx(dp.accountant.epsilon)


def test_ckks_replies_are_held_to_the_plaintext_bounds(tmp_path: Path) -> None:
    from secure.ckks import CkksParams, public_context

    sc = scenario(tmp_path, "{mode: ckks}")
    ckks = Ckks(
        sc.privacy, public_context(CkksParams.from_spec(sc.privacy.ckks)), 3, INIT, tmp_path
    )
    reply = R.TrainReply({}, 10**11, float("nan"), 0.1, "bank-a", encrypted=[b"x"], length=4)
    reasons = ckks.check(reply)
    assert "update has 4 values; the model has 9" in reasons
    assert "num_examples is 100000000000; expected 1..10000000000" in reasons
    assert "training loss is nan" in reasons
    clear = R.TrainReply(INIT, 10, 0.1, 0.1, "bank-a")
    assert ckks.check(clear)[0].startswith("reply carries a clear model")
