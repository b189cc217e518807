"""FedNova: unbiased aggregation when sites run unequal local work. Pure numpy, no I/O.

Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020.

With plain local SGD, site ``i`` starts from the global model ``x``, runs ``tau_i``
steps and returns ``x_i``. FedAvg's ``sum_i p_i x_i`` weighs site ``i``'s progress by
``p_i * tau_i``, so it minimizes ``sum_i p_i tau_i F_i`` instead of the true objective
``sum_i p_i F_i``: the model drifts toward the sites that do more steps. FedNova
averages the *per-step* updates ``d_i = (x - x_i) / tau_i`` and scales the mean by
``tau_eff = sum_i p_i tau_i``:

    x_new = x - tau_eff * sum_i p_i d_i

For local SGD with momentum ``rho`` pass ``||a_i||_1`` (:func:`local_norm`) in place
of ``tau_i``; plain SGD is ``a_i = tau_i``. Other local optimizers (Adam) are
normalized by ``tau_i`` as an approximation.

Weights are a model's arrays in a fixed order (``list[np.ndarray]``). Sums run in
float64; results are new arrays in the global model's dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Weights = Sequence[np.ndarray]


def data_shares(data_weights: Sequence[float]) -> np.ndarray:
    """``p_i = n_i / sum_j n_j`` for positive ``n_i`` (e.g. training examples).

    >>> data_shares([1, 3]).tolist()
    [0.25, 0.75]
    """
    n = np.asarray(data_weights, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(
            f"data weights must be a non-empty list of positive numbers, got {list(data_weights)!r}"
        )
    shares: np.ndarray = n / float(n.sum())
    return shares


def effective_steps(steps: Sequence[float], data_weights: Sequence[float]) -> float:
    """``tau_eff = sum_i p_i tau_i``: the step count FedNova's aggregate update stands for.

    >>> effective_steps([10, 30], [1, 3])
    25.0
    """
    tau = _check_steps(steps)
    p = data_shares(data_weights)
    if tau.size != p.size:
        raise ValueError(f"got {tau.size} step counts but {p.size} data weights; pass one per site")
    return float(np.dot(p, tau))


def local_norm(steps: int, momentum: float = 0.0) -> float:
    """``||a_i||_1`` for ``steps`` of local SGD with heavy-ball ``momentum`` (buffer starts at 0).

    ``(tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)``; equals ``tau`` for ``rho = 0``.

    >>> local_norm(2, 0.5)
    2.5
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1.0 - rho**steps) / (1.0 - rho)) / (1.0 - rho)


def fednova_weights(data_weights: Sequence[float], steps: Sequence[float]) -> list[float]:
    r"""Aggregation weights that make a plain weighted average of site models FedNova.

    With :math:`w_i = n_i / \tau_i`, the weighted average of the site models is
    :math:`x + \sum_i w_i \Delta_i / \sum_j w_j`, i.e. FedNova's update
    :math:`x - \tau_{\text{eff}} \sum_i p_i d_i` with :math:`d_i = -\Delta_i / \tau_i`
    and :math:`\tau_{\text{eff}} = (\sum_i p_i / \tau_i)^{-1}`. FedNova's fixed point
    does not depend on :math:`\tau_{\text{eff}}` (Wang et al. 2020, Sec. 4: any positive
    value keeps the objective :math:`\sum_i p_i F_i`; it only scales the step), so these
    weights stay unbiased; and, being plain weights, they work unchanged wherever the
    aggregation is a weighted sum: clear, CKKS-encrypted or SecAgg+-masked.

    Args:
        data_weights: :math:`n_i` (examples), positive.
        steps: :math:`\tau_i`, local steps, positive.

    >>> fednova_weights([100, 300], [2, 6])
    [50.0, 50.0]
    """
    if len(data_weights) != len(steps):
        raise ValueError(
            f"need one step count per site; found {len(data_weights)} weights and {len(steps)} steps"
        )
    if any(t <= 0 for t in steps) or any(n <= 0 for n in data_weights):
        raise ValueError(
            f"data weights and steps must be positive; found {list(data_weights)}, {list(steps)}"
        )
    return [float(n) / float(t) for n, t in zip(data_weights, steps, strict=True)]


def relative_fednova_weights(data_weights: Sequence[float], steps: Sequence[float]) -> list[float]:
    """:func:`fednova_weights` divided by the largest, as the coordinator aggregates with them.

    Relative to the largest, so the largest update uses the whole CKKS packing range (the
    aggregate is divided by the sum of the weights, so the scale cancels). A site with no
    examples gets 0; when no site has any, every site gets 1.

    >>> relative_fednova_weights([100, 300, 0], [2, 3, 1])
    [0.5, 1.0, 0.0]
    """
    if len(data_weights) != len(steps):
        raise ValueError(
            f"need one step count per site; found {len(data_weights)} weights and {len(steps)} steps"
        )
    raw = [0.0] * len(data_weights)
    positive = [i for i, n in enumerate(data_weights) if n > 0]
    given = fednova_weights([data_weights[i] for i in positive], [steps[i] for i in positive])
    for i, w in zip(positive, given, strict=True):
        raw[i] = w
    largest = max(raw, default=0.0)
    if largest <= 0:
        return [1.0] * len(raw)
    return [w / largest for w in raw]


