"""aggregation.site_clip in every mode: sites clip before protecting, and a site that does not clip is caught.

Plaintext: the coordinator refuses the one unclipped reply. SecAgg+ (a real round over
in-process sites): the coordinator refuses the round whose mean update is over the bound.
CKKS (the real codec): the sites refuse to apply an aggregate whose decrypted mean update
is over the bound, naming the round.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.model_store import GlobalModelStore
from clients.protection.ckks import CkksSite, bring_up_to_date, flatten
from clients.protection.plaintext import PlaintextSite
from clients.protection.secagg import SecAggSite, read_fit
from clients.runtime import LocalTraining
from coordinator.errors import FederationError
from coordinator.protection.base import CappedWeights, ExchangeResult, TrainRound
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.secagg import SecAggPlus
from coordinator.robust import update_norm
from fedcore import records as R
from fedcore.config import PrivacySpec, SecAggSpec, SiteConfig, TaskSpec
from fedcore.engines.inprocess import InProcessGrid, node_id_for
from scheduling.base import Candidate
from secure.secagg import fit_reply_content, secagg_mod

GLOBAL = {"w": np.full((3, 4), 0.25, np.float32), "b": np.zeros(7, np.float32)}
CLIP = 1.0
SIGNLESS = cast(Any, SimpleNamespace(sign=lambda site, content, payload: content))


def site(i: int) -> str:
    return f"bank-{i}"


def trained(i: int, base: dict[str, np.ndarray], step: float, examples: int = 100) -> LocalTraining:
    cfg = SiteConfig.model_validate({"id": site(i), "data": {"kind": "generated"}})
    arrays = {k: (v + np.float32(step)).astype(v.dtype) for k, v in base.items()}
    return LocalTraining(cfg, arrays, examples, 0.5, 0.1)


def norm_of(arrays: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> float:
    return update_norm({k: np.asarray(arrays[k], np.float64) - base[k] for k in base})


# --------------------------------------------------------------------------- plaintext


def test_plaintext_site_clips_and_the_coordinator_refuses_a_site_that_does_not() -> None:
    coordinator = Plaintext(GLOBAL, site_clip=CLIP)
    chosen = [Candidate(site(i), i + 1, 100) for i in range(3)]

    def exchange(
        targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> ExchangeResult:
        replies = []
        for nid, content in targets:
            arrays, cfg = R.read_instruction(content)
            assert arrays is not None and cfg is not None and cfg.site_clip == CLIP
            i = nid - 1
            done = trained(i, arrays, 0.5)  # norm 0.5 x sqrt(19) = 2.18 before clipping
            if i == 2:  # does not clip
                reply = R.TrainReply(done.arrays, 100, 0.5, 0.1, site(i), round=1).to_content()
            else:
                reply = PlaintextSite().reply(SIGNLESS, cfg, arrays, done)
            replies.append((nid, SimpleNamespace(content=reply)))
        return ExchangeResult(cast(Any, replies), {}, 0, 0)

    rnd = TrainRound(
        round=1,
        chosen=chosen,
        config_for=lambda c, w: R.RoundConfig(1, 7, TaskSpec(), weight=w),
        exchange=exchange,
        verify=lambda reply, content: None,
        epochs_of=lambda s: 1,
        grid=cast(Any, None),
        timeout=1.0,
    )
    collected = coordinator.collect(rnd)
    assert collected.sites == [site(0), site(1)]
    (reason,) = collected.rejected[site(2)]
    assert "update has L2 norm 2.17945, over aggregation.site_clip 1" in reason
    for _, reply in collected.accepted:
        assert norm_of(reply.arrays, GLOBAL) <= CLIP


# --------------------------------------------------------------------------- SecAgg+


pytestmark = pytest.mark.usefixtures("task_identity")


def secagg_grid(
    steps: dict[int, float], examples: dict[int, int], clips: set[int]
) -> InProcessGrid:
    """Five in-process sites; those in ``clips`` reply through SecAggSite (clip, weight cap)."""

    app = ClientApp(mods=[secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        i = int(context.node_config["index"])
        cfg, base = read_fit(msg.content)
        done = trained(i, base, steps[i], examples[i])
        if i in clips:
            content = SecAggSite().reply(cast(Any, None), cfg, base, done)
        else:  # a site that neither clips nor caps its weight
            metrics = {"loss": 0.5, "seconds": 0.1, "num_examples": examples[i]}
            content = fit_reply_content([done.arrays[n] for n in base], examples[i], metrics)
        return Message(content, reply_to=msg)

    return InProcessGrid(app, {site(i): {"index": i} for i in range(5)})


def secagg_round(grid: InProcessGrid, telemetry: dict[int, int]) -> tuple[SecAggPlus, Any]:
    privacy = PrivacySpec(
        mode="secagg+", secagg=SecAggSpec(num_shares=3, reconstruction_threshold=2)
    )
    coordinator = SecAggPlus(privacy, GLOBAL, site_clip=CLIP)
    coordinator.weights = CappedWeights(4.0)
    chosen = [Candidate(site(i), node_id_for(site(i)), telemetry[i]) for i in range(5)]
    rnd = TrainRound(
        round=1,
        chosen=chosen,
        config_for=lambda c, w: R.RoundConfig(1, 7, TaskSpec(), privacy=privacy, weight=w),
        exchange=cast(Any, None),
        verify=lambda reply, content: None,
        epochs_of=lambda s: 1,
        grid=grid,
        timeout=30.0,
    )
    return coordinator, rnd


def test_secagg_sites_clip_and_cap_their_weight() -> None:
    # telemetry 100, 100, 100, 100, 1000: capped at 4 x 100 = 400, the largest a site may
    # report; site 4 trained on 1000 examples and reports 400 instead of being dropped
    sizes = {0: 100, 1: 100, 2: 100, 3: 100, 4: 1000}
    grid = secagg_grid({i: 0.5 for i in range(5)}, sizes, clips=set(range(5)))
    coordinator, rnd = secagg_round(grid, sizes)
    collected = coordinator.collect(rnd)
    assert collected.sites == [site(i) for i in range(5)] and not collected.rejected
    assert collected.pending is not None
    assert norm_of(collected.pending, GLOBAL) <= CLIP * 1.001


def test_secagg_round_with_a_site_that_does_not_clip_is_refused() -> None:
    sizes = {i: 100 for i in range(5)}
    grid = secagg_grid({0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5, 4: 3.0}, sizes, clips={0, 1, 2, 3})
    coordinator, rnd = secagg_round(grid, sizes)
    with pytest.raises(FederationError, match=r"round 1: the SecAgg\+ mean update has L2 norm"):
        coordinator.collect(rnd)
    # the mean: (4 x 1.0 + 3 sqrt(19)) / 5 = 3.4 > 1 + the quantization error


# --------------------------------------------------------------------------- CKKS


def test_ckks_sites_refuse_an_aggregate_over_the_clip_naming_the_round(tmp_path: Path) -> None:
    from secure.ckks import CkksParams, new_secret_context
    from secure.codecs import make_codec

    privacy = PrivacySpec(mode="ckks")
    codec = make_codec(privacy, new_secret_context(CkksParams.from_spec(privacy.ckks)), 3)
    base = {"w": np.zeros(50, np.float32)}
    clip = 0.1
    cfg = R.RoundConfig(1, 7, TaskSpec(), privacy=privacy, max_sites=3, site_clip=clip)
    runtime = cast(Any, SimpleNamespace(codec=lambda *a: codec, sign=SIGNLESS.sign))

    def encrypted(i: int, step: float, clips: bool) -> list[bytes]:
        done = trained(i, base, step)
        if clips:
            reply = R.TrainReply.from_content(CkksSite().reply(runtime, cfg, base, done))
            assert reply.encrypted is not None
            return reply.encrypted
        return codec.encrypt(flatten(done.arrays) - flatten(base))  # weight 1, unclipped

    def apply(chunks: list[list[bytes]], where: str) -> dict[str, np.ndarray]:
        total = codec.add(chunks, 50)
        content = R.ckks_instruction(
            cfg, R.CkksAggregates(50, [R.CkksRound(1, total, 3.0, 3)]), base
        )
        return bring_up_to_date(GlobalModelStore(tmp_path / where), content, codec, clip)[1]

    # every site steps 0.02 per value: norm 0.02 sqrt(50) = 0.141, clipped to 0.1
    honest = apply([encrypted(i, 0.02, True) for i in range(3)], "ok")
    assert norm_of(honest, base) == pytest.approx(clip, rel=1e-3)
    # site 2 sends 0.08 per value unclipped (norm 0.566): mean (0.1 + 0.1 + 0.566) / 3 = 0.255
    rogue = [encrypted(0, 0.02, True), encrypted(1, 0.02, True), encrypted(2, 0.08, False)]
    with pytest.raises(
        ValueError, match=r"aggregate of round 1 decrypts to a mean update of L2 norm 0\.25"
    ):
        apply(rogue, "refused")
    assert GlobalModelStore(tmp_path / "refused").load() is None  # nothing applied
