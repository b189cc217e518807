"""Round-duration forecasters: the arithmetic of last value and EWMA, MAPE, and the LSTM on a
synthetic trend (it must beat EWMA on held-out sites), its fallback and its files."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from scheduling.history import Observation
from scheduling.predictor import (
    CONTEXT_FEATURES,
    DurationPrior,
    EwmaForecaster,
    LastValueForecaster,
    LstmForecaster,
    context_features,
    evaluate,
    ewma,
    mape,
    work_size,
)

History = dict[str, list[Observation]]


def synthetic(seed: int, sites: int, rounds: int, period: int = 24) -> History:
    """Seconds per example = base * exp(trend * r + amplitude * sin(2 pi r / period + phase)
    + noise), hourly rounds, so a daily cycle over a slow trend; the site's background load
    follows the same cycle (what slows it down), and each round gets 500-2000 examples.

    base in [4, 40] ms, amplitude in [0.2, 0.4], trend in [-0.001, 0.003] per round (log
    space), noise sd 0.03, background load 50 + 40 sin(...) + N(0, 8) percent.
    """
    rng = np.random.default_rng(seed)
    out: History = {}
    for s in range(sites):
        base = rng.uniform(0.004, 0.04)
        amplitude = rng.uniform(0.2, 0.4)
        phase = rng.uniform(0, 2 * math.pi)
        trend = rng.uniform(-0.001, 0.003)
        site = f"site-{seed}-{s}"
        obs = []
        for r in range(rounds):
            wave = math.sin(2 * math.pi * r / period + phase)
            load = float(np.clip(50 + 40 * wave + rng.normal(0, 8), 0, 100))
            examples = float(rng.integers(500, 2001))
            seconds = base * math.exp(trend * r + amplitude * wave + rng.normal(0, 0.03))
            readings = {
                "background_load_percent": load,
                "relative_throughput": 0.01 / base,
                "device_utilization_percent": 60.0,
            }
            work = {"steps": examples / 32, "examples": examples}
            obs.append(Observation(site, r, 3600.0 * r, readings, work, seconds * examples))
        out[site] = obs
    return out


def measured(durations: list[float | None], examples: float = 100.0) -> list[Observation]:
    return [
        Observation("s", r, float(r), {}, {"examples": examples}, d)
        for r, d in enumerate(durations)
    ]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lstm() -> LstmForecaster:
    """Trained once on 8 sites x 100 rounds (about a second on one core)."""
    model = LstmForecaster(epochs=20, seed=0)
    with one_thread():
        model.fit(synthetic(seed=1, sites=8, rounds=100))
    assert model.is_fitted
    return model


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("work", "size"),
    [
        ({"steps": 50, "examples": 3200}, 3200.0),  # examples first
        ({"steps": 50}, 50.0),  # else steps
        ({"steps": 50, "examples": 0}, 50.0),  # 0 examples: not a size
        ({}, 1.0),  # else the whole round is one unit
    ],
)
def test_work_size(work: Mapping[str, float], size: float) -> None:
    assert work_size(work) == size


@pytest.mark.parametrize(
    ("values", "alpha", "expected"),
    [
        ([10.0], 0.3, 10.0),  # s1 = x1
        ([10.0, 20.0], 0.3, 13.0),  # 0.3*20 + 0.7*10 = 13
        ([10.0, 20.0, 40.0], 0.3, 21.1),  # 0.3*40 + 0.7*13 = 12 + 9.1
        ([10.0, 20.0, 40.0], 0.5, 27.5),  # s2 = 15, s3 = 0.5*40 + 0.5*15 = 27.5
        ([10.0, 20.0, 40.0], 1.0, 40.0),  # alpha 1: the last value
    ],
)
def test_ewma_hand_table(values: list[float], alpha: float, expected: float) -> None:
    assert ewma(values, alpha) == pytest.approx(expected)


def test_ewma_refuses_nothing_and_bad_alpha() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        ewma([], 0.3)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got 0"):
        ewma([1.0], 0)


@pytest.mark.parametrize(
    ("actual", "predicted", "expected"),
    [
        ([100.0, 200.0], [110.0, 150.0], 17.5),  # (10/100 + 50/200) / 2 = (10% + 25%) / 2
        ([100.0, 0.0], [110.0, 5.0], 10.0),  # actual 0 left out: only 10/100
        ([-50.0], [-40.0], 20.0),  # |a - p| / |a| = 10/50
        ([3.0, 4.0], [3.0, 4.0], 0.0),  # perfect
        ([1.0], [3.0], 200.0),  # over-prediction is not capped
    ],
)
def test_mape_table(actual: list[float], predicted: list[float], expected: float) -> None:
    assert mape(actual, predicted) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("actual", "predicted", "match"),
    [
        ([0.0, 0.0], [1.0, 2.0], r"at least one actual value != 0; found none among 2"),
        ([], [], "found none among 0"),
        ([1.0, 2.0], [1.0], "found 1 predictions for 2 actual values"),
        ([1.0], [float("nan")], "finite values"),
    ],
)
def test_mape_refuses(actual: list[float], predicted: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mape(actual, predicted)


def test_context_features_names_values_and_fallbacks() -> None:
    gpu = {
        "device_utilization_percent": 80.0,
        "cpu_util_percent": 10.0,
        "background_load_percent": 25.0,
        "device_temperature_c": 70.0,
        "device_power_w": 150.0,
        "device_power_limit_w": 300.0,
        "device_memory_used_mib": 20.0,
        "device_memory_total_mib": 80.0,
        "relative_throughput": math.e,
        "num_devices": 1.0,
        "net_bytes": math.e - 1,
    }
    got = dict(
        zip(
            CONTEXT_FEATURES, context_features(gpu, {"steps": 1.0, "examples": math.e}), strict=True
        )
    )
    assert got == pytest.approx(
        {
            "utilization": 0.8,  # 80 / 100 (the device, not the CPU)
            "background_load": 0.25,
            "temperature_c": 70.0,
            "power_fraction": 0.5,  # 150 / 300
            "memory_fraction": 0.25,  # 20 / 80
            "log_relative_throughput": 1.0,  # log e
            "log_num_devices": 0.0,  # log 1
            "log_net_bytes": 1.0,  # log(1 + e - 1)
            "log_examples": 1.0,
            "log_steps": 0.0,
        }
    )
    cpu = {"cpu_util_percent": 30.0, "mem_used_mib": 1.0, "mem_total_mib": 4.0}
    got = dict(zip(CONTEXT_FEATURES, context_features(cpu, {}), strict=True))
    assert got["utilization"] == pytest.approx(0.3)  # no device: the CPU's
    assert got["memory_fraction"] == pytest.approx(0.25)  # no device: host memory 1 / 4
    unknown = [k for k, v in got.items() if math.isnan(v)]
    assert unknown == [k for k in CONTEXT_FEATURES if k not in ("utilization", "memory_fraction")]


# --- last value and EWMA --------------------------------------------------------------------


def test_last_value_scales_by_work_and_skips_unmeasured_rounds() -> None:
    history = [
        Observation("s", 1, 0.0, {}, {"examples": 100.0}, 10.0),
        Observation("s", 2, 1.0, {}, {"examples": 200.0}, 30.0),  # 0.15 s per example
        Observation("s", 3, 2.0, {}, {"examples": 400.0}, None),  # pending: skipped
    ]
    f = LastValueForecaster()
    assert f.predict(history, {"examples": 250.0}, {}) == pytest.approx(37.5)  # 30 * 250 / 200
    assert f.last_source == "last-value"
    assert f.predict(history, {"steps": 5.0}, {}) == pytest.approx(0.75)  # 0.15 * 5 units
    by_steps = [Observation("s", 1, 0.0, {}, {"steps": 10.0}, 20.0)]
    assert f.predict(by_steps, {"steps": 15.0}, {}) == pytest.approx(30.0)  # 20 * 15 / 10


def test_ewma_forecaster_hand_table() -> None:
    # durations 10, 30, (pending), 20 s for 100 examples each: 0.1, 0.3, 0.2 s per example
    history = measured([10.0, 30.0, None, 20.0])
    # alpha 0.3: s = 0.1, then 0.3*0.3 + 0.7*0.1 = 0.16, then 0.3*0.2 + 0.7*0.16 = 0.172
    f = EwmaForecaster(alpha=0.3)
    assert f.predict(history, {"examples": 200.0}, {}) == pytest.approx(34.4)  # 0.172 * 200
    assert f.last_source == "ewma"
    # alpha 0.5: 0.1, 0.2, 0.2 -> 0.2 * 50 examples = 10 s
    assert EwmaForecaster(alpha=0.5).predict(history, {"examples": 50.0}, {}) == pytest.approx(10)


def test_prior_for_a_site_without_history() -> None:
    fleet = {
        # 0.1 s per example at throughput 0.5 -> 0.05 A100 seconds per example
        "slow": [Observation("slow", 1, 0.0, {"relative_throughput": 0.5}, {"examples": 10}, 1.0)],
        # 0.02 s per example at throughput 2 -> 0.04 A100 seconds per example
        "fast": [Observation("fast", 1, 0.0, {"relative_throughput": 2.0}, {"examples": 10}, 0.2)],
        # 0.3 s per example, throughput unknown
        "other": [Observation("other", 1, 0.0, {}, {"examples": 10.0}, 3.0)],
    }
    for f in (EwmaForecaster(), LastValueForecaster()):
        f.fit(fleet)
        # A100 median (0.04 + 0.05) / 2 = 0.045; at throughput 0.25: 0.18 s x 10 examples
        assert f.predict([], {"examples": 10.0}, {"relative_throughput": 0.25}) == pytest.approx(
            1.8
        )
        assert f.last_source == "prior"
        # no throughput: median of 0.1, 0.02, 0.3 = 0.1 s per example x 10
        assert f.predict([], {"examples": 10.0}, {}) == pytest.approx(1.0)


def test_prior_default_then_error() -> None:
    assert EwmaForecaster(prior_example_seconds=0.5).predict([], {"examples": 4.0}, {}) == 2.0
    fitted_on_nothing = DurationPrior(default=0.5).refit({"s": measured([None])})
    assert fitted_on_nothing == DurationPrior(None, None, 0.5)
    with pytest.raises(ValueError, match="pass prior_example_seconds"):
        EwmaForecaster().predict([], {"examples": 4.0}, {})
    with pytest.raises(ValueError, match="prior_example_seconds must be a finite number > 0"):
        EwmaForecaster(prior_example_seconds=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got 1.5"):
        EwmaForecaster(alpha=1.5)


def test_evaluate_counts_and_scores_one_step_ahead() -> None:
    histories = {
        # last value predicts 10 then 20: errors |20-10|/20 = 50%, |20-20|/20 = 0%
        "a": measured([10.0, 20.0, None, 20.0]),
        # only one measured round: nothing scored after a warmup of 1
        "b": measured([5.0]),
    }
    result = evaluate(LastValueForecaster(), histories)
    assert result == {
        "forecaster": "last-value",
        "mape": pytest.approx(25.0),
        "count": 2,
        "per_site": {"a": pytest.approx(25.0)},
        "sources": {"last-value": 2},
    }
    assert evaluate(LastValueForecaster(), histories, warmup=2)["count"] == 1
    with pytest.raises(ValueError, match="no site has more than 5 measured rounds"):
        evaluate(LastValueForecaster(), histories, warmup=5)


# --- the LSTM -------------------------------------------------------------------------------


def test_lstm_fits_a_synthetic_trend_better_than_ewma_and_last_value(
    lstm: LstmForecaster,
) -> None:
    held_out = synthetic(seed=2, sites=6, rounds=100)  # other sites, another seed
    with one_thread():
        scores = {
            f.name: evaluate(f, held_out, warmup=lstm.window)
            for f in (lstm, EwmaForecaster(), LastValueForecaster())
        }
    assert scores["lstm"]["sources"] == {"lstm": 6 * (100 - lstm.window)}  # no fallback
    # the forecasting targets: MAPE <= 10 %, and >= 20 % lower than EWMA's
    assert scores["lstm"]["mape"] <= 10.0
    assert scores["lstm"]["mape"] <= 0.8 * scores["ewma"]["mape"]
    assert scores["lstm"]["mape"] < scores["last-value"]["mape"]
    assert scores["lstm"]["mape"] < 6.0  # measured ~3.6 (noise alone is ~2.4); EWMA ~12.6


def test_lstm_falls_back_to_ewma_while_history_is_short(lstm: LstmForecaster) -> None:
    site = synthetic(seed=3, sites=1, rounds=12)["site-3-0"]
    work, readings = site[-1].work, site[-1].readings
    ewma_model = EwmaForecaster()
    for n in range(1, lstm.window):  # 1 .. K-1 measured rounds: EWMA's answer
        assert lstm.predict(site[:n], work, readings) == ewma_model.predict(site[:n], work, {})
        assert lstm.last_source == "ewma"
    pending = [*site[: lstm.window - 1], Observation("x", 99, None, {}, {"examples": 5.0})]
    lstm.predict(pending, work, readings)
    assert lstm.last_source == "ewma"  # a pending round is not a measured one
    seconds = lstm.predict(site[: lstm.window], work, readings)  # K measured: the LSTM's
    assert lstm.last_source == "lstm"
    assert seconds != ewma_model.predict(site[: lstm.window], work, {})
    assert 0.5 < seconds / site[lstm.window].duration_s < 2.0  # type: ignore[operator]
    lstm.predict([], work, readings)
    assert lstm.last_source == "prior"  # fitted on the fleet: A100 time / throughput


def test_unfitted_lstm_answers_with_ewma_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    model = LstmForecaster(window=4)
    history = measured([10.0, 20.0, 40.0, 40.0, 40.0])
    assert model.predict(history, {"examples": 100.0}, {}) == pytest.approx(
        EwmaForecaster().predict(history, {"examples": 100.0}, {})
    )
    assert model.last_source == "ewma"
    with caplog.at_level("INFO", logger="scheduling.predictor"):
        model.fit({"s": history[:4]})  # 4 measured rounds: no window of 4 + 1
    assert not model.is_fitted
    assert "no site has more than 4 measured rounds" in caplog.text
    with pytest.raises(ValueError, match="nothing to save: the LSTM is not fitted"):
        model.save(Path("never-written.pt"))


def test_lstm_copes_with_missing_readings(lstm: LstmForecaster) -> None:
    site = synthetic(seed=4, sites=1, rounds=lstm.window)["site-4-0"]
    bare = [Observation(o.site_id, o.round, None, {}, o.work, o.duration_s) for o in site]
    seconds = lstm.predict(bare, {"examples": 1000.0}, {})
    assert lstm.last_source == "lstm"
    assert math.isfinite(seconds) and seconds > 0


def test_lstm_training_is_seeded_and_leaves_the_global_rng_alone() -> None:
    data = synthetic(seed=5, sites=3, rounds=30)
    probe = data["site-5-0"][:20]
    state = torch.get_rng_state()
    predictions = []
    for seed in (7, 7, 8):
        model = LstmForecaster(window=4, hidden=8, epochs=3, seed=seed)
        with one_thread():
            model.fit(data)
        predictions.append(model.predict(probe, {"examples": 1000.0}, probe[-1].readings))
    assert predictions[0] == predictions[1]  # same seed, same weights, same answer
    assert predictions[0] != predictions[2]
    assert torch.equal(torch.get_rng_state(), state)


def test_save_load_round_trip_gives_identical_predictions(
    lstm: LstmForecaster, tmp_path: Path
) -> None:
    path = tmp_path / "models" / "lstm.pt"
    lstm.save(path)
    back = LstmForecaster.load(path)
    assert repr(back) == repr(lstm)
    assert back.fallback.prior == lstm.fallback.prior
    for site in synthetic(seed=6, sites=2, rounds=20).values():
        for n in (3, 10, 19):  # fallback and LSTM alike
            args = (site[:n], site[n].work, site[n].readings)
            assert back.predict(*args) == lstm.predict(*args)
            assert back.last_source == lstm.last_source


def test_load_refuses_another_feature_list_and_garbage(
    lstm: LstmForecaster, tmp_path: Path
) -> None:
    path = tmp_path / "lstm.pt"
    lstm.save(path)
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = payload["metadata"].replace('"log_steps"', '"log_epochs"')
    buf = io.BytesIO()
    torch.save(payload, buf)
    other = tmp_path / "other.pt"
    other.write_bytes(buf.getvalue())
    with pytest.raises(
        ValueError, match=r"other.pt: the model was trained on features .*log_epochs"
    ):
        LstmForecaster.load(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.pt: expected an LSTM forecaster"):
        LstmForecaster.load(garbage)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match="found another torch file"):
        LstmForecaster.load(weights)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window must be >= 1, got 0"),
        ({"hidden": 0}, "hidden must be >= 1"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
    ],
)
def test_lstm_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LstmForecaster(**kwargs)  # type: ignore[arg-type]
