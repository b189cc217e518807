"""The transactions of a site's history window in memory, each row's graph features kept current as rows come and go.

Every number is the one :func:`fedcore.data.graph.build_graph` would give on the
window's rows: the per-row features with the same function, each row's context
counts (its payer's other transactions within an hour, its payee's and device's
within a day) updated by one for each row that enters or leaves within reach, and
entity statistics recomputed from an entity's own rows when they are needed (with
the same function, in the same row order). Scoring a transaction then reads only its
neighbourhood (:mod:`fedcore.serving.subgraph`), never the whole window.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence

import numpy as np

from fedcore.config import HistorySpec
from fedcore.data.graph import _HOUR, _window_counts, row_features
from fedcore.data.transactions import Transactions
from fedcore.serving.hubs import Hubs

_DAY = 24 * _HOUR

ROLES = ("payer", "payee", "device")
"""The entity roles of the context counts, in the order of ``CONTEXT_FEATURES``."""

REACH = (_HOUR, _DAY, _DAY)
"""How far (seconds, either side) each role's context count looks."""


class _Codes:
    """Integer codes of one entity type's ids, in order of first sight; ``""`` is ``-1``."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.name: list[str] = []

    def get(self, value: str) -> int:
        if value == "":
            return -1
        code = self.code.get(value)
        if code is None:
            code = self.code[value] = len(self.name)
            self.name.append(value)
        return code

    def bulk(self, values: np.ndarray) -> np.ndarray:
        return np.fromiter((self.get(v) for v in values.tolist()), np.int64, len(values))


class Window:
    """A site's history window with per-row features (see the module docstring).

    Rows get positions in the order they arrive (time order for a loaded history);
    each entity keeps its rows per role sorted by time. Not thread-safe.

    Args:
        features: The task's extra row features.
        spec: The window's bounds.
    """

    COMPACT_AT = 65_536
    """Positions used above which the arrays are rebuilt once fewer than half are alive."""

    HUB = 64
    """Rows at which an entity's statistics and mean features are kept as running sums
    (:mod:`fedcore.serving.hubs`); scoring then reads them instead of its rows."""

    def __init__(self, features: Sequence[str], spec: HistorySpec, hub: int | None = None) -> None:
        self.features = tuple(features)
        self.spec = spec
        self.accounts, self.merchants, self.devices = _Codes(), _Codes(), _Codes()
        self.out_rows: list[list[int]] = []  # per account: rows it pays in
        self.in_rows: list[list[int]] = []  # per account: rows it receives in
        self.merchant_rows: list[list[int]] = []
        self.device_rows: list[list[int]] = []
        self.size = 0  # positions used (alive or not)
        self.alive_count = 0
        self.newest = -np.inf
        self.row_of: dict[str, int] = {}
        self.tx_id: list[str] = []
        self._in_order: list[int] = []  # rows that came no earlier than every row before them
        self._next_in_order = 0
        self._late: list[tuple[float, int]] = []  # heap of (time, row) of rows that came late
        self._alloc(1024)
        self.hubs = Hubs(self, self.HUB if hub is None else hub)

    def _alloc(self, capacity: int) -> None:
        width = 7 + len(self.features)

        def grow(
            old: np.ndarray | None, shape: tuple[int, ...], dtype: type, fill: float
        ) -> np.ndarray:
            new: np.ndarray = np.full(shape, fill, dtype=dtype)
            if old is not None:
                new[: len(old)] = old
            return new

        get = self.__dict__.get
        self.ts = grow(get("ts"), (capacity,), np.float64, 0.0)
        self.amount = grow(get("amount"), (capacity,), np.float64, 0.0)
        self.rowx = grow(get("rowx"), (capacity, width), np.float32, 0.0)
        self.ctx = grow(get("ctx"), (capacity, len(ROLES)), np.int64, 0)
        self.payer = grow(get("payer"), (capacity,), np.int64, -1)
        self.payee = grow(get("payee"), (capacity,), np.int64, -1)
        self.merchant = grow(get("merchant"), (capacity,), np.int64, -1)
        self.device = grow(get("device"), (capacity,), np.int64, -1)
        self.label = grow(get("label"), (capacity,), np.int64, -1)
        self.alive = grow(get("alive"), (capacity,), np.bool_, 0)
        self.capacity = capacity

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_transactions(
        cls, tx: Transactions, features: Sequence[str], spec: HistorySpec, hub: int | None = None
    ) -> Window:
        """A window holding ``tx`` (time-sorted, as :meth:`HistoryStore.load` gives it).

        ``hub``: rows at which an entity becomes a hub (default :attr:`HUB`).
        """
        win = cls(features, spec, hub)
        win._bulk(tx if not len(tx) or np.all(np.diff(tx.timestamp) >= 0) else tx.sorted_by_time())
        win.hubs.build()
        return win

    def _bulk(self, tx: Transactions, rowx: np.ndarray | None = None) -> None:
        n = len(tx)
        if n == 0:
            return
        start = self.size
        if start + n > self.capacity:
            # room for half as many new rows again: growing copies every array (a stall)
            self._alloc(max(2 * self.capacity, start + n + max(n // 2, 65_536)))
        pos = np.arange(start, start + n)
        self.ts[pos] = tx.timestamp
        self.amount[pos] = tx.amount
        self.rowx[pos] = row_features(tx, self.features) if rowx is None else rowx
        self.payer[pos] = self.accounts.bulk(tx.payer)
        self.payee[pos] = self.accounts.bulk(tx.payee)
        self.merchant[pos] = self.merchants.bulk(tx.merchant)
        self.device[pos] = self.devices.bulk(tx.device)
        self.label[pos] = tx.label
        self.alive[pos] = True
        ts = tx.timestamp.astype(np.float64)
        for k, (codes, reach) in enumerate(
            zip((self.payer, self.payee, self.device), REACH, strict=True)
        ):
            self.ctx[pos, k] = _window_counts(codes[pos], ts, reach, reach).astype(np.int64)
        for lists, codes, size in (
            (self.out_rows, self.payer, len(self.accounts.name)),
            (self.in_rows, self.payee, len(self.accounts.name)),
            (self.merchant_rows, self.merchant, len(self.merchants.name)),
            (self.device_rows, self.device, len(self.devices.name)),
        ):
            lists.extend([] for _ in range(size - len(lists)))
            c = codes[pos]
            keep = c >= 0
            order = np.argsort(c[keep], kind="stable")
            grouped = pos[keep][order]
            bounds = np.cumsum(np.bincount(c[keep], minlength=size))
            lo = 0
            for code, hi in enumerate(bounds.tolist()):
                if hi > lo:
                    lists[code].extend(grouped[lo:hi].tolist())
                lo = hi
        ids = [str(v) for v in tx.tx_id.tolist()]
        self.tx_id.extend(ids)
        self.row_of.update(zip(ids, pos.tolist(), strict=True))
        self._in_order.extend(pos.tolist())
        self.size += n
        self.alive_count += n
        self.newest = max(self.newest, float(ts[-1]))

    # -- rows coming and going -------------------------------------------------------------

    def _role_lists(self, row: int) -> tuple[list[int] | None, ...]:
        d = int(self.device[row])
        return (
            self.out_rows[int(self.payer[row])],
            self.in_rows[int(self.payee[row])],
            self.device_rows[d] if d >= 0 else None,
        )

    def _reach(self, lst: list[int], t: float, reach: float) -> tuple[int, int]:
        key = self.ts.__getitem__
        return bisect_left(lst, t - reach, key=key), bisect_right(lst, t + reach, key=key)

    def add(self, tx: Transactions) -> list[int]:
        """Add rows (one by one, in the given order); returns their positions.

        A row whose ``tx_id`` is already in the window is not added again: its position is
        returned.
        """
        rows = row_features(tx, self.features)
        out: list[int] = []
        for i in range(len(tx)):
            tid = str(tx.tx_id[i])
            known = self.row_of.get(tid)
            if known is not None:
                out.append(known)
                continue
            out.append(self._add_one(tx, i, rows[i], tid))
        return out

    def _add_one(self, tx: Transactions, i: int, rowx: np.ndarray, tid: str) -> int:
        if self.size + 1 > self.capacity:
            self._alloc(self.capacity + max(self.capacity // 2, 65_536))
        r = self.size
        t = float(tx.timestamp[i])
        self.ts[r] = t
        self.amount[r] = float(tx.amount[i])
        self.rowx[r] = rowx
        self.payer[r] = self.accounts.get(str(tx.payer[i]))
        self.payee[r] = self.accounts.get(str(tx.payee[i]))
        self.merchant[r] = self.merchants.get(str(tx.merchant[i]))
        self.device[r] = self.devices.get(str(tx.device[i]))
        self.label[r] = int(tx.label[i])
        self.alive[r] = True
        for lists, codes in (
            (self.out_rows, self.accounts),
            (self.in_rows, self.accounts),
            (self.merchant_rows, self.merchants),
            (self.device_rows, self.devices),
        ):
            lists.extend([] for _ in range(len(codes.name) - len(lists)))
        # context counts: this row and every row within reach of it on the same entity
        for k, (lst, reach) in enumerate(zip(self._role_lists(r), REACH, strict=True)):
            if lst is None:
                continue
            lo, hi = self._reach(lst, t, reach)
            near = lst[lo:hi]
            if near:
                self.ctx[near, k] += 1
                self.hubs.context_changed(near, k, +1)
            self.ctx[r, k] = len(near)
        key = self.ts.__getitem__
        for lst in (*self._role_lists(r), self._merchant_list(r)):
            if lst is None:
                continue
            if not lst or self.ts[lst[-1]] <= t:
                lst.append(r)
            else:
                insort(lst, r, key=key)
        self.hubs.row_added(r)
        if t >= self.newest:
            self._in_order.append(r)
            self.newest = t
        else:
            heapq.heappush(self._late, (t, r))
        self.tx_id.append(tid)
        self.row_of[tid] = r
        self.size += 1
        self.alive_count += 1
        return r

    def _merchant_list(self, row: int) -> list[int] | None:
        m = int(self.merchant[row])
        return self.merchant_rows[m] if m >= 0 else None

    def remove(self, row: int) -> None:
        """Take a row out of the window (its neighbours' context counts drop by one)."""
        if not self.alive[row]:
            return
        self.hubs.row_removed(row)
        t = float(self.ts[row])
        for k, (lst, reach) in enumerate(zip(self._role_lists(row), REACH, strict=True)):
            if lst is None:
                continue
            lst.remove(row)
            lo, hi = self._reach(lst, t, reach)
            near = lst[lo:hi]
            if near:
                self.ctx[near, k] -= 1
                self.hubs.context_changed(near, k, -1)
        merchant_list = self._merchant_list(row)
        if merchant_list is not None:
            merchant_list.remove(row)
        self.alive[row] = False
        self.alive_count -= 1
        self.row_of.pop(self.tx_id[row], None)

    def _oldest(self) -> int | None:
        while (
            self._next_in_order < len(self._in_order)
            and not self.alive[self._in_order[self._next_in_order]]
        ):
            self._next_in_order += 1
        while self._late and not self.alive[self._late[0][1]]:
            heapq.heappop(self._late)
        first = (
            self._in_order[self._next_in_order]
            if self._next_in_order < len(self._in_order)
            else None
        )
        if self._late and (first is None or self._late[0][0] < self.ts[first]):
            return self._late[0][1]
        return first

    def evict(self) -> int:
        """Drop the rows that left the window (older than its days, beyond its count); returns how many."""
        seconds = self.spec.window_seconds
        cutoff = -np.inf if seconds is None else self.newest - seconds
        limit = self.spec.transactions
        dropped = 0
        while self.alive_count:
            row = self._oldest()
            if row is None:
                break
            if self.ts[row] < cutoff or (limit is not None and self.alive_count > limit):
                self.remove(row)
                dropped += 1
            else:
                break
        if self.size > self.COMPACT_AT and self.alive_count < self.size // 2:
            self._compact()
        return dropped

    def _compact(self) -> None:
        """Rebuild the arrays from the rows still alive (the same features, in less memory)."""
        rows = self.order()
        fresh = Window(self.features, self.spec, self.hubs.threshold)
        fresh._bulk(self.transactions(rows), rowx=self.rowx[rows])
        fresh.newest = max(fresh.newest, self.newest)
        self.__dict__.update(fresh.__dict__)
        self.hubs.win = self
        self.hubs.build()

    # -- views -----------------------------------------------------------------------------

    def order(self) -> np.ndarray:
        """Positions of the alive rows in time order (ties: in order of arrival)."""
        alive = np.flatnonzero(self.alive[: self.size])
        return alive[np.lexsort((alive, self.ts[alive]))]

    def transactions(self, rows: np.ndarray | None = None) -> Transactions:
        """The rows (default: every alive row, in time order) as :class:`Transactions`.

        Features are not kept per row, so they come back as zeros: use this for ids,
        entities, times, amounts and labels (a test's offline reference keeps its own
        features).
        """
        rows = self.order() if rows is None else rows
        return Transactions(
            tx_id=np.array([self.tx_id[r] for r in rows.tolist()], dtype=object),
            payer=np.array([self.accounts.name[c] for c in self.payer[rows].tolist()], object),
            payee=np.array([self.accounts.name[c] for c in self.payee[rows].tolist()], object),
            merchant=np.array(
                [self.merchants.name[c] if c >= 0 else "" for c in self.merchant[rows].tolist()],
                object,
            ),
            device=np.array(
                [self.devices.name[c] if c >= 0 else "" for c in self.device[rows].tolist()],
                object,
            ),
            amount=self.amount[rows].copy(),
            timestamp=self.ts[rows].copy(),
            label=self.label[rows].copy(),
            features={f: np.zeros(len(rows)) for f in self.features},
        )


__all__ = ["REACH", "ROLES", "Window"]
