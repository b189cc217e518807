"""The site ClientApp on real (generated or CSV) data, through the in-process grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from clients.app import local_seed, make_client_app
from coordinator.app import initial_arrays
from fedcore import carry
from fedcore import records as R
from fedcore.config import (
    CsvData,
    GeneratedData,
    Scenario,
    SiteConfig,
    SitePrivacy,
    SiteSpec,
    dump_site_config,
)
from fedcore.data.csv_loader import write_transactions_csv
from fedcore.data.generator import generate_transactions
from fedcore.engines.inprocess import InProcessGrid, node_id_for
from fedcore.site_paths import STATE_DIR_KEY


@pytest.fixture
def scenario() -> Scenario:
    gen = GeneratedData(transactions=400, fraud_rate=0.02)
    return Scenario(
        name="t",
        seed=1,
        rounds=1,
        sites=[SiteSpec(id="bank-a", data=gen), SiteSpec(id="bank-b", data=gen)],
        task={"hidden": 8},  # type: ignore[arg-type]
        training={"local_epochs": 1},  # type: ignore[arg-type]
    )


@pytest.fixture
def grid_for(
    inprocess_grid: Callable[..., InProcessGrid], tmp_path: Path
) -> Callable[..., InProcessGrid]:
    """Builds the grid of the real site ClientApp over ``{site id: site config file}``.

    Each site's state directory is under ``tmp_path`` (the default, ``./fedcore-site-ID``,
    would write into the directory the tests run from).
    """

    def make(sites: dict[str, Path]) -> InProcessGrid:
        return inprocess_grid(
            make_client_app(),
            {
                s: {"site-config": str(p), STATE_DIR_KEY: str(tmp_path / f"state-{s}")}
                for s, p in sites.items()
            },
        )

    return make


def site_file(tmp_path: Path, scenario: Scenario, site: str) -> Path:
    p = tmp_path / f"{site}.yaml"
    dump_site_config(SiteConfig.from_scenario(scenario, site), p)
    return p


def ask(grid: InProcessGrid, site: str, content: R.RecordDict, mtype: str) -> Message:
    msg = Message(content, node_id_for(site), mtype, group_id="1")
    (reply,) = grid.send_and_receive([msg])
    return reply


def cfg(scenario: Scenario) -> R.RoundConfig:
    return R.RoundConfig(1, scenario.seed, scenario.task, scenario.training)


def test_train_evaluate_telemetry(
    tmp_path: Path, scenario: Scenario, grid_for: Callable[..., InProcessGrid]
) -> None:
    grid = grid_for({"bank-a": site_file(tmp_path, scenario, "bank-a")})
    init = initial_arrays(scenario)
    rep = ask(grid, "bank-a", R.train_instruction(init, cfg(scenario)), R.TRAIN)
    assert not rep.has_error(), rep.error.reason if rep.has_error() else ""
    tr = R.TrainReply.from_content(rep.content)
    assert tr.site_id == "bank-a" and tr.num_examples > 0 and np.isfinite(tr.loss)
    assert set(tr.arrays) == set(init) and all(tr.arrays[k].shape == init[k].shape for k in init)
    assert any(not np.array_equal(tr.arrays[k], init[k]) for k in init)  # it trained

    ev = R.EvalReply.from_content(
        ask(grid, "bank-a", R.evaluate_instruction(tr.arrays, cfg(scenario)), R.EVALUATE).content
    )
    assert (
        sum(ev.hist_pos) == ev.num_positive
        and sum(ev.hist_pos) + sum(ev.hist_neg) == ev.num_examples
    )
    assert "pr_auc" in ev.metrics

    tel = R.Telemetry.from_content(
        ask(grid, "bank-a", R.telemetry_instruction(1), R.TELEMETRY).content
    )
    assert tel.site_id == "bank-a" and tel.num_train_examples == tr.num_examples
    assert tel.readings["mem_total_mib"] > 0


def test_evaluate_reply_carries_the_telemetry_it_is_asked_for(
    tmp_path: Path, scenario: Scenario, grid_for: Callable[..., InProcessGrid]
) -> None:
    grid = grid_for({"bank-a": site_file(tmp_path, scenario, "bank-a")})
    init = initial_arrays(scenario)
    plain = ask(grid, "bank-a", R.evaluate_instruction(init, cfg(scenario)), R.EVALUATE)
    assert carry.carried_telemetry(plain.content) is None  # not asked: none
    asked = carry.request_telemetry(R.evaluate_instruction(init, cfg(scenario)), 2)
    rep = ask(grid, "bank-a", asked, R.EVALUATE)
    ev = R.EvalReply.from_content(rep.content)
    assert ev.site_id == "bank-a" and ev.num_examples > 0
    carried = carry.carried_telemetry(rep.content)
    assert carried is not None
    tel = R.Telemetry.from_content(carried)
    query = R.telemetry_instruction(2, "", scenario.task)
    queried = R.Telemetry.from_content(ask(grid, "bank-a", query, R.TELEMETRY).content)
    # the same answer as a telemetry query (host readings move between the two)
    assert (tel.site_id, tel.num_train_examples, tel.device, tel.vendor, tel.model_round) == (
        queried.site_id,
        queried.num_train_examples,
        queried.device,
        queried.vendor,
        queried.model_round,
    )
    assert set(tel.readings) == set(queried.readings)


def test_a_train_reply_carries_the_incoming_models_evaluation_and_the_same_update(
    tmp_path: Path, scenario: Scenario, grid_for: Callable[..., InProcessGrid]
) -> None:
    site = site_file(tmp_path, scenario, "bank-a")
    init = initial_arrays(scenario)
    plain_grid = grid_for({"bank-a": site})
    plain = ask(plain_grid, "bank-a", R.train_instruction(init, cfg(scenario)), R.TRAIN)
    assert carry.carried_evaluation(plain.content) is None  # not asked: none
    alone = R.EvalReply.from_content(
        ask(plain_grid, "bank-a", R.evaluate_instruction(init, cfg(scenario)), R.EVALUATE).content
    )

    # the same site afresh, asked to evaluate first and to add round 2's telemetry
    fresh = grid_for({"bank-a": site})
    asked = carry.request_telemetry(
        carry.request_evaluation(R.train_instruction(init, cfg(scenario)), 0), 2
    )
    rep = ask(fresh, "bank-a", asked, R.TRAIN)
    assert not rep.has_error(), rep.error.reason if rep.has_error() else ""
    # the update is the one a plain train instruction gives: evaluating first changes nothing
    trained, before = (
        R.TrainReply.from_content(rep.content),
        R.TrainReply.from_content(plain.content),
    )
    assert trained.digest() == before.digest()
    evaluation = carry.carried_evaluation(rep.content)
    assert evaluation is not None
    carried = R.EvalReply.from_content(evaluation)
    # the evaluation is of the incoming model: the same as an evaluate instruction's
    assert carried.hist_pos == alone.hist_pos and carried.hist_neg == alone.hist_neg
    assert carried.metrics == alone.metrics and carried.model_digest == alone.model_digest
    tel = carry.carried_telemetry(rep.content)
    assert tel is not None and R.Telemetry.from_content(tel).site_id == "bank-a"


def test_training_is_deterministic_per_site_and_round(
    tmp_path: Path, scenario: Scenario, grid_for: Callable[..., InProcessGrid]
) -> None:
    a = grid_for({"bank-a": site_file(tmp_path, scenario, "bank-a")})
    init = initial_arrays(scenario)
    r1 = R.TrainReply.from_content(
        ask(a, "bank-a", R.train_instruction(init, cfg(scenario)), R.TRAIN).content
    )
    r2 = R.TrainReply.from_content(
        ask(a, "bank-a", R.train_instruction(init, cfg(scenario)), R.TRAIN).content
    )
    for k in init:
        np.testing.assert_array_equal(r1.arrays[k], r2.arrays[k])
    assert local_seed(1, "bank-a", 1) != local_seed(1, "bank-b", 1) != local_seed(1, "bank-a", 2)


def test_missing_and_malformed_csv_become_error_replies(
    tmp_path: Path, scenario: Scenario, grid_for: Callable[..., InProcessGrid]
) -> None:
    tx = generate_transactions(GeneratedData(transactions=300, fraud_rate=0.02), seed=3)
    good = tmp_path / "good.csv"
    mapping = write_transactions_csv(tx, good)
    broken = tmp_path / "broken.csv"
    lines = good.read_text().splitlines()
    lines[5] = lines[5].replace(
        lines[5].split(",")[0], "x", 1
    )  # keep shape, then break a number below
    broken.write_text("\n".join(lines[:3] + ["garbage,row"] + lines[3:]) + "\n")
    sites = {}
    for sid, path in (("bank-a", tmp_path / "gone.csv"), ("bank-b", broken)):
        cfg_ = SiteConfig(
            id=sid,
            data=CsvData(path=path, columns=mapping),
            seed=1,
            privacy=SitePrivacy(modes=["plaintext"]),  # the scenario's mode
        )
        p = tmp_path / f"{sid}.yaml"
        dump_site_config(cfg_, p)
        sites[sid] = p
    grid = grid_for(sites)
    init = initial_arrays(scenario)
    gone = ask(grid, "bank-a", R.train_instruction(init, cfg(scenario)), R.TRAIN)
    assert gone.has_error() and "file not found" in (gone.error.reason or "")
    bad = ask(grid, "bank-b", R.train_instruction(init, cfg(scenario)), R.TRAIN)
    assert bad.has_error() and "line" in (bad.error.reason or "")
