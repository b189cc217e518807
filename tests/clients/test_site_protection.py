"""The site's protection objects: registry, DP clipping as a wrapper, what a SecAgg+ reply weighs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import RecordDict

from clients.protection import read_round, site_protection
from clients.protection.ckks import CkksSite, flatten, unflatten
from clients.protection.dp import ClippedUpdates, clipped_model
from clients.protection.plaintext import PlaintextSite
from clients.protection.secagg import SecAggSite
from clients.runtime import LocalTraining
from fedcore import records as R
from fedcore.config import DpSpec, PrivacySpec, SiteConfig, SitePrivacy, TaskSpec

DP = DpSpec(noise_multiplier=1.0, clip_norm=0.5)
BASE = {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}
ANY_MODE = SitePrivacy(modes=["plaintext", "ckks", "secagg+"])


def test_registry_builds_each_mode_and_wraps_dp() -> None:
    assert isinstance(site_protection(PrivacySpec(), ANY_MODE), PlaintextSite)
    assert isinstance(site_protection(PrivacySpec(mode="ckks"), ANY_MODE), CkksSite)
    wrapped = site_protection(PrivacySpec(mode="secagg+", dp=DP), ANY_MODE)
    assert isinstance(wrapped, ClippedUpdates) and isinstance(wrapped.inner, SecAggSite)
    assert wrapped.inner.uniform_weights and wrapped.name == "secagg+"
    with pytest.raises(ValueError, match=r"unknown privacy mode 'rot13'; valid: ckks, plaintext"):
        site_protection(PrivacySpec.model_construct(mode="rot13"), ANY_MODE)


def test_clipping_bounds_the_update_not_the_model() -> None:
    local = {"w": np.full((2, 3), 3.0, np.float32), "b": np.ones(3, np.float32) * 5}
    out = clipped_model(local, BASE, DP.clip_norm)
    delta = flatten(out) - flatten(BASE)
    assert np.linalg.norm(delta) <= DP.clip_norm
    # the direction is kept: the update (3,3,3,3,3,3 | 4,4,4) shrinks, it does not turn
    full = flatten(local) - flatten(BASE)
    assert np.allclose(delta / np.linalg.norm(delta), full / np.linalg.norm(full), atol=1e-5)
    small = {"w": BASE["w"] + 0.01, "b": BASE["b"]}
    assert all(np.array_equal(clipped_model(small, BASE, 0.5)[k], small[k]) for k in BASE)


@pytest.mark.parametrize(("dp", "weight"), [(None, 40), (DP, 1)])
def test_secagg_reply_weighs_examples_or_once_under_dp(dp: DpSpec | None, weight: int) -> None:
    protection = site_protection(PrivacySpec(mode="secagg+", dp=dp), ANY_MODE)
    site = SiteConfig.model_validate({"id": "bank-a", "data": {"kind": "generated"}})
    trained = LocalTraining(site, {k: v + 0.1 for k, v in BASE.items()}, 40, 0.3, 1.5)
    cfg = R.RoundConfig(1, 7, TaskSpec())
    content = protection.reply(cast(Any, None), cfg, dict(BASE), trained)
    assert content.metric_records["fitres.num_examples"]["num_examples"] == weight


def test_read_round_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="lacks its 'config' record"):
        read_round(RecordDict())
    cfg = R.RoundConfig(4, 7, TaskSpec(hidden=8), privacy=PrivacySpec(mode="ckks"))
    back = read_round(R.train_instruction(BASE, cfg))
    assert back == cfg


def test_flatten_round_trip_and_length_check(tmp_path: Path) -> None:
    vec = flatten(BASE)
    assert vec.dtype == np.float64 and vec.size == 9
    back = unflatten(vec, BASE)
    assert all(np.array_equal(back[k], BASE[k]) and back[k].dtype == BASE[k].dtype for k in BASE)
    with pytest.raises(ValueError, match="vector has 10 values; the model has 9"):
        unflatten(np.zeros(10), BASE)


class _ClearCodec:
    """Stands in for the CKKS codec: a chunk holds the float64 sum in clear."""

    def decrypt(self, chunks: list[bytes], length: int, count: int) -> np.ndarray:
        return np.frombuffer(chunks[0], dtype=np.float64).copy()


def test_a_site_catching_up_gets_the_same_model_as_one_that_kept_up(tmp_path: Path) -> None:
    """Two aggregates applied in one pass give the bit-identical model of applying them one by one.

    The model is float32; applying each round's mean to the float32 model of the round
    before (as every site that took part did) differs from summing both means in float64
    first by up to a float32 ulp, which made the coordinator see different models.
    """
    from clients.model_store import GlobalModelStore
    from clients.protection.ckks import bring_up_to_date

    rng = np.random.default_rng(3)
    base = {"w": rng.normal(size=(40, 30)).astype(np.float32), "b": np.zeros(30, np.float32)}
    n = sum(v.size for v in base.values())
    aggs = [
        R.CkksRound(r, [(rng.normal(size=n) * 1e-3).astype(np.float64).tobytes()], 3.0, 3)
        for r in (1, 2)
    ]
    cfg = R.RoundConfig(2, 7, TaskSpec(), privacy=PrivacySpec(mode="ckks"))

    def content(rounds: list[R.CkksRound], with_base: bool) -> RecordDict:
        return R.ckks_instruction(cfg, R.CkksAggregates(n, rounds), base if with_base else None)

    kept_up = GlobalModelStore(tmp_path / "a")
    bring_up_to_date(kept_up, content(aggs[:1], True), _ClearCodec())
    r_a, model_a = bring_up_to_date(kept_up, content(aggs[1:], False), _ClearCodec())
    late = GlobalModelStore(tmp_path / "b")
    r_b, model_b = bring_up_to_date(late, content(aggs, True), _ClearCodec())
    assert r_a == r_b == 2
    for k in base:
        assert model_a[k].dtype == model_b[k].dtype == np.float32
        assert np.array_equal(model_a[k], model_b[k]), np.abs(model_a[k] - model_b[k]).max()
