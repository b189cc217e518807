"""Telemetry history: recording in any order, the per-site cap, checks, JSON round trip, files."""

from __future__ import annotations

import copy
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scheduling.history import Observation, TelemetryHistory

READINGS = {"device_utilization_percent": 40.0, "background_load_percent": 10.0}


def filled() -> TelemetryHistory:
    h = TelemetryHistory()
    h.record_telemetry("bank-b", 1, 100.0, READINGS)
    h.record_work("bank-b", 1, {"steps": 10, "examples": 320})
    h.record_duration("bank-b", 1, 12.5)
    h.record_telemetry("bank-a", 2, 200.0, {"cpu_util_percent": 5.0})
    h.record_telemetry("bank-a", 1, 100.0, {"cpu_util_percent": 7.0})
    h.record_duration("bank-a", 1, 30.0)
    return h


def test_records_fill_one_observation_per_round_in_round_order() -> None:
    h = filled()
    assert h.sites() == ["bank-a", "bank-b"]
    assert len(h) == 3
    assert h.for_site("bank-b") == [
        Observation("bank-b", 1, 100.0, READINGS, {"steps": 10.0, "examples": 320.0}, 12.5)
    ]
    a = h.for_site("bank-a")
    assert [o.round for o in a] == [1, 2]  # recorded 2 first, listed in round order
    assert [o.duration_s for o in a] == [30.0, None]
    assert [o.measured for o in a] == [True, False]
    assert h.for_site("nobody") == []
    assert h.histories() == {"bank-a": a, "bank-b": h.for_site("bank-b")}


def test_work_or_duration_before_telemetry_leaves_time_unknown() -> None:
    h = TelemetryHistory()
    h.record_duration("s", 3, 4.0)
    h.record_work("s", 3, {"examples": 8})
    assert h.for_site("s") == [Observation("s", 3, None, {}, {"examples": 8.0}, 4.0)]
    h.record_telemetry("s", 3, 50.0, {"num_devices": 2})
    assert h.for_site("s")[0].time == 50.0


def test_first_readings_of_a_round_stay_later_replies_only_add_keys() -> None:
    h = TelemetryHistory()
    h.record_telemetry("s", 1, 10.0, {"device_utilization_percent": 20.0})
    h.record_telemetry("s", 1, 99.0, {"device_utilization_percent": 95.0, "net_bytes": 1e6})
    (obs,) = h.for_site("s")
    assert obs.time == 10.0
    assert obs.readings == {"device_utilization_percent": 20.0, "net_bytes": 1e6}


def test_later_work_replaces_earlier_work() -> None:
    h = TelemetryHistory()
    h.record_work("s", 1, {"steps": 10, "examples": 100})
    h.record_work("s", 1, {"steps": 5})
    assert h.for_site("s")[0].work == {"steps": 5.0}


def test_keeps_the_newest_max_rounds_per_site() -> None:
    h = TelemetryHistory(max_rounds=3)
    for r in (4, 0, 2, 1, 3):
        h.record_duration("s", r, 1.0 + r)
    h.record_duration("t", 0, 1.0)
    assert [o.round for o in h.for_site("s")] == [2, 3, 4]  # 5 rounds, cap 3: 0 and 1 dropped
    assert [o.round for o in h.for_site("t")] == [0]  # the cap is per site
    h.record_duration("s", 1, 2.0)  # older than everything kept: dropped at once
    assert [o.round for o in h.for_site("s")] == [2, 3, 4]


def test_caller_dicts_are_copied_not_kept() -> None:
    readings = {"device_temperature_c": 60.0}
    work = {"steps": 3.0}
    h = TelemetryHistory()
    h.record_telemetry("s", 0, 0.0, readings)
    h.record_work("s", 0, work)
    readings["device_temperature_c"] = 99.0
    work["steps"] = 7.0
    assert h.for_site("s")[0].readings == {"device_temperature_c": 60.0}
    assert h.for_site("s")[0].work == {"steps": 3.0}
    assert readings == {"device_temperature_c": 99.0}  # and never changed by the history


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (lambda h: h.record_telemetry("", 1, 0.0, {}), "site_id must be a non-empty string"),
        (lambda h: h.record_telemetry("s", -1, 0.0, {}), "round must be an integer >= 0"),
        (lambda h: h.record_telemetry("s", True, 0.0, {}), "round must be an integer >= 0"),
        (
            lambda h: h.record_telemetry("s", 1, 0.0, {"device_power_w": float("nan")}),
            r"readings\['device_power_w'\]: expected a finite number, found nan",
        ),
        (
            lambda h: h.record_telemetry("s", 1, 0.0, {"x": "hot"}),
            r"expected a finite number, found 'hot'",
        ),
        (lambda h: h.record_telemetry("s", 1, float("inf"), {}), "time: expected a finite"),
        (lambda h: h.record_work("s", 1, {"steps": -1}), r"work\['steps'\]: expected >= 0"),
        (lambda h: h.record_duration("s", 1, 0.0), "expected a duration > 0 seconds, found 0.0"),
        (lambda h: h.record_duration("s", 1, float("nan")), "expected a finite number"),
    ],
)
def test_bad_records_are_refused(record: Callable[[TelemetryHistory], None], match: str) -> None:
    h = TelemetryHistory()
    with pytest.raises(ValueError, match=match):
        record(h)
    assert len(h) == 0


