"""FedNova: hand-checked arithmetic, the secure-aggregation form, and unbiasedness with unequal local work."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from scheduling.fednova import (
    apply_normalized_sum,
    data_shares,
    effective_steps,
    fedavg_aggregate,
    fednova_aggregate,
    fednova_weights,
    local_norm,
    site_scaled_update,
)


def test_two_sites_by_hand() -> None:
    # x = 0; site 1 (n = 1) ran 2 steps to -2, site 2 (n = 3) ran 3 steps to -9.
    # p = (0.25, 0.75); d = (0 - -2) / 2 = 1 and (0 - -9) / 3 = 3; sum p d = 0.25 + 2.25 = 2.5
    # tau_eff = 0.25 * 2 + 0.75 * 3 = 2.75; FedNova x_new = 0 - 2.75 * 2.5 = -6.875
    # FedAvg: 0.25 * -2 + 0.75 * -9 = -7.25 (pulled toward the site with more steps)
    x = [np.array([0.0])]
    sites = [[np.array([-2.0])], [np.array([-9.0])]]
    assert fednova_aggregate(x, sites, [2, 3], [1, 3])[0] == pytest.approx([-6.875])
    assert fedavg_aggregate(sites, [1, 3])[0] == pytest.approx([-7.25])
    assert effective_steps([2, 3], [1, 3]) == pytest.approx(2.75)
    assert data_shares([1, 3]).tolist() == [0.25, 0.75]


@pytest.mark.parametrize(
    ("steps", "momentum", "expected"),
    [
        (5, 0.0, 5.0),  # plain SGD: a_i = tau_i
        (1, 0.9, 1.0),  # one step: the buffer holds just that gradient
        (2, 0.5, 2.5),  # gradient g0 counted 1 + 0.5, g1 counted 1
        (
            3,
            0.5,
            4.25,
        ),  # (3 - 0.5 (1 - 0.125) / 0.5) / 0.5 = (3 - 0.875) / 0.5; g0 1.75 + g1 1.5 + g2 1
    ],
)
def test_local_norm(steps: int, momentum: float, expected: float) -> None:
    assert local_norm(steps, momentum) == pytest.approx(expected)


def test_local_norm_matches_momentum_sgd_displacement() -> None:
    # With a constant gradient g, tau steps of heavy-ball SGD move x by lr * ||a||_1 * g.
    g, lr, rho, tau = np.array([0.3, -1.2]), 0.1, 0.9, 7
    x, v = np.zeros(2), np.zeros(2)
    for _ in range(tau):
        v = rho * v + g
        x = x - lr * v
    np.testing.assert_allclose(x, -lr * local_norm(tau, rho) * g, rtol=1e-12)


def test_secure_aggregation_form_equals_fednova() -> None:
    rng = np.random.default_rng(11)
    shapes = [(4, 3), (3,)]
    x = [rng.normal(size=s).astype(np.float32) for s in shapes]
    steps, n = [3, 7, 1, 12], [50, 10, 200, 40]
    sites = [[(a + rng.normal(size=a.shape)).astype(np.float32) for a in x] for _ in steps]
    p = data_shares(n)
    # each site: p_i (x - x_i) / tau_i; the coordinator only ever sees the sum
    parts = [
        site_scaled_update(x, w, t, float(pi)) for w, t, pi in zip(sites, steps, p, strict=True)
    ]
    summed = [np.sum([part[k] for part in parts], axis=0) for k in range(len(x))]
    tau_eff = effective_steps(steps, n)  # (50*3 + 10*7 + 200*1 + 40*12) / 300 = 900 / 300 = 3
    assert tau_eff == pytest.approx(3.0)
    secure = apply_normalized_sum(x, summed, tau_eff)
    direct = fednova_aggregate(x, sites, steps, n)
    for s, d, ref in zip(secure, direct, x, strict=True):
        assert s.dtype == d.dtype == np.float32 and s.shape == ref.shape
        np.testing.assert_allclose(s, d, rtol=1e-6, atol=1e-6)


def test_equal_steps_is_fedavg() -> None:
    rng = np.random.default_rng(3)
    x = [rng.normal(size=(5,)), rng.normal(size=(2, 2))]
    sites = [[a + rng.normal(size=a.shape) for a in x] for _ in range(3)]
    # tau_eff = 4 and sum p (x - x_i) / 4 * 4 = x - sum p x_i
    for a, b in zip(
        fednova_aggregate(x, sites, [4, 4, 4], [1, 2, 5]),
        fedavg_aggregate(sites, [1, 2, 5]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_inputs_untouched_and_dtypes_kept() -> None:
    x: list[np.ndarray] = [np.array([1.0, 2.0], dtype=np.float32), np.array([3], dtype=np.int64)]
    sites: list[list[np.ndarray]] = [
        [np.array([0.0, 0.0], dtype=np.float32), np.array([1], dtype=np.int64)]
    ] * 2
    before = [a.copy() for a in x]
    out = fednova_aggregate(x, sites, [1, 2], [1, 1])
    assert [a.dtype for a in out] == [np.float32, np.int64]
    for a, b in zip(x, before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert out[0] is not x[0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: data_shares([1, 0]), "data weights must be a non-empty list of positive"),
        (lambda: data_shares([]), "data weights must be a non-empty list of positive"),
        (
            lambda: fednova_aggregate([np.zeros(2)], [[np.zeros(2)]], [0], [1]),
            r"steps must be positive numbers, one per site, got \[0\]",
        ),
        (
            lambda: fednova_aggregate([np.zeros(2)], [[np.zeros(2)]], [1, 2], [1]),
            "got 2 step counts for 1 sites",
        ),
        (
            lambda: fednova_aggregate([np.zeros(2)], [[np.zeros(3)]], [1], [1]),
            r"site 0: array shapes \[\(3,\)\] do not match the global model's \[\(2,\)\]",
        ),
        (
            lambda: fedavg_aggregate([[np.zeros(2)]], [1, 1]),
            "got 1 site models for 2 data weights",
        ),
        (lambda: site_scaled_update([np.zeros(1)], [np.zeros(1)], 0, 0.5), "steps must be > 0"),
        (lambda: site_scaled_update([np.zeros(1)], [np.zeros(1)], 1, 1.5), "share must be in"),
        (lambda: apply_normalized_sum([np.zeros(1)], [np.zeros(1)], 0.0), "tau_eff must be > 0"),
        (lambda: local_norm(0), "steps must be >= 1, got 0"),
        (lambda: local_norm(3, 1.0), r"momentum must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# A federated quadratic. Site i minimizes F_i(x) = 0.5 a_i ||x - c_i||^2 and holds n_i examples:
#   a = (1, 2, 0.5), n = (100, 300, 600) so p = (0.1, 0.3, 0.6)
#   c = ((10, 0), (0, 10), (-10, -10))
# True optimum of sum_i p_i F_i: x* = sum p_i a_i c_i / sum p_i a_i, with p a = (0.1, 0.6, 0.3), sum 1:
#   x* = 0.1 (10, 0) + 0.6 (0, 10) + 0.3 (-10, -10) = (1 - 3, 6 - 3) = (-2, 3)
# Local GD with lr h shrinks x - c_i by (1 - h a_i) per step, so after tau_i steps
#   x - x_i = q_i (x - c_i),  q_i = 1 - (1 - h a_i)^tau_i.
# Fixed points (set the aggregate step to 0):
#   FedAvg:  sum p_i q_i (x - c_i) = 0         -> weights p_i q_i        ~ h p_i a_i tau_i: biased by tau_i
#   FedNova: sum p_i q_i / tau_i (x - c_i) = 0 -> weights p_i q_i / tau_i ~ h p_i a_i:     x* as h -> 0
# With tau = (1, 5, 20) FedAvg's weights tend to p a tau = (0.1, 3, 6) / 9.1:
#   (10 * 0.1 - 10 * 6, 10 * 3 - 10 * 6) / 9.1 = (-6.48, -3.30), about 7.7 from x*.
A = np.array([1.0, 2.0, 0.5])
N = [100, 300, 600]
P = np.array([0.1, 0.3, 0.6])
C = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
X_STAR = np.array([-2.0, 3.0])


def _local_gd(x: np.ndarray, i: int, steps: int, lr: float) -> np.ndarray:
    for _ in range(steps):
        x = x - lr * A[i] * (x - C[i])  # gradient of 0.5 a_i ||x - c_i||^2
    return x


def _train(method: str, steps: list[int], lr: float, rounds: int) -> np.ndarray:
    x = np.zeros(2)
    for _ in range(rounds):
        local = [[_local_gd(x, i, t, lr)] for i, t in enumerate(steps)]
        if method == "fedavg":
            x = fedavg_aggregate(local, N)[0]
        else:
            x = fednova_aggregate([x], local, steps, N)[0]
    return x


def _fixed_point(weights: np.ndarray) -> np.ndarray:
    out: np.ndarray = weights @ C / weights.sum()
    return out


def test_closed_form_optimum() -> None:
    np.testing.assert_allclose(_fixed_point(P * A), X_STAR)  # weights p a = (0.1, 0.6, 0.3)


def test_unbiased_aggregation_with_unequal_local_work() -> None:
    steps, lr = [1, 5, 20], 0.01
    q = 1 - (1 - lr * A) ** np.array(steps)  # (0.01, 0.0961, 0.0954)
    fedavg = _train("fedavg", steps, lr, rounds=400)
    fednova = _train("fednova", steps, lr, rounds=400)
    # both reach their closed-form fixed points
    np.testing.assert_allclose(fedavg, _fixed_point(P * q), atol=1e-9)
    np.testing.assert_allclose(fednova, _fixed_point(P * q / steps), atol=1e-9)
    # FedAvg lands near (-6.46, -3.26), 7.69 from x*; FedNova near (-1.93, 3.02), 0.068 from x*
    assert np.linalg.norm(fedavg - X_STAR) == pytest.approx(7.69, abs=0.01)
    assert np.linalg.norm(fednova - X_STAR) == pytest.approx(0.068, abs=0.001)


def test_fednova_gap_vanishes_with_the_step_size_fedavg_does_not() -> None:
    # FedNova's residual gap is O(lr): 0.068 at lr 0.01, 0.0136 at lr 0.002 (5x smaller);
    # FedAvg's stays near the 7.7 of its small-lr limit (-6.48, -3.30).
    steps = [1, 5, 20]
    gaps = {}
    for lr, rounds in ((0.01, 400), (0.002, 1000)):
        fedavg = _train("fedavg", steps, lr, rounds)
        fednova = _train("fednova", steps, lr, rounds)
        gaps[lr] = (np.linalg.norm(fedavg - X_STAR), np.linalg.norm(fednova - X_STAR))
    assert gaps[0.002][1] == pytest.approx(gaps[0.01][1] / 5, rel=0.05)
    assert gaps[0.002][1] < 0.015
    assert gaps[0.002][0] > 7.6 and gaps[0.01][0] > 7.6


def test_equal_local_work_both_agree() -> None:
    # tau = (5, 5, 5): FedNova and FedAvg are the same map. q = 1 - (1 - 0.01 a)^5
    # = (0.0490, 0.0961, 0.0248); weights p q = (0.0049, 0.0288, 0.0149) / 0.0486
    # = (0.101, 0.593, 0.306) vs p a = (0.1, 0.6, 0.3): x = (1.01 - 3.06, 5.93 - 3.06), 0.13 from x*,
    # the O(lr) error of local GD that both share, far below FedAvg's 7.7 with unequal steps.
    steps, lr = [5, 5, 5], 0.01
    q = 1 - (1 - lr * A) ** 5
    fedavg = _train("fedavg", steps, lr, rounds=400)
    fednova = _train("fednova", steps, lr, rounds=400)
    np.testing.assert_allclose(fednova, fedavg, atol=1e-12)
    np.testing.assert_allclose(fednova, _fixed_point(P * q), atol=1e-9)
    assert np.linalg.norm(fednova - X_STAR) == pytest.approx(0.133, abs=0.001)


def test_fednova_weights_in_a_plain_weighted_average_are_unbiased_too() -> None:
    # weights n_i / tau_i = (100, 60, 30): the average x + sum w_i D_i / sum w_i is FedNova
    # with tau_eff = 1 / sum(p_i / tau_i); the fixed point does not depend on tau_eff, so it
    # is FedNova's (P q / tau above), 0.068 from x*, where plain FedAvg ends 7.69 away.
    steps, lr = [1, 5, 20], 0.01
    assert fednova_weights(N, steps) == [100.0, 60.0, 30.0]
    q = 1 - (1 - lr * A) ** np.array(steps)
    x = np.zeros(2)
    for _ in range(400):
        local = [[_local_gd(x, i, t, lr)] for i, t in enumerate(steps)]
        x = fedavg_aggregate(local, fednova_weights(N, steps))[0]
    np.testing.assert_allclose(x, _fixed_point(P * q / steps), atol=1e-9)
    assert np.linalg.norm(x - X_STAR) == pytest.approx(0.068, abs=0.001)
    with pytest.raises(ValueError, match="one step count per site"):
        fednova_weights([1, 2], [1])
    with pytest.raises(ValueError, match="positive"):
        fednova_weights([1, 2], [1, 0])
