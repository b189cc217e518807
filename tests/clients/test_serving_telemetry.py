"""A site's scoring-service monitor reaches the coordinator as aggregate numbers only.

The site's telemetry carries its monitor's summary (``telemetry.serving``) read from
``STATE/serving/monitor.json``: counts, PSI, PR-AUC and its reference, flagged rates and
alarm flags, parsed strictly on the coordinator's side; the round record notes it and the
status board shows a line per site with an alarm. No transaction id, account, device or
score of the site's own data ever travels with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from clients.app import make_client_app
from coordinator.round_notes import serving_note
from fedcore import carry
from fedcore import records as R
from fedcore.config import GeneratedData, Scenario, SiteConfig, SiteSpec, dump_site_config
from fedcore.data.generator import generate_stream
from fedcore.engines.deployment.status import StatusBoard, serving_alarm
from fedcore.engines.inprocess import InProcessGrid, node_id_for
from fedcore.records.replies import SERVING_KEYS, TELEMETRY_SERVING
from fedcore.serving.monitor import (
    STATUS_FILE,
    Monitor,
    MonitorSpec,
    MonitorStatus,
    Reference,
    write_status,
)
from fedcore.site_paths import STATE_DIR_KEY

SITE = "bank-a"
DATA = GeneratedData(transactions=400, fraud_rate=0.02)


def _status(psi_scores: float = 0.95, reference_metric: float | None = 0.9) -> MonitorStatus:
    """A monitor after 600 scores (all near ``psi_scores``) and 300 labels (PR-AUC about 0.3)."""
    rng = np.random.default_rng(0)
    ref = Reference((0.0, 0.5, 1.0), (0.5, 0.5), "pr_auc", reference_metric, 0.5, 0.02, 1000)
    spec = MonitorSpec(score_window=1000, min_scores=100, min_labels=100, min_positives=5)
    mon = Monitor(spec, ref)
    mon.observe_scores(np.clip(psi_scores + rng.normal(0, 0.01, 600), 0, 1))
    labels = (rng.random(300) < 0.1).astype(int)
    mon.observe_labels(np.clip(0.4 + 0.1 * labels + rng.normal(0, 0.2, 300), 0, 1), labels)
    return mon.status()


def _telemetry(serving: dict[str, float]) -> R.Telemetry:
    return R.Telemetry(SITE, 100, "cpu", "cpu", {"util_pct": 5.0}, serving=serving)


# --------------------------------------------------------------------------- the record


def test_telemetry_round_trips_the_serving_summary() -> None:
    summary = {**_status().summary(), "status_age_s": 12.5}
    tel = _telemetry(summary)
    content = tel.to_content()
    assert set(content.metric_records[TELEMETRY_SERVING]) == set(summary)
    back = R.Telemetry.from_content(content)
    assert back == tel and back.digest() == tel.digest()
    assert tel.digest() != _telemetry({}).digest()  # the summary is signed
    assert TELEMETRY_SERVING not in _telemetry({}).to_content().metric_records
    # carried on a train or evaluate reply, it comes back the same
    reply = carry.attach_telemetry(RecordDict(), content)
    carried = carry.carried_telemetry(reply)
    assert carried is not None and R.Telemetry.from_content(carried) == tel


def test_every_summary_key_is_a_known_telemetry_key() -> None:
    for status in (_status(), Monitor(MonitorSpec(), _status_reference()).status()):
        assert set(status.summary()) <= set(SERVING_KEYS)


def _status_reference() -> Reference:
    return Reference((0.0, 1.0), (1.0,))


@pytest.mark.parametrize(
    ("serving", "word"),
    [
        ({"tx_id": 1.0}, "expected keys among"),
        ({"psi": [0.1, 0.2]}, "expected a finite number"),  # a list of scores
        ({"pr_auc": float("nan")}, "expected a finite number"),
        ({"pr_auc": 1.5}, r"in \[0, 1\]"),
        ({"n_scored": -1.0}, "expected a finite number"),
        ({"n_scored": 10.5}, "whole number"),
        ({"retrain": 0.5}, "whole number"),
    ],
)
def test_a_serving_summary_is_parsed_strictly(serving: dict[str, Any], word: str) -> None:
    content = _telemetry({}).to_content()
    content[TELEMETRY_SERVING] = MetricRecord(serving)
    with pytest.raises(ValueError, match=f"telemetry serving.*{word}"):
        R.Telemetry.from_content(content)


def test_a_serving_summary_has_a_bounded_size() -> None:
    content = _telemetry({}).to_content()
    content[TELEMETRY_SERVING] = MetricRecord({f"k{i}": 0.0 for i in range(500)})
    with pytest.raises(ValueError, match=f"at most {len(SERVING_KEYS)} entries, found 500"):
        R.Telemetry.from_content(content)


# --------------------------------------------------------------------------- the coordinator


def test_round_records_note_new_or_changed_summaries(caplog: pytest.LogCaptureFixture) -> None:
    shown: dict[str, dict[str, float]] = {}
    quiet = _status(psi_scores=0.5, reference_metric=None).summary()
    alarmed = _status().summary()
    assert quiet["retrain"] == 0.0 and alarmed["retrain"] == 1.0
    with caplog.at_level(logging.WARNING, logger="coordinator.driver"):
        assert serving_note({SITE: quiet}, shown) == {"serving": {SITE: quiet}}
        assert serving_note({SITE: quiet}, shown) == {}  # unchanged: not repeated
        assert not caplog.records
        assert serving_note({SITE: alarmed, "bank-b": quiet}, shown) == {
            "serving": {SITE: alarmed, "bank-b": quiet}
        }
        serving_note({SITE: {**alarmed, "n_scored": 700.0}}, shown)  # still raised: no new line
    (warning,) = caplog.records
    assert "bank-a" in warning.getMessage() and "alarm_psi" in warning.getMessage()


def test_the_status_board_shows_a_line_per_site_with_an_alarm() -> None:
    alarmed = _status().summary()
    assert alarmed["alarm_psi"] == 1.0 and alarmed["alarm_metric"] == 1.0
    board = StatusBoard("s", [SITE, "bank-b"])
    record = {"round": 1, "sites": [SITE], "serving": {SITE: alarmed, "bank-b": {"retrain": 0.0}}}
    board.observe(record)
    snap = board.snapshot()
    (line,) = snap["serving_alarms"]
    assert line["site"] == SITE
    assert line["alarm"] == serving_alarm(alarmed)
    assert f"score drift: PSI {alarmed['psi']:.3g} > 0.2" in line["alarm"]
    bound = 0.9 * (1 - 0.05)
    assert f"pr_auc {alarmed['pr_auc']:.3g} < {bound:.3g} (0.9 at export)" in line["alarm"]
    assert line["alarm"].endswith("retrain: start a new federated run")
    sites = {s["id"]: s for s in snap["sites"]}
    assert sites[SITE]["serving"] == alarmed and "serving" in sites["bank-b"]
    # a later record without serving keeps the last summary shown
    board.observe({"round": 2, "sites": [SITE]})
    assert [a["site"] for a in board.snapshot()["serving_alarms"]] == [SITE]
    assert serving_alarm({"retrain": 0.0, "psi": 0.01}) == ""
    # NaN is not shown: the alarm line needs its flags, and retrain 0 clears it
    board.observe({"round": 3, "serving": {SITE: {"psi": float("nan"), "retrain": 0.0}}})
    assert board.snapshot()["serving_alarms"] == []


# --------------------------------------------------------------------------- privacy


def _values(content: RecordDict) -> list[Any]:
    """Every key and value of every record of a reply."""
    out: list[Any] = []
    for records in (content.config_records, content.metric_records):
        for name, record in records.items():
            out.append(name)
            for k, v in record.items():
                out.extend([k, v])
    return out


def test_telemetry_carries_only_aggregate_numbers_of_the_served_traffic(
    tmp_path: Path, inprocess_grid: Callable[..., InProcessGrid]
) -> None:
    scenario = Scenario.model_validate(
        {
            "name": "t",
            "seed": 1,
            "rounds": 1,
            "sites": [SiteSpec(id=SITE, data=DATA)],
            "scheduler": {"min_sites": 1},
        }
    )
    site_file = tmp_path / f"{SITE}.yaml"
    dump_site_config(SiteConfig.from_scenario(scenario, SITE), site_file)
    state = tmp_path / "state"
    grid = inprocess_grid(
        make_client_app(), {SITE: {"site-config": str(site_file), STATE_DIR_KEY: str(state)}}
    )

    def ask() -> tuple[R.Telemetry, RecordDict]:
        msg = Message(R.telemetry_instruction(1), node_id_for(SITE), R.TELEMETRY, group_id="1")
        (reply,) = grid.send_and_receive([msg])
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        return R.Telemetry.from_content(reply.content), reply.content

    tel, _ = ask()
    assert tel.serving == {}  # no scoring service: nothing
    # the site's service scored its own new transactions and got their labels back
    served = generate_stream(DATA, 3, transactions=800)
    scores = np.random.default_rng(7).random(len(served))
    mon = Monitor(
        MonitorSpec(score_window=1000, min_scores=100, min_labels=100, min_positives=5),
        Reference((0.0, 0.5, 1.0), (0.8, 0.2), "pr_auc", 0.9, 0.5, 0.1, 500),
    )
    mon.observe_scores(scores)
    mon.observe_labels(scores[:400], served.label[:400])
    status = mon.status()
    write_status(state / STATUS_FILE, status)
    # a monitor file someone tampered with: extra fields never reach telemetry
    raw = json.loads((state / STATUS_FILE).read_text())
    raw.update(tx_ids=served.tx_id[:5].tolist(), scores=scores[:5].tolist())
    (state / STATUS_FILE).write_text(json.dumps(raw))

    tel, content = ask()
    expected = status.summary()
    assert {k: v for k, v in tel.serving.items() if k != "status_age_s"} == expected
    assert 0.0 <= tel.serving["status_age_s"] < 600
    assert tel.serving["retrain"] == 1.0 and tel.serving["n_scored"] == 800
    values = _values(content)
    # only numbers in the serving record: no list, no text
    serving_record = content.metric_records[TELEMETRY_SERVING]
    assert all(type(v) is float for v in serving_record.values())
    assert set(serving_record) <= set(SERVING_KEYS)
    # none of the site's ids, and none of the scores it served, travels
    texts = {v for v in values if isinstance(v, str)}
    for column in (served.tx_id, served.payer, served.payee, served.device, served.merchant):
        assert not texts & {str(x) for x in column if x}
    numbers = {float(v) for v in values if isinstance(v, int | float)}
    assert not numbers & {float(s) for s in scores}
    assert not any(isinstance(v, list) for v in values)
