"""The round driver resumes from the newest intact round when the newest stored one is damaged."""

from __future__ import annotations

import json
import logging
import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.numpy import load_file

from coordinator.driver import RoundDriver
from fedcore import records as R
from fedcore.config import Scenario
from fedcore.engines.inprocess import InProcessGrid
from scheduling.random_selector import RandomSelector

INIT = {"w": np.zeros((2, 3), np.float32)}
SIZES = {"bank-a": 10, "bank-b": 30, "bank-c": 60}


def adding_sites() -> ClientApp:
    """Sites add (index+1) to every weight: each round adds (10*1 + 30*2 + 60*3) / 100 = 2.5."""
    app = ClientApp()

    def site(ctx: Context) -> str:
        return str(ctx.node_config["site-id"])

    @app.query("telemetry")
    def telemetry(msg: Message, ctx: Context) -> Message:
        tel = R.Telemetry(site(ctx), SIZES[site(ctx)], "cpu", "cpu")
        return Message(tel.to_content(), reply_to=msg)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays, _ = R.read_instruction(msg.content)
        assert arrays is not None
        sid = site(ctx)
        step = float(sorted(SIZES).index(sid) + 1)
        out = {k: v + step for k, v in arrays.items()}
        return Message(R.TrainReply(out, SIZES[sid], 0.5, 0.01, sid).to_content(), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        hp, hn = [0] * R.HIST_BINS, [0] * R.HIST_BINS
        hp[-1], hn[0] = 2, 8
        rep = R.EvalReply(site(ctx), 10, 2, 0.3, {"pr_auc": 1.0}, hp, hn)
        return Message(rep.to_content(), reply_to=msg)

    return app


@pytest.fixture
def scenario(write_scenario: Callable[..., Scenario]) -> Scenario:
    sites = "".join(
        f"  - {{id: {s}, data: {{kind: generated, transactions: 300}}}}\n" for s in SIZES
    )
    head = textwrap.dedent("name: resumed\nrounds: 3\nscheduler: {min_sites: 2}\nsites:\n")
    return write_scenario(head + sites)


def test_a_damaged_newest_round_is_redone_from_the_round_before(
    scenario: Scenario,
    tmp_path: Path,
    inprocess_grid: Callable[..., InProcessGrid],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"

    def driver() -> RoundDriver:
        grid = inprocess_grid(adding_sites(), {s: {"site-id": s} for s in SIZES})
        return RoundDriver(grid, scenario, RandomSelector(1.0, 2, 0), out, INIT, wait_for_sites=1)

    assert driver().run()["status"] == "completed"
    with sqlite3.connect(out / "state" / "state.db") as conn:  # round 3's model goes bad on disk
        conn.execute("UPDATE rounds SET model = zeroblob(length(model)) WHERE round = 3")

    again = driver()
    with caplog.at_level(logging.WARNING, logger="coordinator.state"):
        result = again.run()
    assert result["status"] == "completed"
    assert again.store.recovered is not None and again.store.recovered.round == 2
    assert "round 3: model does not match its SHA-256 digest" in caplog.text
    # the run's result says so too (federation.json), not only the log
    assert "resuming after round 2" in result["state_recovered"]
    assert "round 3" in result["state_recovered"]
    rounds = [json.loads(line)["round"] for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]  # round 3 was run again, not lost and not doubled
    # the same model as a run that was never damaged: 3 rounds of +2.5
    np.testing.assert_array_equal(
        load_file(str(out / "model.safetensors"))["w"], np.full((2, 3), 7.5)
    )
