"""FedAvg arithmetic, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.aggregation import weighted_average, weighted_mean


def test_weighted_average_by_hand() -> None:
    a = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.0], np.float32)}
    b = {"w": np.array([4.0, 8.0], np.float32), "b": np.array([3.0], np.float32)}
    out = weighted_average([(a, 1), (b, 2)])
    # w = (1*[1,2] + 2*[4,8]) / 3 = [3, 6];  b = (0 + 2*3) / 3 = 2
    np.testing.assert_allclose(out["w"], [3.0, 6.0])
    np.testing.assert_allclose(out["b"], [2.0])
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(a["w"], [1.0, 2.0])  # inputs untouched
    assert out["w"] is not a["w"]


def test_integer_arrays_are_rounded() -> None:
    out = weighted_average(
        [({"n": np.array([1], np.int64)}, 1), ({"n": np.array([2], np.int64)}, 1)]
    )
    assert out["n"].dtype == np.int64 and out["n"][0] == 2  # 1.5 rounds to even 2


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ([], "at least one update"),
        ([({"w": np.zeros(2)}, 0)], "has weight 0"),
        ([({"w": np.zeros(2)}, 1), ({"v": np.zeros(2)}, 1)], "expected"),
        ([({"w": np.zeros(2)}, 1), ({"w": np.zeros(3)}, 1)], r"shape \(3,\); expected \(2,\)"),
    ],
)
def test_bad_updates(updates: list, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        weighted_average(updates)


@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.integers(1, 10_000)), min_size=1, max_size=8))
def test_mean_of_identical_models_is_the_model(pairs: list[tuple[float, int]]) -> None:
    v = pairs[0][0]
    out = weighted_average([({"w": np.full(3, v)}, n) for _, n in pairs])
    np.testing.assert_allclose(out["w"], v, rtol=1e-12, atol=1e-9)
    assert (
        min(x for x, _ in pairs) - 1e-9 <= weighted_mean(pairs) <= max(x for x, _ in pairs) + 1e-9
    )


def test_weighted_mean_empty_is_nan() -> None:
    assert np.isnan(weighted_mean([]))


def test_arrays_are_averaged_by_name_whatever_their_order() -> None:
    a = {"w": np.full(2, 1.0, np.float32), "b": np.full(3, 10.0, np.float32)}
    b = {"b": np.full(3, 30.0, np.float32), "w": np.full(2, 3.0, np.float32)}  # other order
    # weights 1 and 3: w = (1*1 + 3*3) / 4 = 2.5, b = (1*10 + 3*30) / 4 = 25
    out = weighted_average([(a, 1.0), (b, 3.0)])
    np.testing.assert_allclose(out["w"], 2.5)
    np.testing.assert_allclose(out["b"], 25.0)
    assert list(out) == ["w", "b"]  # the first update's order
    assert list(weighted_average([(b, 1.0), (a, 1.0)], order=["w", "b"])) == ["w", "b"]
    with pytest.raises(ValueError, match="order lists"):
        weighted_average([(a, 1.0)], order=["w"])
