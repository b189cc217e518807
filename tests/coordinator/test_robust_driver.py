"""Robust aggregation through the round driver: what it did reaches rounds.jsonl, and a resume keeps its history."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from coordinator.driver import RoundDriver
from fedcore import records as R
from fedcore.config import Scenario
from fedcore.engines.inprocess import InProcessGrid
from scheduling.random_selector import RandomSelector

INIT = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
STEPS = {"bank-a": 1.0, "bank-b": 1.1, "bank-c": 0.9, "bank-d": 1.05, "evil": 10.0}


def sites_app() -> ClientApp:
    """Each site adds round x its step to every weight; ``evil``'s is 10 (10x the others')."""
    app = ClientApp()

    def site(ctx: Context) -> str:
        return str(ctx.node_config["site-id"])

    @app.query("telemetry")
    def telemetry(msg: Message, ctx: Context) -> Message:
        return Message(R.Telemetry(site(ctx), 100, "cpu", "cpu").to_content(), reply_to=msg)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays, cfg = R.read_instruction(msg.content)
        assert arrays is not None and cfg is not None
        out = {k: v + np.float32(cfg.round * STEPS[site(ctx)]) for k, v in arrays.items()}
        return Message(R.TrainReply(out, 100, 0.5, 0.01, site(ctx)).to_content(), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        hp, hn = [0] * R.HIST_BINS, [0] * R.HIST_BINS
        hp[-1], hn[0] = 2, 8
        reply = R.EvalReply(site(ctx), 10, 2, 0.3, {"pr_auc": 1.0}, hp, hn)
        return Message(reply.to_content(), reply_to=msg)

    return app


def run(
    scenario: Scenario, out: Path, grid: Callable[..., InProcessGrid], rounds: int | None = None
) -> None:
    g = grid(sites_app(), {s: {"site-id": s} for s in STEPS})
    driver = RoundDriver(
        g, scenario, RandomSelector(1.0, 2, 0), out, INIT, rounds=rounds, wait_for_sites=1
    )
    assert driver.run()["status"] == "completed"


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_clipped_sites_reach_the_round_record_and_a_resume_keeps_the_bound(
    write_scenario: Callable[..., Scenario],
    inprocess_grid: Callable[..., InProcessGrid],
    tmp_path: Path,
) -> None:
    sites = "\n".join(
        f"  - {{id: {s}, data: {{kind: generated, transactions: 300}}}}" for s in STEPS
    )
    scenario = write_scenario(
        textwrap.dedent(
            "name: robust\nrounds: 2\nscheduler: {min_sites: 2}\n"
            "aggregation: {norm_bound: {factor: 3.0, window: 5}}\nsites:\n"
        )
        + sites
        + "\n"
    )
    out = tmp_path / "out"
    run(scenario, out, inprocess_grid, rounds=1)
    run(scenario, out, inprocess_grid)  # resumes after round 1
    first, second = records(out)
    # round 1: norms 3 x (1, 1.1, 0.9, 1.05, 10) (9 values: norm 3 x step), bound 3 x median
    # = 3 x 3.15 = 9.45. Round 2 (after the resume) steps twice as far, norms
    # (6, 6.6, 5.4, 6.3, 60); its bound comes from round 1's accepted norms, clipped evil
    # included as 9.45: 3 x median(3, 3.3, 2.7, 3.15, 9.45) = 9.45 again (without the
    # history it would be 3 x 6.3 = 18.9)
    for rec in (first, second):
        assert rec["robust"]["rule"] == "fedavg"
        assert rec["robust"]["norm_bound"] == 9.45
        assert rec["robust"]["clipped"] == ["evil"]
        assert rec["robust"]["left_out"] == {}
        assert rec["sites"] == sorted(STEPS)
    from safetensors.numpy import load_file

    # equal example counts: round 1 moves by (1 + 1.1 + 0.9 + 1.05 + 3.15) / 5 = 1.44,
    # round 2 by (2 + 2.2 + 1.8 + 2.1 + 3.15) / 5 = 2.25
    model = load_file(str(out / "model.safetensors"))
    np.testing.assert_allclose(model["w"], np.full((2, 3), 1.44 + 2.25), rtol=1e-5)