@pytest.mark.parametrize("max_rounds", [0, -3, 2.5, True])
def test_bad_max_rounds(max_rounds: Any) -> None:
    with pytest.raises(ValueError, match="max_rounds must be an integer >= 1"):
        TelemetryHistory(max_rounds=max_rounds)


def test_dict_round_trip_is_plain_json_and_identical() -> None:
    h = filled()
    data = h.to_dict()
    text = json.dumps(data, allow_nan=False)  # no NaN or objects: strict JSON
    back = TelemetryHistory.from_dict(json.loads(text))
    assert back.to_dict() == data
    assert back.histories() == h.histories()
    assert back.max_rounds == 500
    assert data["sites"]["bank-a"][1] == {
        "round": 2,
        "time": 200.0,
        "readings": {"cpu_util_percent": 5.0},
        "work": {},
        "duration_s": None,
    }


def test_from_dict_trims_to_its_max_rounds() -> None:
    data = filled().to_dict()
    data["max_rounds"] = 1
    assert [o.round for o in TelemetryHistory.from_dict(data).for_site("bank-a")] == [2]


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def _del(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return apply


A0 = ("sites", "bank-a", 0)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_set(("format",), "something"), "format: expected 'fedcore.telemetry_history'"),
        (_set(("version",), 2), "version: expected 1, found 2"),
        (_set(("max_rounds",), "many"), "max_rounds: expected an integer >= 1, found 'many'"),
        (_set(("sites",), []), "sites: expected an object"),
        (_set(("sites", "bank-a"), {}), r"sites\['bank-a'\]: expected a list of rounds"),
        (_set((*A0, "round"), -1), r"sites\['bank-a'\]\[0\]: .*round must be an integer >= 0"),
        (_set((*A0, "round"), 2), r"sites\['bank-a'\]\[1\].round: expected each round once"),
        (_set((*A0, "time"), "noon"), r"\[0\]: time: expected a finite number, found 'noon'"),
        (_set((*A0, "readings", "cpu_util_percent"), None), r"readings\['cpu_util_percent'\]"),
        (_set((*A0, "readings"), [1, 2]), "readings: expected a mapping"),
        (_set((*A0, "work"), {"steps": -2}), "work: expected amounts >= 0"),
        (_set((*A0, "duration_s"), -1.0), "duration: expected a duration > 0 seconds"),
        (_set((*A0, "extra"), 1), "expected exactly the keys round, time, readings"),
        (_del((*A0, "work")), "expected exactly the keys"),
        (_set(("sites", "bank-a", 0), 7), r"\[0\]: expected an object with keys"),
    ],
)
def test_from_dict_names_what_is_wrong(
    damage: Callable[[dict[str, Any]], None], match: str
) -> None:
    data = copy.deepcopy(filled().to_dict())
    damage(data)
    with pytest.raises(ValueError, match=match) as info:
        TelemetryHistory.from_dict(data)
    assert "delete it to start a fresh" in str(info.value)  # and says how to get going again


@pytest.mark.parametrize("garbage", [None, [], "history", 3])
def test_from_dict_refuses_a_non_object(garbage: Any) -> None:
    with pytest.raises(ValueError, match="the top level: expected a JSON object"):
        TelemetryHistory.from_dict(garbage)


def test_save_load_round_trip_private_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.json"
    h = filled()
    h.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert TelemetryHistory.load(path).to_dict() == h.to_dict()
    h.record_duration("bank-a", 2, 9.0)
    h.save(path)  # overwrite in place
    assert TelemetryHistory.load(path).for_site("bank-a")[1].duration_s == 9.0
    assert [p.name for p in path.parent.iterdir()] == ["history.json"]  # no temporary left


def test_load_names_the_file_on_garbage(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    with pytest.raises(ValueError, match=r"broken.json: expected a telemetry history in JSON"):
        TelemetryHistory.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match=r"wrong.json: telemetry history format: expected"):
        TelemetryHistory.load(wrong)


def test_repr() -> None:
    assert repr(filled()) == "TelemetryHistory(sites=2, observations=3, max_rounds=500)"
