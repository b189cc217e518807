"""The SVG chart maths: ticks, scales, paths (gaps, steps), bars, grids and escaping."""

from __future__ import annotations

import math
import re

import pytest

from fedcore.report import charts as C


@pytest.mark.parametrize(
    ("lo", "hi", "count", "ticks"),
    [
        # span 0.88 / 5 = 0.176 -> step 0.2; 0.03 floors to 0.0, 0.91 ceils to 1.0
        (0.03, 0.91, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        # span 100 / 5 = 20 -> step 20
        (0.0, 100.0, 5, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]),
        # span 7 / 5 = 1.4 -> step 2; 1 floors to 0, 8 is a tick
        (1.0, 8.0, 5, [0.0, 2.0, 4.0, 6.0, 8.0]),
        # span 0.03 / 4 = 0.0075 -> step 0.01
        (0.11, 0.14, 4, [0.11, 0.12, 0.13, 0.14]),
        # an empty span widens by 10 % of the value: [4.5, 5.5], span 1 / 5 = 0.2
        (5.0, 5.0, 5, [4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]),
        # reversed bounds are swapped
        (1.0, 0.0, 2, [0.0, 0.5, 1.0]),
    ],
)
def test_nice_ticks_cover_the_bounds_with_round_steps(
    lo: float, hi: float, count: int, ticks: list[float]
) -> None:
    got = C.nice_ticks(lo, hi, count)
    assert got == pytest.approx(ticks)
    assert got[0] <= min(lo, hi) and got[-1] >= max(lo, hi)


def test_nice_step_is_one_two_or_five_times_a_power_of_ten() -> None:
    assert C.nice_step(0.88, 5) == pytest.approx(0.2)  # raw 0.176
    assert C.nice_step(30.0, 3) == pytest.approx(10.0)  # raw 10
    assert C.nice_step(31.0, 3) == pytest.approx(20.0)  # raw 10.33
    assert C.nice_step(4.0, 1) == pytest.approx(5.0)  # raw 4
    assert C.nice_step(0.0, 5) == 1.0  # no span: a harmless default


def test_linear_scale_maps_domain_to_range_both_ways() -> None:
    x = C.LinearScale((0.0, 10.0), (50.0, 150.0))
    assert x(0.0) == 50.0 and x(10.0) == 150.0 and x(2.5) == 75.0
    y = C.LinearScale((0.0, 1.0), (300.0, 20.0))  # y grows upwards on screen
    assert y(0.0) == 300.0 and y(1.0) == 20.0 and y(0.25) == 230.0
    assert C.LinearScale((3.0, 3.0), (0.0, 100.0))(3.0) == 50.0  # empty domain: middle
    with pytest.raises(ValueError, match="finite bounds"):
        C.LinearScale((0.0, math.nan), (0.0, 1.0))


def _frame() -> C.Frame:
    # plot area: x 64..624 over [0, 1] and y 272..16 over [0, 1] (MARGIN 16, 16, 48, 64)
    return C.Frame.fit(640, 320, (0.0, 1.0), (0.0, 1.0))


def test_line_path_breaks_at_non_finite_points() -> None:
    d = C.line_path([(0.0, 0.0), (0.5, math.nan), (0.5, 0.5), (1.0, 1.0)], _frame())
    # (0, 0) -> (64, 272); the NaN breaks the line; (0.5, 0.5) -> (344, 144); (1, 1) -> (624, 16)
    assert d == "M64,272M344,144L624,16"


def test_step_path_holds_each_precision_from_the_previous_recall() -> None:
    points = [(0.0, 1.0), (0.5, 1.0), (1.0, 0.5)]
    d = C.line_path(points, _frame(), step=True)
    # (0,1)=(64,16); to x 0.5 at y 1: (344,16); to y 0.5 (144) at x 0.5, then across to x 1 (624)
    assert d == "M64,16L64,16L344,16L344,144L624,144"


def test_line_chart_draws_one_path_per_series_and_escapes_names() -> None:
    svg = C.line_chart(
        [C.Series("<b>a</b>", [(1, 0.1), (2, 0.2)], markers=True), C.Series("empty", [])],
        x_label="round",
        y_label="PR-AUC",
        integer_x=True,
    )
    assert svg.count('<path class="series"') == 1  # the empty series draws nothing
    assert svg.count('<circle class="point"') == 2
    assert "<b>" not in svg and "&lt;b&gt;a&lt;/b&gt;" in svg
    ticks = re.findall(r'text-anchor="middle">(\d+)</text>', svg)
    assert ticks == ["1", "2"]  # whole rounds only


def test_bar_chart_draws_finite_values_only_from_zero() -> None:
    svg = C.bar_chart(
        ["s1", "s2", "<x>"],
        [C.BarGroup("alone", [0.5, None, 0.25]), C.BarGroup("fed", [1.0, math.nan, 0.0])],
        y_label="PR-AUC",
    )
    rects = re.findall(r'<rect class="bar"[^>]*>', svg)
    assert len(rects) == 4  # None and NaN are left out
    heights = [float(re.search(r'height="([\d.]+)"', r).group(1)) for r in rects]  # type: ignore[union-attr]
    # height 300 less margins 16 + 48: y over [0, 1] spans 236 px;
    # 0.5 -> 118, 0.25 -> 59, 1.0 -> 236, 0.0 -> a 0.5 px sliver
    assert heights == [118.0, 59.0, 236.0, 0.5]
    assert 'data-category="&lt;x&gt;"' in svg and "<x>" not in svg


def test_grid_chart_colours_cells_by_state_with_escaped_tooltips() -> None:
    cells = {
        (0, 0): C.Cell("trained", "4", "a: 4 epochs"),
        (1, 0): C.Cell("left out", "", 'b: "late" <slow>'),
    }
    svg = C.grid_chart(
        ["a", "b"], ["1"], cells, {"trained": "#0f0", "left out": "#f00"}, x_label="round"
    )
    assert re.findall(r'data-state="([^"]+)"', svg) == ["trained", "left out"]
    assert "&lt;slow&gt;" in svg and "&quot;late&quot;" in svg


def test_formatting_helpers() -> None:
    assert C.fmt_tick(0.30000000000000004) == "0.3"
    assert C.fmt_tick(0.0) == "0"
    assert C.fmt_bytes(1536) == "1.5 KB"
    assert C.fmt_bytes(12) == "12 B"
    assert C.finite(True) is None and C.finite(math.inf) is None and C.finite(2) == 2.0


def test_many_long_category_names_are_slanted_and_shortened() -> None:
    names = [f"regional-savings-bank-{k:02d}" for k in range(12)]  # 24 characters each
    svg = C.bar_chart(names, [C.BarGroup("fed", [0.5] * 12)], y_label="PR-AUC")
    assert svg.count("rotate(-40)") == 12
    # cut to 16 characters with an ellipsis; the full name stays in the label's tooltip
    assert "regional-saving…<title>regional-savings-bank-00</title>" in svg
    height = int(re.search(r'height="(\d+)" role="img"', svg).group(1))  # type: ignore[union-attr]
    assert height == 300 + int(16 * 4.5)  # taller by the slanted labels' room
    short = C.bar_chart(["a", "b"], [C.BarGroup("fed", [0.5, 0.6])], y_label="PR-AUC")
    assert "rotate(-40)" not in short
