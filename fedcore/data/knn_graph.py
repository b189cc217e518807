"""The similarity graph of a table without entity ids: each row receives messages from its nearest earlier rows (never from later or test rows, so no future leaks into training)."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 23
"""Distances computed at once (``rows x candidates``): about 32 MiB of float32."""


def _nearest(
    dist: torch.Tensor, k: int, rows: torch.Tensor, cand: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest finite candidates of each row: ``(neighbour, row)`` index pairs."""
    kk = min(k, dist.shape[1])
    if kk == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    value, index = torch.topk(dist, kk, dim=1, largest=False, sorted=True)
    keep = torch.isfinite(value)
    src = cand[index][keep]
    dst = rows.unsqueeze(1).expand(-1, kk)[keep]
    return src, dst


def knn_edges(
    points: torch.Tensor,
    k: int,
    *,
    timestamp: np.ndarray | None,
    window: int,
    train: np.ndarray | None = None,
) -> torch.Tensor:
    """Edges from each row's ``k`` nearest allowed rows (Euclidean) to the row.

    With timestamps (``timestamp`` sorted ascending), a row's candidates are the at most
    ``window`` rows just before it that are *strictly* earlier (rows at the same time are
    never linked). Without timestamps, its candidates are the training rows other than
    itself, never a test row. Edges are directed neighbour -> row only: no row ever
    receives a message from a later (or test) row.

    Computed in chunks of rows with ``torch.cdist`` and ``torch.topk``.

    Args:
        points: ``float32 [n, d]`` (the standardized row block).
        k: Neighbours per row (fewer when fewer candidates exist).
        timestamp: ``float64 [n]`` sorted ascending, or ``None``.
        window: Candidates per row at most (with timestamps).
        train: ``bool [n]`` training rows; required without timestamps.

    Returns:
        ``long [2, E]``: row 0 the neighbour (source), row 1 the row (target).

    Raises:
        ValueError: on unsorted timestamps, a missing ``train`` mask or ``k``/``window`` < 1.
    """
    n = int(points.shape[0])
    if k < 1 or window < 1:
        raise ValueError(f"knn_edges needs k >= 1 and window >= 1; found k={k}, window={window}")
    pts = points.float()
    srcs: list[torch.Tensor] = []
    dsts: list[torch.Tensor] = []
    if timestamp is not None:
        ts = np.asarray(timestamp, np.float64)
        if len(ts) != n or (n > 1 and bool(np.any(np.diff(ts) < 0))):
            raise ValueError(
                f"knn_edges expects {n} timestamps sorted ascending; found {len(ts)} "
                "(sort the table by time first)"
            )
        earlier = np.searchsorted(ts, ts, side="left")  # rows strictly before each row
        step = max(1, min(1024, _CHUNK_ELEMENTS // (window + 1024)))
        for a in range(0, n, step):
            b = min(n, a + step)
            lo = max(0, int(earlier[a]) - window)
            hi = int(earlier[b - 1])
            if hi <= lo:
                continue
            dist = torch.cdist(pts[a:b], pts[lo:hi])
            cand = torch.arange(lo, hi)
            first = torch.from_numpy(np.maximum(earlier[a:b] - window, 0))
            stop = torch.from_numpy(earlier[a:b].astype(np.int64))
            ok = (cand.unsqueeze(0) >= first.unsqueeze(1)) & (cand.unsqueeze(0) < stop.unsqueeze(1))
            dist = dist.masked_fill(~ok, float("inf"))
            s, d = _nearest(dist, k, torch.arange(a, b), cand)
            srcs.append(s)
            dsts.append(d)
    else:
        if train is None or len(train) != n:
            raise ValueError(
                "knn_edges without timestamps needs the training mask (bool [n]); found "
                f"{None if train is None else len(train)} entries for {n} rows"
            )
        cand = torch.from_numpy(np.flatnonzero(train).astype(np.int64))
        if len(cand):
            ref = pts[cand]
            step = max(1, min(4096, _CHUNK_ELEMENTS // len(cand)))
            for a in range(0, n, step):
                b = min(n, a + step)
                rows = torch.arange(a, b)
                dist = torch.cdist(pts[a:b], ref)
                dist = dist.masked_fill(rows.unsqueeze(1) == cand.unsqueeze(0), float("inf"))
                s, d = _nearest(dist, k, rows, cand)
                srcs.append(s)
                dsts.append(d)
    if not srcs:
        return torch.zeros((2, 0), dtype=torch.long)
    edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)]).long()
    log.debug("knn graph: %d rows, %d edges (k=%d, window=%d)", n, edge_index.shape[1], k, window)
    return edge_index
