"""Running sums of the window's busiest entities, so scoring next to a hub never reads all of its rows.

A business account that receives tens of thousands of payments, or a large merchant,
is a neighbour of many new transactions. A GNN layer reads such an entity through two
things only: its own statistics (degree, distinct counterparties, time span, busiest
hour, mean amount) and the mean of its transactions' features. For every entity with
at least ``threshold`` rows (a *hub*) both are kept current as rows come, go and
change (a row's context counts move when a neighbour within an hour or a day arrives),
in float64: scoring then reads two vectors instead of every row of the hub. The
statistics use the graph builder's formulas (:func:`fedcore.data.graph.entity_stat_columns`);
the mean differs from summing the rows afresh only in the last bits of float32.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedcore.data.graph import (
    _CONTEXT_NORM,
    _ENTITY_NORM,
    _HOUR,
    CONTEXT_FEATURES,
    ENTITY_FEATURES,
    _normalize,
    entity_stat_columns,
)

if TYPE_CHECKING:
    from fedcore.serving.window import Window

KINDS = ("account", "merchant", "device")

_CENTER = np.array([_CONTEXT_NORM[f][0] for f in CONTEXT_FEATURES])
_SCALE = np.array([_CONTEXT_NORM[f][1] for f in CONTEXT_FEATURES])


def context_x(counts: np.ndarray) -> np.ndarray:
    """The context block of transaction nodes' features (as ``float32`` values, in float64), from counts."""
    return np.asarray(
        ((np.log1p(counts.astype(np.float64)) - _CENTER) / _SCALE)
        .astype(np.float32)
        .astype(np.float64)
    )


class _Hub:
    """The running state of one hub."""

    __slots__ = ("burst", "burst_at", "counterparty", "k", "linked", "out", "slot", "sum_amt")

    def __init__(self, slot: int) -> None:
        self.slot = slot  # row of the kind's feature sums
        self.k = 0
        self.out = 0
        self.sum_amt = 0.0
        self.counterparty: Counter[int] = Counter()
        self.linked: Counter[int] = Counter()
        self.burst = float("nan")  # nan: recompute when asked
        self.burst_at = 0.0  # where an hour with that many rows starts