def fedavg_aggregate(
    site_weights: Sequence[Weights], data_weights: Sequence[float]
) -> list[np.ndarray]:
    """FedAvg (McMahan et al., 2017): ``sum_i p_i x_i``; biased when local work differs."""
    p = data_shares(data_weights)
    _check_sites(site_weights[0] if site_weights else [], site_weights, p.size)
    coefs = p.tolist()
    return [
        _cast(_weighted_sum(coefs, [w[k] for w in site_weights]), ref)
        for k, ref in enumerate(site_weights[0])
    ]


def fednova_aggregate(
    global_weights: Weights,
    site_weights: Sequence[Weights],
    steps: Sequence[float],
    data_weights: Sequence[float],
) -> list[np.ndarray]:
    """FedNova: ``x - tau_eff * sum_i p_i (x - x_i) / tau_i``.

    Args:
        global_weights: The model ``x`` every site started from.
        site_weights: Each site's model ``x_i`` after local training.
        steps: Local steps ``tau_i`` each site ran (or :func:`local_norm` under momentum).
        data_weights: Positive data sizes ``n_i``; ``p_i = n_i / sum n``.

    Returns:
        The new global model (new arrays, dtypes of ``global_weights``).

    Raises:
        ValueError: on mismatched counts, shapes, or non-positive steps or weights.
    """
    p = data_shares(data_weights)
    tau = _check_steps(steps)
    _check_sites(global_weights, site_weights, p.size)
    if tau.size != p.size:
        raise ValueError(f"got {tau.size} step counts for {p.size} sites; pass one per site")
    coefs = (p / tau).tolist()
    summed = [
        _weighted_sum(coefs, [_delta(x, w[k]) for w in site_weights])
        for k, x in enumerate(global_weights)
    ]
    return apply_normalized_sum(global_weights, summed, float(np.dot(p, tau)))


def site_scaled_update(
    global_weights: Weights, local_weights: Weights, steps: float, share: float
) -> list[np.ndarray]:
    """A site's FedNova contribution, ``p_i (x - x_i) / tau_i``, for secure aggregation.

    Each site computes this locally; the coordinator sees only the sum over sites
    (CKKS or SecAgg+) and finishes with :func:`apply_normalized_sum`. The coordinator
    sends each site ``share = p_i`` and knows ``tau_eff`` because it assigned the steps.
    Results are float64 (the sum of encoded updates should not lose precision).
    """
    if not steps > 0:
        raise ValueError(f"steps must be > 0, got {steps!r}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share!r}; pass p_i = n_i / sum n")
    _check_sites(global_weights, [local_weights], 1)
    return [
        (share / steps) * _delta(x, xi) for x, xi in zip(global_weights, local_weights, strict=True)
    ]


def apply_normalized_sum(
    global_weights: Weights, summed: Weights, tau_eff: float
) -> list[np.ndarray]:
    """Finish FedNova from the sum of :func:`site_scaled_update`: ``x - tau_eff * summed``."""
    if not tau_eff > 0:
        raise ValueError(f"tau_eff must be > 0, got {tau_eff!r}; see effective_steps")
    _check_sites(global_weights, [summed], 1)
    return [
        _cast(np.asarray(x, dtype=np.float64) - tau_eff * np.asarray(s, dtype=np.float64), x)
        for x, s in zip(global_weights, summed, strict=True)
    ]


def _delta(x: np.ndarray, xi: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) - np.asarray(xi, dtype=np.float64)


def _weighted_sum(coefs: Sequence[float], arrays: Sequence[np.ndarray]) -> np.ndarray:
    acc = np.zeros(np.shape(arrays[0]), dtype=np.float64)
    for c, a in zip(coefs, arrays, strict=True):
        acc += c * np.asarray(a, dtype=np.float64)
    return acc


def _cast(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    dtype = np.asarray(like).dtype
    return a.astype(dtype) if np.issubdtype(dtype, np.floating) else np.rint(a).astype(dtype)


def _check_steps(steps: Sequence[float]) -> np.ndarray:
    tau = np.asarray(steps, dtype=np.float64)
    if tau.ndim != 1 or tau.size == 0 or not np.all(np.isfinite(tau)) or np.any(tau <= 0):
        raise ValueError(f"steps must be positive numbers, one per site, got {list(steps)!r}")
    return tau


def _check_sites(reference: Weights, site_weights: Sequence[Weights], n_sites: int) -> None:
    if len(site_weights) != n_sites:
        raise ValueError(
            f"got {len(site_weights)} site models for {n_sites} data weights; pass one per site"
        )
    shapes = [np.shape(a) for a in reference]
    for i, w in enumerate(site_weights):
        found = [np.shape(a) for a in w]
        if found != shapes:
            raise ValueError(
                f"site {i}: array shapes {found} do not match the global model's {shapes}"
            )
