"""The round driver over the in-process engine, with scripted sites that misbehave."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from coordinator.driver import FederationError, RoundDriver
from fedcore import carry
from fedcore import records as R
from fedcore.config import Scenario
from fedcore.engines.inprocess import InProcessGrid
from scheduling.random_selector import RandomSelector

INIT = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
SIZES = {"bank-a": 10, "bank-b": 30, "bank-c": 60}


def scripted_client(
    behaviour: dict[str, str], from_round: int = 1, *, carry_along: bool = False
) -> ClientApp:
    """Sites add (index+1) to every weight; a site may misbehave from ``from_round`` on.

    With ``carry_along``, a train reply carries the evaluation and the telemetry its
    instruction asks for, and so does an evaluate reply the telemetry (as the real site
    does); ``"no-eval"`` makes a site's evaluation fail, ``"no-telemetry"`` makes its train
    reply carry no telemetry, ``"impostor"`` makes the telemetry it carries name a site
    outside the scenario.
    """
    app = ClientApp()

    def site(ctx: Context) -> str:
        return str(ctx.node_config["site-id"])

    def evaluation(ctx: Context, how: str) -> RecordDict:
        if how == "no-eval":
            raise RuntimeError("evaluation crashed")
        hp = [0] * R.HIST_BINS
        hn = [0] * R.HIST_BINS
        hp[-1], hn[0] = 2, 8
        return R.EvalReply(site(ctx), 10, 2, 0.3, {"pr_auc": 1.0}, hp, hn).to_content()

    def add_telemetry(msg: Message, ctx: Context, how: str, content: RecordDict) -> None:
        if carry_along and carry.read_telemetry_request(msg.content) is not None:
            claimed = "bank-x" if how == "impostor" else site(ctx)
            tel = R.Telemetry(claimed, SIZES[site(ctx)], "cpu", "cpu")
            carry.attach_telemetry(content, tel.to_content())

    @app.query("telemetry")
    def telemetry(msg: Message, ctx: Context) -> Message:
        round_, _, _ = R.read_telemetry_instruction(msg.content)
        if round_ >= from_round and behaviour.get(site(ctx)) == "dies":
            raise RuntimeError("process killed")
        return Message(
            R.Telemetry(site(ctx), SIZES[site(ctx)], "cpu", "cpu").to_content(), reply_to=msg
        )

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays, cfg = R.read_instruction(msg.content)
        assert arrays is not None and cfg is not None
        sid = site(ctx)
        how = behaviour.get(sid, "ok") if cfg.round >= from_round else "ok"
        if how == "raise":
            raise RuntimeError("disk on fire")
        step = float(sorted(SIZES).index(sid) + 1)
        out = {k: v + step for k, v in arrays.items()}
        if how == "nan":
            out["w"][0, 0] = np.nan
        if how == "shape":
            out["w"] = np.zeros((3, 2), np.float32)
        if how == "missing":
            del out["b"]
        content = R.TrainReply(out, SIZES[sid], 0.5, 0.01, sid).to_content()
        asked = carry.read_evaluation_request(msg.content) is not None
        if carry_along and asked and how != "no-eval":  # the real site goes on without it
            carry.attach_evaluation(content, evaluation(ctx, how))
        if how != "no-telemetry":
            add_telemetry(msg, ctx, how, content)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        _, cfg = R.read_instruction(msg.content)
        assert cfg is not None
        how = behaviour.get(site(ctx), "ok") if cfg.round >= from_round else "ok"
        content = evaluation(ctx, how)
        add_telemetry(msg, ctx, how, content)
        return Message(content, reply_to=msg)

    return app


@pytest.fixture
def scenario(write_scenario: Callable[..., Scenario]) -> Scenario:
    sites = "\n".join(
        f"  - {{id: {s}, data: {{kind: generated, transactions: 300}}}}" for s in SIZES
    )
    return write_scenario(
        textwrap.dedent("name: scripted\nrounds: 3\nscheduler: {min_sites: 2}\nsites:\n")
        + sites
        + "\n"
    )


@pytest.fixture
def make_driver(inprocess_grid: Callable[..., InProcessGrid]) -> Callable[..., RoundDriver]:
    """Builds a round driver over the scripted sites: ``(scenario, out, behaviour, from_round=1)``."""

    def make(
        scenario: Scenario, out: Path, behaviour: dict[str, str], from_round: int = 1
    ) -> RoundDriver:
        grid = inprocess_grid(
            scripted_client(behaviour, from_round), {s: {"site-id": s} for s in SIZES}
        )
        return RoundDriver(grid, scenario, RandomSelector(1.0, 2, 0), out, INIT, wait_for_sites=1)

    return make


def rounds_log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_all_good_sites_fedavg(
    scenario: Scenario, tmp_path: Path, make_driver: Callable[..., RoundDriver]
) -> None:
    result = make_driver(scenario, tmp_path / "out", {}).run()
    assert result["status"] == "completed"
    # each round adds the example-weighted mean step (10*1 + 30*2 + 60*3) / 100 = 2.5
    from safetensors.numpy import load_file

    model = load_file(str(tmp_path / "out" / "model.safetensors"))
    np.testing.assert_allclose(model["w"], np.full((2, 3), 7.5), rtol=1e-6)
    log = rounds_log(tmp_path / "out")
    assert [r["round"] for r in log] == [1, 2, 3]
    assert log[0]["sites"] == ["bank-a", "bank-b", "bank-c"]
    assert log[0]["bytes_up"] > 0 and log[0]["bytes_down"] > 0
    assert log[0]["pr_auc"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "rounds.csv").read_text().startswith("round,sites,loss")
    assert [r["rejected"] for r in log] == [{}, {}, {}]  # every site answered: nobody listed


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("raise", "disk on fire"),
        ("nan", "NaN/Inf"),
        ("shape", "has shape (3, 2); expected (2, 3)"),
        ("missing", "missing arrays: b"),
    ],
)
def test_bad_reply_is_left_out_and_round_goes_on(
    scenario: Scenario,
    tmp_path: Path,
    make_driver: Callable[..., RoundDriver],
    how: str,
    reason: str,
) -> None:
    result = make_driver(scenario, tmp_path / "out", {"bank-c": how}).run()
    assert result["status"] == "completed"
    first = rounds_log(tmp_path / "out")[0]
    assert first["sites"] == ["bank-a", "bank-b"]
    assert reason in " ".join(first["rejected"]["bank-c"])
    from safetensors.numpy import load_file

    # aggregate of the two good sites only: (10*1 + 30*2) / 40 = 1.75 per round
    np.testing.assert_allclose(
        load_file(str(tmp_path / "out" / "model.safetensors"))["b"], np.full(3, 5.25), rtol=1e-6
    )


def test_too_few_sites_stops_clearly_and_keeps_earlier_rounds(
    scenario: Scenario, tmp_path: Path, make_driver: Callable[..., RoundDriver]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(
        FederationError, match=r"round 2: only 1 valid update\(s\), need scheduler.min_sites=2"
    ):
        make_driver(scenario, out, {"bank-b": "nan", "bank-c": "raise"}, from_round=2).run()
    status = json.loads((out / "federation.json").read_text())
    assert status["status"] == "failed" and "round 2" in status["error"]
    assert [r["round"] for r in rounds_log(out)] == [1]
    from coordinator.state import StateStore

    cp = StateStore(out).checkpoint(scenario.fingerprint())
    assert cp is not None and cp.round == 1

    # the sites are fixed: the run resumes after round 1 and completes
    result = make_driver(scenario, out, {}).run()
    assert result["status"] == "completed"
    assert [r["round"] for r in rounds_log(out)] == [1, 2, 3]
    from safetensors.numpy import load_file

    np.testing.assert_allclose(
        load_file(str(out / "model.safetensors"))["w"], np.full((2, 3), 7.5), rtol=1e-6
    )


def test_short_round_skip_keeps_the_global_model_and_goes_on(
    scenario: Scenario, tmp_path: Path, make_driver: Callable[..., RoundDriver]
) -> None:
    skip = scenario.model_copy(
        update={"scheduler": scenario.scheduler.model_copy(update={"short_round": "skip"})}
    )
    out = tmp_path / "out"
    result = make_driver(skip, out, {"bank-b": "nan", "bank-c": "raise"}, from_round=2).run()
    assert result["status"] == "completed"
    log = rounds_log(out)
    # round 1 aggregates all three (+2.5); rounds 2 and 3 have one valid update of the two
    # needed: no aggregation, every reason kept, the model stays at 2.5
    assert [r["sites"] for r in log] == [["bank-a", "bank-b", "bank-c"], [], []]
    assert "disk on fire" in " ".join(log[1]["rejected"]["bank-c"])
    from safetensors.numpy import load_file

    np.testing.assert_allclose(
        load_file(str(out / "model.safetensors"))["w"], np.full((2, 3), 2.5), rtol=1e-6
    )


def test_refuses_state_of_another_scenario(
    scenario: Scenario, tmp_path: Path, make_driver: Callable[..., RoundDriver]
) -> None:
    out = tmp_path / "out"
    make_driver(scenario, out, {}).run()
    other = scenario.model_copy(update={"seed": 99})
    from coordinator.state import StateError

    with pytest.raises(StateError, match="different scenario"):
        make_driver(other, out, {}).run()


def test_a_site_that_dies_then_disconnects_is_listed_in_every_round_it_misses(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    from coordinator.driver import NOT_CONNECTED
    from fedcore.engines.inprocess import node_id_for

    grid = inprocess_grid(
        scripted_client({"bank-c": "dies"}, from_round=2), {s: {"site-id": s} for s in SIZES}
    )
    connected = list(grid.get_node_ids())
    rounds_sent: set[str] = set()
    push = grid.push_messages

    def spy(messages: Any) -> Any:
        msgs = list(messages)
        rounds_sent.update(m.metadata.group_id for m in msgs)
        return push(msgs)

    def nodes() -> list[int]:
        if "2" in rounds_sent and node_id_for("bank-c") in connected:
            connected.remove(node_id_for("bank-c"))  # after round 2 its SuperNode is gone for good
        return list(connected)

    grid.push_messages = spy  # type: ignore[method-assign]
    grid.get_node_ids = nodes  # type: ignore[method-assign]
    out = tmp_path / "out"
    driver = RoundDriver(grid, scenario, RandomSelector(1.0, 2, 0), out, INIT, wait_for_sites=1)
    assert driver.run()["status"] == "completed"
    log = rounds_log(out)
    assert [r["sites"] for r in log] == [
        ["bank-a", "bank-b", "bank-c"],
        *[["bank-a", "bank-b"]] * 2,
    ]
    assert log[0]["rejected"] == {}
    # round 2: it raised on telemetry; its node is named by the site it answered for in round 1
    assert list(log[1]["rejected"]) == ["bank-c"]
    assert "telemetry: site error" in log[1]["rejected"]["bank-c"][0]
    assert "process killed" in log[1]["rejected"]["bank-c"][0]
    # round 3: not connected at all, listed once with the reason
    assert log[2]["rejected"] == {"bank-c": [NOT_CONNECTED]}


def test_a_site_that_never_connects_is_listed_in_every_round(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    from coordinator.driver import NOT_CONNECTED

    grid = inprocess_grid(scripted_client({}), {s: {"site-id": s} for s in ("bank-a", "bank-b")})
    out = tmp_path / "out"
    driver = RoundDriver(grid, scenario, RandomSelector(1.0, 2, 0), out, INIT, wait_for_sites=0)
    assert driver.run()["status"] == "completed"
    log = rounds_log(out)
    assert [r["rejected"] for r in log] == [{"bank-c": [NOT_CONNECTED]}] * 3
    assert NOT_CONNECTED == "not connected: no telemetry this round"


def sent_types(grid: InProcessGrid) -> list[tuple[int, str]]:
    """Record (round, message type) of every message the grid is given, in order."""
    sent: list[tuple[int, str]] = []
    push = grid.push_messages

    def spy(messages: Any) -> Any:
        msgs = list(messages)
        sent.extend((int(m.metadata.group_id), m.metadata.message_type) for m in msgs)
        return push(msgs)

    grid.push_messages = spy  # type: ignore[method-assign]
    return sent


def carrying_driver(
    scenario: Scenario,
    out: Path,
    inprocess_grid: Callable[..., InProcessGrid],
    behaviour: dict[str, str],
    from_round: int = 1,
) -> tuple[RoundDriver, list[tuple[int, str]]]:
    grid = inprocess_grid(
        scripted_client(behaviour, from_round, carry_along=True), {s: {"site-id": s} for s in SIZES}
    )
    sent = sent_types(grid)
    driver = RoundDriver(grid, scenario, RandomSelector(1.0, 2, 0), out, INIT, wait_for_sites=1)
    return driver, sent


def test_a_round_after_the_first_is_one_exchange(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    driver, sent = carrying_driver(scenario, tmp_path / "out", inprocess_grid, {})
    assert driver.run()["status"] == "completed"
    telemetry = [rnd for rnd, t in sent if t == R.TELEMETRY]
    assert telemetry == [1, 1, 1]  # only round 1 asks: later rounds use what training carried
    assert [t for rnd, t in sent if rnd == 2] == [R.TRAIN] * 3
    # the last round's train batch, then one evaluation of the final model
    assert [t for rnd, t in sent if rnd == 3 and t != R.EXPORT] == [R.TRAIN] * 3 + [R.EVALUATE] * 3
    log = rounds_log(tmp_path / "out")
    assert [r["exchanges"] for r in log] == [2, 1, 2]
    assert [r["sites"] for r in log] == [["bank-a", "bank-b", "bank-c"]] * 3
    assert [r["rejected"] for r in log] == [{}, {}, {}]
    # every round's model was evaluated: rounds 1 and 2 by the next round's train batch
    assert [r["pr_auc"] for r in log] == [pytest.approx(1.0)] * 3
    assert [sorted(r["per_site"]) for r in log] == [sorted(SIZES)] * 3
    from safetensors.numpy import load_file

    # the same model as with a telemetry query every round (test_all_good_sites_fedavg)
    model = load_file(str(tmp_path / "out" / "model.safetensors"))
    np.testing.assert_allclose(model["w"], np.full((2, 3), 7.5), rtol=1e-6)


def test_what_each_instruction_asks_to_carry(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    grid = inprocess_grid(scripted_client({}, carry_along=True), {s: {"site-id": s} for s in SIZES})
    asked: list[tuple[str, int | None, int | None]] = []
    push = grid.push_messages

    def spy(messages: Any) -> Any:
        msgs = list(messages)
        asked.extend(
            (
                m.metadata.message_type,
                carry.read_evaluation_request(m.content),
                carry.read_telemetry_request(m.content),
            )
            for m in msgs
            if m.metadata.message_type in (R.TRAIN, R.EVALUATE)
        )
        return push(msgs)

    grid.push_messages = spy  # type: ignore[method-assign]
    RoundDriver(grid, scenario, RandomSelector(1.0, 2, 0), tmp_path / "out", INIT).run()
    assert asked == [
        *[(R.TRAIN, None, 2)] * 3,  # round 1: nothing to evaluate yet
        *[(R.TRAIN, 1, 3)] * 3,
        *[(R.TRAIN, 2, None)] * 3,  # the last round needs no next telemetry
        *[(R.EVALUATE, None, None)] * 3,  # the final model
    ]


def test_a_site_not_chosen_evaluates_in_the_same_exchange(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    grid = inprocess_grid(scripted_client({}, carry_along=True), {s: {"site-id": s} for s in SIZES})
    sent = sent_types(grid)
    # two of three sites per round: the third evaluates (and answers telemetry) alongside
    driver = RoundDriver(grid, scenario, RandomSelector(2 / 3, 2, 0), tmp_path / "out", INIT)
    assert driver.run()["status"] == "completed"
    # round 1: the telemetry query, then the train batch with the third site's telemetry query
    assert sorted(t for rnd, t in sent if rnd == 1) == sorted([R.TELEMETRY] * 4 + [R.TRAIN] * 2)
    assert sorted(t for rnd, t in sent if rnd == 2) == sorted([R.EVALUATE] + [R.TRAIN] * 2)
    log = rounds_log(tmp_path / "out")
    assert [len(r["sites"]) for r in log] == [2, 2, 2]
    assert [r["exchanges"] for r in log] == [2, 1, 2]
    assert [sorted(r["per_site"]) for r in log] == [sorted(SIZES)] * 3


def test_a_site_whose_train_reply_carried_no_telemetry_is_asked_for_it(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    driver, sent = carrying_driver(
        scenario, tmp_path / "out", inprocess_grid, {"bank-b": "no-telemetry"}, from_round=2
    )
    assert driver.run()["status"] == "completed"
    telemetry = [rnd for rnd, t in sent if t == R.TELEMETRY]
    assert telemetry == [1, 1, 1, 3]  # bank-b carried nothing in round 2: asked in round 3
    log = rounds_log(tmp_path / "out")
    assert [r["exchanges"] for r in log] == [2, 1, 3]
    assert [r["sites"] for r in log] == [["bank-a", "bank-b", "bank-c"]] * 3
    assert [r["rejected"] for r in log] == [{}, {}, {}]


def test_an_evaluation_that_fails_at_the_site_is_asked_again_and_its_reason_kept(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    driver, sent = carrying_driver(
        scenario, tmp_path / "out", inprocess_grid, {"bank-b": "no-eval"}, from_round=1
    )
    assert driver.run()["status"] == "completed"
    # bank-b trains on, without the evaluation: it alone gets an evaluate instruction after
    assert [t for rnd, t in sent if rnd == 2] == [R.TRAIN] * 3 + [R.EVALUATE]
    log = rounds_log(tmp_path / "out")
    assert [r["sites"] for r in log] == [["bank-a", "bank-b", "bank-c"]] * 3
    assert [r["exchanges"] for r in log] == [2, 2, 3]
    assert [sorted(r["per_site"]) for r in log] == [["bank-a", "bank-c"]] * 3
    problems = [e["eval_problems"] for e in driver.schedule]
    assert all(list(p) == ["bank-b"] for p in problems), problems
    assert all("evaluation crashed" in p["bank-b"][0] for p in problems), problems


def test_carried_telemetry_is_checked_like_a_telemetry_reply(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    from fedcore.engines.inprocess import node_id_for

    driver, _ = carrying_driver(
        scenario, tmp_path / "out", inprocess_grid, {"bank-c": "impostor"}, from_round=1
    )
    assert driver.run()["status"] == "completed"
    log = rounds_log(tmp_path / "out")
    # round 1's train reply carried bank-c's node claiming bank-x: round 2 refuses it, and the
    # node is not asked again (it answered), so it misses round 2 with the reason
    assert log[0]["rejected"] == {}
    assert log[1]["rejected"] == {
        "bank-c": ["telemetry: site id 'bank-x' is not a member of this scenario"]
    }
    assert log[1]["sites"] == ["bank-a", "bank-b"]
    # left out of round 2's batch, bank-c is queried in round 3 and answers as itself
    assert log[2]["sites"] == ["bank-a", "bank-b", "bank-c"]
    assert [r["exchanges"] for r in log] == [2, 1, 3]
    assert driver._site_of_node[node_id_for("bank-c")] == "bank-c"


def test_resume_asks_every_node_for_telemetry_again_and_evaluates_the_pending_model(
    scenario: Scenario, tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    out = tmp_path / "out"
    driver, _ = carrying_driver(
        scenario, out, inprocess_grid, {"bank-b": "nan", "bank-c": "raise"}, from_round=2
    )
    with pytest.raises(FederationError, match="round 2"):
        driver.run()
    # the failed run's log holds round 1; its model's evaluation came with round 2's batch
    assert [r["round"] for r in rounds_log(out)] == [1]
    driver, sent = carrying_driver(scenario, out, inprocess_grid, {})
    assert driver.run()["status"] == "completed"
    assert [rnd for rnd, t in sent if t == R.TELEMETRY] == [2, 2, 2]
    log = rounds_log(out)
    assert [r["round"] for r in log] == [1, 2, 3]
    assert [r["exchanges"] for r in log] == [2, 2, 2]
    assert [r["pr_auc"] for r in log] == [pytest.approx(1.0)] * 3


def test_replies_that_arrive_while_a_pull_blocks_past_the_deadline_still_count(
    scenario: Scenario, tmp_path: Path, make_driver: Callable[..., RoundDriver]
) -> None:
    # Through Flower, one pull can block for long: it retries the objects of a reply whose
    # site died mid-upload. The other sites' replies, in by then, must not be dropped.
    driver = make_driver(scenario, tmp_path / "out", {})
    driver.timeout = 0.3
    grid = driver.grid
    pull = grid.pull_messages
    held: list[Message] = []

    def slow_first_pull(ids: Any) -> list[Message]:
        if held:  # the second pull: what came in while the first one blocked
            out, held[:] = list(held), []
            return out
        first, *rest = list(pull(ids))
        held.extend(rest)
        time.sleep(0.5)  # past the deadline
        return [first]

    grid.pull_messages = slow_first_pull  # type: ignore[method-assign]
    nodes = sorted(grid.get_node_ids())
    content = R.telemetry_instruction(1, driver.run_key, scenario.task)
    replies, errors, _, _ = driver.exchange(((n, content) for n in nodes), R.TELEMETRY, 1)
    assert errors == {}
    assert sorted(n for n, _ in replies) == nodes
