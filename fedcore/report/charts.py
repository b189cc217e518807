"""Inline SVG charts (line, bar, grid) with axes, labels and legends: pure functions, no I/O.

Every string that reaches the markup goes through :func:`esc`, so a site id such as
``<b>x</b>`` is drawn as text. Non-finite values are gaps (a line breaks, a bar is absent),
never a mark at a made-up position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
"""Series colours, in order (colour-blind-friendly enough, and distinct in print)."""

MARGIN = (16, 16, 48, 64)
"""Plot margins in pixels: top, right, bottom, left (room for tick labels and axis titles)."""


def esc(text: object) -> str:
    """``text`` as HTML/SVG text or attribute value (``&``, ``<``, ``>``, quotes escaped)."""
    return escape(str(text), quote=True)


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def nice_step(span: float, count: int) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``count`` ticks over ``span``."""
    if span <= 0 or not math.isfinite(span) or count < 1:
        return 1.0
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 5.0, 10.0):
        if raw <= mult * power * (1 + 1e-9):
            return mult * power
    return 10.0 * power  # pragma: no cover (the loop always returns)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``: the first <= ``lo``, the last >= ``hi``.

    Example: ``nice_ticks(0.03, 0.91, 5)`` is ``[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]``.
    An empty span (``lo == hi``) widens to the value's neighbourhood so the axis has ticks.
    """
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, count)
    first = math.floor(lo / step + 1e-9) * step
    ticks: list[float] = []
    v = first
    while v < hi - 1e-9 * step:
        ticks.append(round(v, 12))
        v += step
    ticks.append(round(v, 12))
    return ticks


@dataclass(frozen=True)
class LinearScale:
    """Maps the data interval ``domain`` onto the pixel interval ``range`` linearly.

    ``LinearScale((0, 10), (50, 150))(2.5)`` is ``75.0``; ranges may run backwards (y axes).
    """

    domain: tuple[float, float]
    range: tuple[float, float]

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (*self.domain, *self.range)):
            raise ValueError(f"a scale needs finite bounds; found {self.domain} -> {self.range}")

    def __call__(self, value: float) -> float:
        """The pixel position of ``value`` (the domain's midpoint when the domain is empty)."""
        d0, d1 = self.domain
        r0, r1 = self.range
        if d1 == d0:
            return (r0 + r1) / 2.0
        return r0 + (value - d0) * (r1 - r0) / (d1 - d0)


def short(name: str, limit: int = 16) -> str:
    """``name`` cut to ``limit`` characters with an ellipsis (slanted axis labels)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def fmt_tick(value: float) -> str:
    """A tick label: short, without float noise (``0.30000000000000004`` -> ``0.3``)."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.6g}"


def fmt_bytes(n: float) -> str:
    """Bytes for a human: ``1536`` -> ``1.5 KB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GB"  # pragma: no cover


@dataclass(frozen=True)
class Series:
    """One line of a line chart.

    Attributes:
        name: Legend text (escaped when drawn).
        points: ``(x, y)`` pairs in order; a non-finite ``y`` breaks the line.
        step: Draw as a step function (PR curves: precision holds until the next recall).
        dashed: Draw dashed (reference lines).
        width: Stroke width in pixels.
        markers: Draw a dot at each point (short series such as rounds).
    """

    name: str
    points: Sequence[tuple[float, float]]
    step: bool = False
    dashed: bool = False
    width: float = 2.0
    markers: bool = False


@dataclass(frozen=True)
class Frame:
    """A chart's plot area and scales, computed from its size and data bounds."""

    width: int
    height: int
    x: LinearScale
    y: LinearScale
    x_ticks: list[float] = field(default_factory=list)
    y_ticks: list[float] = field(default_factory=list)
    margin: tuple[int, int, int, int] = MARGIN
    slanted: bool = False

    @classmethod
    def fit(
        cls,
        width: int,
        height: int,
        x_bounds: tuple[float, float],
        y_bounds: tuple[float, float],
        *,
        x_ticks: list[float] | None = None,
        margin: tuple[int, int, int, int] = MARGIN,
    ) -> Frame:
        """Scales over nice ticks covering the bounds, inside ``margin`` (top, right, bottom, left)."""
        top, right, bottom, left = margin
        xt = x_ticks if x_ticks is not None else nice_ticks(*x_bounds)
        yt = nice_ticks(*y_bounds)
        x = LinearScale((xt[0], xt[-1]), (left, width - right))
        y = LinearScale((yt[0], yt[-1]), (height - bottom, top))
        return cls(width, height, x, y, xt, yt, margin)


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _axes(frame: Frame, x_label: str, y_label: str, x_names: Sequence[str] = ()) -> list[str]:
    """Axis lines, grid lines, tick labels and axis titles (category names slanted if asked)."""
    top, right, bottom, left = frame.margin
    w, h = frame.width, frame.height
    out = ['<g class="axes" font-size="11" fill="#444">']
    for t in frame.y_ticks:
        py = _num(frame.y(t))
        out.append(
            f'<line class="grid" x1="{left}" x2="{w - right}" y1="{py}" y2="{py}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{py}" text-anchor="end" dy="0.32em">{esc(fmt_tick(t))}</text>'
        )
    if x_names:
        for t, name in zip(frame.x_ticks, x_names, strict=False):
            px = _num(frame.x(t))
            if frame.slanted:
                out.append(
                    f'<text transform="translate({px} {h - bottom + 12}) rotate(-40)" '
                    f'text-anchor="end">{esc(short(name))}<title>{esc(name)}</title></text>'
                )
            else:
                out.append(
                    f'<text x="{px}" y="{h - bottom + 16}" text-anchor="middle">{esc(name)}</text>'
                )
    else:
        for t in frame.x_ticks:
            px = _num(frame.x(t))
            out.append(
                f'<text x="{px}" y="{h - bottom + 16}" text-anchor="middle">{esc(fmt_tick(t))}</text>'
            )
    out.append(
        f'<line class="axis" x1="{left}" x2="{w - right}" y1="{h - bottom}" y2="{h - bottom}" '
        'stroke="#888"/>'
    )
    out.append(
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{h - bottom}" stroke="#888"/>'
    )
    out.append(
        f'<text class="x-label" x="{(left + w - right) / 2:.1f}" y="{h - 8}" text-anchor="middle">'
        f"{esc(x_label)}</text>"
    )
    out.append(
        f'<text class="y-label" transform="translate(14 {(top + h - bottom) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{esc(y_label)}</text>'
    )
    out.append("</g>")
    return out


def legend(names: Sequence[str], colors: Sequence[str], dashed: Sequence[bool] = ()) -> str:
    """An HTML legend (wraps with the page, unlike SVG text) of coloured swatches and names."""
    items = []
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        style = "dashed" if i < len(dashed) and dashed[i] else "solid"
        items.append(
            f'<li><span class="swatch" style="border-top:3px {style} {esc(color)}"></span>'
            f"{esc(name)}</li>"
        )
    return f'<ul class="legend">{"".join(items)}</ul>'


def line_path(points: Sequence[tuple[float, float]], frame: Frame, *, step: bool = False) -> str:
    """The ``d`` attribute of a polyline through ``points``; non-finite points break it.

    With ``step``, each point's ``y`` holds from the previous point's ``x`` to its own
    (the average-precision reading of a PR curve), so the area below the path is
    ``sum((x[k] - x[k-1]) * y[k])``.
    """
    parts: list[str] = []
    prev: tuple[float, float] | None = None
    for x, y in points:
        fx, fy = finite(x), finite(y)
        if fx is None or fy is None:
            prev = None
            continue
        px, py = frame.x(fx), frame.y(fy)
        if prev is None:
            parts.append(f"M{_num(px)},{_num(py)}")
        elif step:
            parts.append(f"L{_num(prev[0])},{_num(py)}L{_num(px)},{_num(py)}")
        else:
            parts.append(f"L{_num(px)},{_num(py)}")
        prev = (px, py)
    return "".join(parts)


def _bounds(values: Sequence[float], default: tuple[float, float]) -> tuple[float, float]:
    ok = [v for v in (finite(v) for v in values) if v is not None]
    return (min(ok), max(ok)) if ok else default


def line_chart(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_domain: tuple[float, float] | None = None,
    y_domain: tuple[float, float] | None = None,
    integer_x: bool = False,
    width: int = 640,
    height: int = 320,
) -> str:
    """An SVG line chart with axes and an HTML legend below it.

    Args:
        series: The lines, drawn in order with :data:`PALETTE` colours.
        x_label: X axis title.
        y_label: Y axis title.
        x_domain: X bounds to cover (default: the data's).
        y_domain: Y bounds to cover (default: the data's, widened to include 0 if close).
        integer_x: Ticks at whole numbers only (rounds).
        width: Pixels.
        height: Pixels.

    Returns:
        ``<svg ...>`` with one ``<path class="series">`` per series with points, then the legend.
    """
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    xb = x_domain or _bounds(xs, (0.0, 1.0))
    yb = y_domain or _bounds(ys, (0.0, 1.0))
    x_ticks = None
    if integer_x:
        lo, hi = math.floor(xb[0]), math.ceil(xb[1])
        step = max(1, math.ceil(nice_step(max(hi - lo, 1), 8)))
        x_ticks = [float(v) for v in range(lo, hi + 1, step)]
        if x_ticks[-1] < hi:
            x_ticks.append(x_ticks[-1] + step)
        if len(x_ticks) == 1:
            x_ticks = [x_ticks[0] - 1, x_ticks[0], x_ticks[0] + 1]
    frame = Frame.fit(width, height, xb, yb, x_ticks=x_ticks)
    body = _axes(frame, x_label, y_label)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for s, color in zip(series, colors, strict=True):
        d = line_path(s.points, frame, step=s.step)
        if not d:
            continue
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        body.append(
            f'<path class="series" data-series="{esc(s.name)}" d="{d}" fill="none" '
            f'stroke="{color}" stroke-width="{s.width:g}"{dash}><title>{esc(s.name)}</title></path>'
        )
        if s.markers:
            for x, y in s.points:
                fx, fy = finite(x), finite(y)
                if fx is not None and fy is not None:
                    body.append(
                        f'<circle class="point" cx="{_num(frame.x(fx))}" cy="{_num(frame.y(fy))}" '
                        f'r="3" fill="{color}"><title>{esc(s.name)}: {esc(fmt_tick(fy))}</title></circle>'
                    )
    svg = _svg(width, height, body)
    return svg + legend([s.name for s in series], colors, [s.dashed for s in series])


@dataclass(frozen=True)
class BarGroup:
    """One bar per category for one series (e.g. "federated" over the sites)."""

    name: str
    values: Sequence[float | None]


def bar_chart(
    categories: Sequence[str],
    groups: Sequence[BarGroup],
    *,
    y_label: str,
    x_label: str = "",
    value_format: str = "{:.3f}",
    width: int = 640,
    height: int = 300,
) -> str:
    """An SVG grouped bar chart: one cluster per category, one bar per group, from 0.

    Bars of missing or non-finite values are left out; negative values are drawn below 0.

    Returns:
        ``<svg ...>`` with one ``<rect class="bar">`` per drawn value, then the legend.
    """
    n = max(len(categories), 1)
    vals = [finite(v) for g in groups for v in g.values]
    ok = [v for v in vals if v is not None]
    yb = (min([0.0, *ok]), max([0.0, *ok])) if ok else (0.0, 1.0)
    if yb[0] == yb[1]:
        yb = (0.0, 1.0)
    top, right, bottom, left = MARGIN
    slot = (width - right - left) / n
    slanted = any(len(c) * 6.5 > slot for c in categories)
    if slanted:  # names too long for their slot: slanted below the axis, in a taller chart
        extra = int(max(len(short(c)) for c in categories) * 4.5)
        height, bottom = height + extra, bottom + extra
    margin = (top, right, bottom, left)
    fitted = Frame.fit(width, height, (0.0, float(n)), yb, margin=margin)
    x = LinearScale((0.0, float(n)), (left, width - right))
    ticks = [i + 0.5 for i in range(n)]
    frame = Frame(width, height, x, fitted.y, ticks, fitted.y_ticks, margin, slanted)
    body = _axes(frame, x_label, y_label, x_names=list(categories))
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(groups))]
    bar_w = slot * 0.8 / max(len(groups), 1)
    zero = frame.y(0.0)
    for gi, (g, color) in enumerate(zip(groups, colors, strict=True)):
        for ci, raw in enumerate(g.values[:n]):
            v = finite(raw)
            if v is None:
                continue
            bx = left + ci * slot + slot * 0.1 + gi * bar_w
            by = frame.y(v)
            y0, h = min(by, zero), abs(zero - by)
            label = f"{categories[ci]} · {g.name}: {value_format.format(v)}"
            body.append(
                f'<rect class="bar" data-series="{esc(g.name)}" data-category="{esc(categories[ci])}" '
                f'x="{_num(bx)}" y="{_num(y0)}" width="{_num(bar_w)}" height="{_num(max(h, 0.5))}" '
                f'fill="{color}"><title>{esc(label)}</title></rect>'
            )
    return _svg(width, height, body) + legend([g.name for g in groups], colors)