class Hubs:
    """The hubs of a window (see the module docstring).

    Args:
        win: The window (the hubs read its arrays and per-entity row lists).
        threshold: Rows at which an entity becomes a hub.
    """

    def __init__(self, win: Window, threshold: int) -> None:
        self.win = win
        self.threshold = threshold
        self.of: dict[str, dict[int, _Hub]] = {k: {} for k in KINDS}
        width = win.rowx.shape[1] + len(CONTEXT_FEATURES)
        self.sums = {k: np.zeros((16, width)) for k in KINDS}  # per slot: sum of features
        self.slot_of = {k: np.full(1024, -1, dtype=np.int64) for k in KINDS}  # code -> slot

    def _new(self, kind: str, code: int) -> _Hub:
        """An empty hub for ``code``, with a row of feature sums."""
        slot = len(self.of[kind])
        sums = self.sums[kind]
        if slot >= len(sums):
            grown = np.zeros((2 * len(sums), sums.shape[1]))
            grown[: len(sums)] = sums
            self.sums[kind] = sums = grown
        sums[slot] = 0.0
        table = self.slot_of[kind]
        if code >= len(table) - 1:  # the last entry stays -1: what code -1 reads
            grown_t = np.full(max(2 * len(table), code + 2), -1, dtype=np.int64)
            grown_t[: len(table)] = table
            self.slot_of[kind] = table = grown_t
        table[code] = slot
        hub = self.of[kind][code] = _Hub(slot)
        return hub

    # -- what a row means to its entities ----------------------------------------------

    def _links(self, row: int) -> list[tuple[str, int, bool, int, int]]:
        """``(kind, code, sends, counterparty, linked)`` of each entity incidence of ``row``."""
        w = self.win
        payer, payee = int(w.payer[row]), int(w.payee[row])
        merchant, device = int(w.merchant[row]), int(w.device[row])
        links = [
            ("account", payer, True, payee, device),
            ("account", payee, False, payer, -1),
        ]
        if merchant >= 0:
            links.append(("merchant", merchant, False, payer, device))
        if device >= 0:
            links.append(("device", device, True, payer, payee))
        return links

    def _x(self, row: int) -> np.ndarray:
        w = self.win
        return np.concatenate([w.rowx[row].astype(np.float64), context_x(w.ctx[row])])

    def rows(self, kind: str, code: int) -> tuple[list[int], ...]:
        """The entity's row lists (an account has two: sending, receiving)."""
        w = self.win
        if kind == "account":
            return (w.out_rows[code], w.in_rows[code])
        return ((w.merchant_rows if kind == "merchant" else w.device_rows)[code],)

    def _degree(self, kind: str, code: int) -> int:
        return sum(len(lst) for lst in self.rows(kind, code))

    # -- keeping them current ----------------------------------------------------------

    def build(self) -> None:
        """Make a hub of every entity with at least ``threshold`` rows (after a bulk load), in bulk."""
        w = self.win
        rows = np.flatnonzero(w.alive[: w.size])
        if rows.size == 0:
            return
        x = np.concatenate([w.rowx[rows].astype(np.float64), context_x(w.ctx[rows])], axis=1)
        log_amount = np.log1p(np.maximum(w.amount[rows], 0.0))
        at = np.arange(rows.size)
        none = np.full(rows.size, -1, dtype=np.int64)
        has_m, has_d = w.merchant[rows] >= 0, w.device[rows] >= 0
        incidences = {  # (position in rows, code, sends, counterparty, linked) per kind
            "account": (
                np.concatenate([at, at]),
                np.concatenate([w.payer[rows], w.payee[rows]]),
                np.concatenate([np.ones(rows.size, bool), np.zeros(rows.size, bool)]),
                np.concatenate([w.payee[rows], w.payer[rows]]),
                np.concatenate([w.device[rows], none]),
            ),
            "merchant": (
                at[has_m],
                w.merchant[rows][has_m],
                np.zeros(int(has_m.sum()), bool),
                w.payer[rows][has_m],
                w.device[rows][has_m],
            ),
            "device": (
                at[has_d],
                w.device[rows][has_d],
                np.ones(int(has_d.sum()), bool),
                w.payer[rows][has_d],
                w.payee[rows][has_d],
            ),
        }
        for kind, (pos, code, sends, counterparty, linked) in incidences.items():
            deg = np.bincount(code, minlength=1)
            hubs = np.flatnonzero(deg >= self.threshold)
            if hubs.size == 0:
                continue
            keep = deg[code] >= self.threshold
            pos, code, sends = pos[keep], code[keep], sends[keep]
            counterparty, linked = counterparty[keep], linked[keep]
            slot = np.searchsorted(hubs, code)
            size = hubs.size
            k = np.bincount(slot, minlength=size)
            out = np.bincount(slot, weights=sends.astype(np.float64), minlength=size)
            amt = np.bincount(slot, weights=log_amount[pos], minlength=size)
            sums = np.stack(
                [np.bincount(slot, weights=x[pos, c], minlength=size) for c in range(x.shape[1])],
                axis=1,
            )
            state: list[_Hub] = []
            for j, c in enumerate(hubs.tolist()):
                hub = self._new(kind, c)
                hub.k, hub.out, hub.sum_amt = int(k[j]), int(out[j]), float(amt[j])
                self.sums[kind][hub.slot] = sums[j]
                state.append(hub)
            for values, attr in ((counterparty, "counterparty"), (linked, "linked")):
                ok = values >= 0
                pairs, counts = np.unique(
                    np.stack([slot[ok], values[ok]], axis=1), axis=0, return_counts=True
                )
                for (j, v), n in zip(pairs.tolist(), counts.tolist(), strict=True):
                    getattr(state[j], attr)[v] = n

    def _make(self, kind: str, code: int) -> None:
        hub = self._new(kind, code)
        seen: set[int] = set()
        for lst in self.rows(kind, code):
            for row in lst:
                if row in seen:  # a payment to oneself: both incidences at once
                    continue
                seen.add(row)
                for link in self._links(row):
                    if link[0] == kind and link[1] == code:
                        self._count(hub, row, link, +1)

    def _count(
        self,
        hub: _Hub,
        row: int,
        link: tuple[str, int, bool, int, int],
        sign: int,
        x: np.ndarray | None = None,
    ) -> None:
        """Count one incidence of ``row`` in or out (``x``: the row's features, if at hand)."""
        kind, _, sends, counterparty, linked = link
        hub.k += sign
        hub.out += sign * int(sends)
        self.sums[kind][hub.slot] += sign * (self._x(row) if x is None else x)
        hub.sum_amt += sign * math.log1p(max(float(self.win.amount[row]), 0.0))
        hub.counterparty[counterparty] += sign
        if hub.counterparty[counterparty] == 0:
            del hub.counterparty[counterparty]
        if linked >= 0:
            hub.linked[linked] += sign
            if hub.linked[linked] == 0:
                del hub.linked[linked]

    def row_added(self, row: int) -> None:
        """A row joined the window (already in its entities' lists, its context set)."""
        made: set[tuple[str, int]] = set()
        x: np.ndarray | None = None
        for link in self._links(row):
            kind, code = link[0], link[1]
            if (kind, code) in made:
                continue
            hub = self.of[kind].get(code)
            if hub is None:
                if self._degree(kind, code) >= self.threshold:
                    self._make(kind, code)  # counts every incidence, this row's included
                    made.add((kind, code))
                continue
            x = self._x(row) if x is None else x
            self._count(hub, row, link, +1, x)
            if not np.isnan(hub.burst):
                count, start = self._burst_near(kind, code, float(self.win.ts[row]))
                if count > hub.burst:
                    hub.burst, hub.burst_at = count, start

    def row_removed(self, row: int) -> None:
        """A row is about to leave the window (still in its lists, its context as it was).

        Only the hours holding the row lose one; the busiest hour is recounted when it
        was one of them.
        """
        t = float(self.win.ts[row])
        x: np.ndarray | None = None
        for link in self._links(row):
            hub = self.of[link[0]].get(link[1])
            if hub is not None:
                x = self._x(row) if x is None else x
                self._count(hub, row, link, -1, x)
                if hub.burst_at <= t <= hub.burst_at + _HOUR:
                    hub.burst = float("nan")

    def context_changed(self, rows: list[int], column: int, step: int) -> None:
        """The context count ``column`` of ``rows`` moved by ``step`` (already applied)."""
        if not rows or not any(self.of.values()):
            return
        w = self.win
        r = np.asarray(rows, dtype=np.int64)
        new = w.ctx[r, column]
        delta = context_x_column(new, column) - context_x_column(new - step, column)
        offset = w.rowx.shape[1] + column
        for kind, codes in (
            ("account", w.payer[r]),
            ("account", w.payee[r]),
            ("merchant", w.merchant[r]),
            ("device", w.device[r]),
        ):
            table = self.slot_of[kind]
            if int(codes.max()) >= len(table) - 1:  # codes newer than the table: not hubs
                codes = np.where(codes < len(table) - 1, codes, -1)
            slots = table[codes]  # code -1 (none) reads the table's last entry, always -1
            hit = slots >= 0
            if hit.any():
                np.add.at(self.sums[kind][:, offset], slots[hit], delta[hit])

    # -- what scoring reads --------------------------------------------------------------

    def _count_between(self, kind: str, code: int, lo: float, hi: float) -> int:
        key = self.win.ts.__getitem__
        return sum(
            bisect_right(lst, hi, key=key) - bisect_left(lst, lo, key=key)
            for lst in self.rows(kind, code)
        )

    def _burst_near(self, kind: str, code: int, t: float) -> tuple[float, float]:
        """Largest hour count among the hours (starting at a row) that a row at ``t`` falls in, and where it starts."""
        key = self.win.ts.__getitem__
        starts: set[float] = set()
        for lst in self.rows(kind, code):
            lo, hi = bisect_left(lst, t - _HOUR, key=key), bisect_right(lst, t, key=key)
            starts.update(float(self.win.ts[r]) for r in lst[lo:hi])
        return max((float(self._count_between(kind, code, s, s + _HOUR)), s) for s in starts)

    def _burst(self, kind: str, code: int) -> tuple[float, float]:
        """Most rows in one hour starting at a row (as ``build_graph`` counts), and where."""
        ts = np.sort(np.concatenate([self.win.ts[lst] for lst in self.rows(kind, code)]))
        if ts.size == 0:
            return 0.0, 0.0
        counts = np.searchsorted(ts, ts + _HOUR, side="right") - np.searchsorted(ts, ts, "left")
        best = int(np.argmax(counts))
        return float(counts[best]), float(ts[best])

    def features(self, kind: str, codes: Sequence[int]) -> np.ndarray:
        """The hubs' normalised entity features, ``[len(codes), len(ENTITY_FEATURES)]``."""
        ts = self.win.ts
        cols = np.zeros((8, len(codes)))
        for j, code in enumerate(codes):
            hub = self.of[kind][code]
            if np.isnan(hub.burst):
                hub.burst, hub.burst_at = self._burst(kind, code)
            lists = [lst for lst in self.rows(kind, code) if lst]
            cols[:, j] = (
                hub.k,
                hub.out,
                len(hub.counterparty),
                len(hub.linked),
                min(float(ts[lst[0]]) for lst in lists),
                max(float(ts[lst[-1]]) for lst in lists),
                hub.burst,
                hub.sum_amt,
            )
        raw = entity_stat_columns(*cols)
        return np.asarray(_normalize(raw, ENTITY_FEATURES, _ENTITY_NORM[kind]))

    def mean_x(self, kind: str, code: int) -> np.ndarray:
        """Mean of the features of the hub's transactions (row and context blocks), float64."""
        hub = self.of[kind][code]
        return np.asarray(self.sums[kind][hub.slot] / max(hub.k, 1))


def context_x_column(counts: np.ndarray, column: int) -> np.ndarray:
    """One column of :func:`context_x`."""
    value = (np.log1p(counts.astype(np.float64)) - _CENTER[column]) / _SCALE[column]
    return np.asarray(value.astype(np.float32).astype(np.float64))


__all__ = ["KINDS", "Hubs", "context_x", "context_x_column"]
