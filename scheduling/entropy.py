"""Entropy weight method: objective metric weights from how much each metric varies across sites.

The method follows Shannon's information entropy as used for indicator weighting in
multi-criteria evaluation (Zou, Yun and Sun 2006, "Entropy method for determination of weight
of evaluating indicators in fuzzy synthetic evaluation for water quality assessment",
Journal of Environmental Sciences 18(5)): a metric on which the sites differ a lot carries
more information about which site is better, so it gets more weight; a metric on which all
sites agree carries none.

For a table ``x`` of ``n`` sites (rows) by ``m`` metrics (columns):

1. min-max normalize each column by its direction, benefit (higher is better)
   ``x'_ij = (x_ij - min_j) / (max_j - min_j)`` or cost (lower is better)
   ``x'_ij = (max_j - x_ij) / (max_j - min_j)``;
2. ``p_ij = x'_ij / sum_i x'_ij``;
3. ``e_j = -k * sum_i p_ij ln p_ij`` with ``k = 1 / ln n`` and ``0 ln 0 = 0``, so ``e_j`` is in [0, 1];
4. ``d_j = 1 - e_j`` (degree of divergence);
5. ``w_j = d_j / sum_j d_j``.

Edge cases: a constant column (``max_j == min_j``) normalizes to 1 for every site, so
``p_ij = 1/n``, ``e_j = 1`` and its weight is 0; when every column is constant, or there is a
single site (``ln 1 = 0``), no metric tells the sites apart and the weights are equal, ``1/m``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_table(table: np.ndarray, benefit: Sequence[bool]) -> np.ndarray:
    x = np.asarray(table, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(
            f"expected a 2-D table (sites x metrics); found an array of shape {x.shape}; "
            "pass one row per site and one column per metric"
        )
    n, m = x.shape
    if n == 0 or m == 0:
        raise ValueError(
            f"expected at least one site and one metric; found a table of shape {x.shape}"
        )
    if len(benefit) != m:
        raise ValueError(
            f"expected one benefit flag per metric column ({m}); found {len(benefit)}; "
            "pass True for higher-is-better metrics and False for lower-is-better ones"
        )
    if not np.all(np.isfinite(x)):
        rows, cols = np.nonzero(~np.isfinite(x))
        raise ValueError(
            f"expected finite values; found {float(x[rows[0], cols[0]])!r} at site row {rows[0]}, "
            f"metric column {cols[0]}; impute missing readings before weighting"
        )
    return x


def normalize_columns(table: np.ndarray, benefit: Sequence[bool]) -> np.ndarray:
    """Min-max normalize each column of ``table`` to [0, 1] by its direction.

    Args:
        table: ``float [n_sites, n_metrics]``, all finite.
        benefit: One flag per column: ``True`` when higher is better, ``False`` (cost)
            when lower is better.

    Returns:
        ``float64 [n_sites, n_metrics]`` in [0, 1], 1 = best site on that metric; a constant
        column becomes all ones.

    Raises:
        ValueError: On a table that is not 2-D, is empty, holds non-finite values, or whose
            column count differs from ``len(benefit)``.
    """
    x = _check_table(table, benefit)
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    constant = span == 0
    safe = np.where(constant, 1.0, span)
    up = (x - lo) / safe
    down = (hi - x) / safe
    out = np.where(np.asarray(benefit, dtype=bool), up, down)
    out[:, constant] = 1.0
    normalized: np.ndarray = np.clip(out, 0.0, 1.0)
    return normalized


def entropy_weights(table: np.ndarray, benefit: Sequence[bool]) -> np.ndarray:
    """Weights of the metric columns of ``table`` by the entropy weight method.

    Args:
        table: ``float [n_sites, n_metrics]``, raw metric values (any units), all finite.
        benefit: One flag per column: ``True`` = higher is better, ``False`` = lower is better.

    Returns:
        ``float64 [n_metrics]``, non-negative, summing to 1. A constant column gets 0; when
        all columns are constant, or ``n_sites == 1``, every weight is ``1 / n_metrics``.

    Raises:
        ValueError: As :func:`normalize_columns`.
    """
    xn = normalize_columns(table, benefit)
    n, m = xn.shape
    equal = np.full(m, 1.0 / m)
    if n == 1:
        return equal
    constant = np.ptp(np.asarray(table, dtype=np.float64), axis=0) == 0
    p = xn / xn.sum(axis=0)  # every column sums to >= 1 after normalization
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    e = -plogp.sum(axis=0) / np.log(n)
    d = np.clip(1.0 - e, 0.0, None)
    d[constant] = 0.0  # exactly 0, not a rounding residue of ln n / ln n
    total = d.sum()
    if total <= 0.0:
        return equal
    weights: np.ndarray = d / total
    return weights


def entropy_scores(table: np.ndarray, benefit: Sequence[bool]) -> np.ndarray:
    """Composite score per site: ``100 * sum_j w_j x'_ij`` with entropy weights ``w``.

    Args:
        table: ``float [n_sites, n_metrics]``, raw metric values, all finite.
        benefit: One flag per column: ``True`` = higher is better, ``False`` = lower is better.

    Returns:
        ``float64 [n_sites]`` in [0, 100], higher = better. The scale is absolute, not
        stretched across sites: a site best on every weighted metric scores 100, one worst on
        all scores 0, and when no metric tells the sites apart every site scores 100.

    Raises:
        ValueError: As :func:`normalize_columns`.
    """
    weights = entropy_weights(table, benefit)
    scores: np.ndarray = np.clip(100.0 * normalize_columns(table, benefit) @ weights, 0.0, 100.0)
    return scores