def _svg(width: int, height: int, body: Sequence[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img">' + "".join(body) + "</svg>"
    )


@dataclass(frozen=True)
class Cell:
    """One cell of a :func:`grid_chart`: its state (a key of the chart's ``states``) and text."""

    state: str
    text: str = ""
    title: str = ""


def grid_chart(
    rows: Sequence[str],
    columns: Sequence[str],
    cells: dict[tuple[int, int], Cell],
    states: dict[str, str],
    *,
    x_label: str,
    cell_w: int = 32,
    cell_h: int = 22,
) -> str:
    """An SVG grid of coloured cells (e.g. sites x rounds: chosen, left out), one row label each.

    Args:
        rows: Row labels, top to bottom.
        columns: Column labels, left to right.
        cells: ``(row index, column index)`` -> cell; absent cells stay blank.
        states: State -> colour; also the legend, in this order.
        x_label: Title under the columns.
        cell_w: Cell width in pixels.
        cell_h: Cell height in pixels.
    """
    label_w = min(160, 12 + 7 * max((len(r) for r in rows), default=4))
    width = max(label_w + cell_w * max(len(columns), 1) + 16, label_w + 7 * len(x_label))
    height = 24 + cell_h * max(len(rows), 1) + 36
    body = ['<g class="axes" font-size="11" fill="#444">']
    for ci, col in enumerate(columns):
        x = label_w + ci * cell_w + cell_w / 2
        body.append(f'<text x="{_num(x)}" y="16" text-anchor="middle">{esc(col)}</text>')
    for ri, row in enumerate(rows):
        y = 24 + ri * cell_h + cell_h / 2
        body.append(
            f'<text x="{label_w - 6}" y="{_num(y)}" text-anchor="end" dy="0.32em">{esc(row)}</text>'
        )
    body.append(
        f'<text class="x-label" x="{label_w}" y="{height - 8}" text-anchor="start">'
        f"{esc(x_label)}</text></g>"
    )
    for (ri, ci), cell in sorted(cells.items()):
        color = states.get(cell.state, "#cccccc")
        x, y = label_w + ci * cell_w, 24 + ri * cell_h
        tip = cell.title or f"{rows[ri]} · {columns[ci]}: {cell.state}"
        body.append(
            f'<rect class="cell" data-state="{esc(cell.state)}" x="{x + 1}" y="{y + 1}" '
            f'width="{cell_w - 2}" height="{cell_h - 2}" fill="{esc(color)}"><title>{esc(tip)}</title></rect>'
        )
        if cell.text:
            body.append(
                f'<text x="{_num(x + cell_w / 2)}" y="{_num(y + cell_h / 2)}" dy="0.32em" '
                f'text-anchor="middle" font-size="10" fill="#fff">{esc(cell.text)}</text>'
            )
    return _svg(width, height, body) + legend(list(states), list(states.values()))
