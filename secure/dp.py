"""Differential privacy for site updates: DP-FedAvg with fixed clipping (McMahan et al., ICLR 2018), RDP accounting (Mironov 2017).

The mechanism, per round, matches Flower's ``DifferentialPrivacyServerSideFixedClipping`` /
``DifferentialPrivacyClientSideFixedClipping`` (``flwr.serverapp.strategy.dp_fixed_clipping``):

1. each selected site's model update is scaled so that its global L2 norm is at most
   ``clip_norm`` C (:func:`clip_update`, Flower's ``clip_inputs_inplace``: FlatClip of
   Andrew et al., arXiv:1710.06963);
2. the clipped updates are summed with equal weights and Gaussian noise of standard deviation
   ``noise_multiplier * clip_norm`` (z * C) is added to the *sum* (:func:`sum_noise_std`);
   equivalently, noise z * C / m on the mean of the m updates (:func:`noise_std`, Flower's
   ``compute_stdv``). The noise comes from the operating system's CSPRNG
   (:class:`SystemEntropy`), never from a seeded generator: a continuous Gaussian
   (:func:`gaussian_noise`) on clear aggregates, the discrete Gaussian of Canonne, Kamath &
   Steinke (NeurIPS 2020; :func:`discrete_gaussian`) on the integer lanes of packed CKKS.

Privacy is accounted per site (user-level DP: one "record" is a whole site's contribution) by
:class:`DpAccountant`, which wraps Flower's ``RdpAccountant`` (itself over Google's
``dp-accounting``) with fixed-size sampling without replacement and the replace-one
neighbouring relation. Under replace-one, the sum's L2 sensitivity is 2S, with S = C plus what
the mode's quantization can add to a clipped update (:func:`quantization_term`,
:func:`sensitivity`), so the accountant is given the multiplier z C / (2 S)
(:func:`accounting_noise_multiplier`; z / 2 without quantization); see that function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
from flwr.serverapp import (
    GaussianPrivacyEvent,
    PrivacyConfig,
    RdpAccountant,
)

from fedcore.config import DpSpec
from secure.dp_noise import DISCRETE_SIGMA_DENOMINATOR as DISCRETE_SIGMA_DENOMINATOR
from secure.dp_noise import EntropySource as EntropySource
from secure.dp_noise import GeneratorEntropy as GeneratorEntropy
from secure.dp_noise import NoiseRng as NoiseRng
from secure.dp_noise import SystemEntropy as SystemEntropy
from secure.dp_noise import _bernoulli_exp as _bernoulli_exp
from secure.dp_noise import _bernoulli_exp_unit as _bernoulli_exp_unit
from secure.dp_noise import _discrete_gaussian_one as _discrete_gaussian_one
from secure.dp_noise import _discrete_laplace as _discrete_laplace
from secure.dp_noise import _shape as _shape
from secure.dp_noise import _unit_interval as _unit_interval
from secure.dp_noise import discrete_gaussian as discrete_gaussian
from secure.dp_noise import entropy_source as entropy_source
from secure.dp_noise import gaussian_noise as gaussian_noise
from secure.dp_noise import noise_std as noise_std
from secure.dp_noise import sum_noise_std as sum_noise_std
from secure.dp_terms import ACCOUNTANT_NAME as ACCOUNTANT_NAME
from secure.dp_terms import NEIGHBOURING as NEIGHBOURING
from secure.dp_terms import REPLACE_ONE_SENSITIVITY as REPLACE_ONE_SENSITIVITY
from secure.dp_terms import SAMPLING as SAMPLING
from secure.dp_terms import _check_clip_norm as _check_clip_norm
from secure.dp_terms import _check_num_sites as _check_num_sites
from secure.dp_terms import _finite as _finite
from secure.dp_terms import _is_count as _is_count
from secure.dp_terms import _raise_if as _raise_if
from secure.dp_terms import _spec_problems as _spec_problems
from secure.dp_terms import accounting_noise_multiplier as accounting_noise_multiplier
from secure.dp_terms import check_dp_settings as check_dp_settings
from secure.dp_terms import describe as describe
from secure.dp_terms import quantization_term as quantization_term
from secure.dp_terms import sensitivity as sensitivity

logger = logging.getLogger(__name__)

_STATE_SCHEMA = 1
_MAX_SHRINK_STEPS = 16


# --------------------------------------------------------------------------- clipping


def global_l2_norm(arrays: Mapping[str, np.ndarray] | np.ndarray) -> float:
    """L2 norm of all values of all arrays together, as if flattened and concatenated.

    Computed in float64; values too large to square in float64 are rescaled first, so the
    result is ``inf`` only when a value is.

    Args:
        arrays: one array, or named arrays (e.g. a model update).

    Returns:
        The global L2 norm (``nan`` if any value is ``nan``).
    """
    values = list(arrays.values()) if isinstance(arrays, Mapping) else [arrays]
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in values]
    with np.errstate(over="ignore"):
        total = math.fsum(float(np.dot(f, f)) for f in flat)
    if math.isfinite(total):
        return math.sqrt(total)
    largest = max((float(np.max(np.abs(f))) for f in flat if f.size), default=0.0)
    if not math.isfinite(largest):
        return largest  # inf or nan: nothing to rescale
    scaled = math.fsum(float(np.dot(f / largest, f / largest)) for f in flat)
    return largest * math.sqrt(scaled)


@overload
def clip_update(delta: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]: ...


@overload
def clip_update(
    delta: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]: ...


def clip_update(
    delta: Mapping[str, np.ndarray] | np.ndarray, clip_norm: float
) -> tuple[dict[str, np.ndarray] | np.ndarray, float]:
    """Scale a whole update so that its global L2 norm is at most ``clip_norm``.

    All arrays are scaled by one common factor ``min(1, clip_norm / ||delta||)`` (FlatClip,
    arXiv:1710.06963; Flower's ``clip_inputs_inplace``), so the update's direction is kept. The
    factor is computed in float64 and, should rounding to the arrays' dtype leave the norm a
    hair above ``clip_norm``, shrunk until ``global_l2_norm(clipped) <= clip_norm`` holds
    exactly: the sensitivity bound is never exceeded.

    Args:
        delta: the site's model update, one array or named arrays of a floating dtype.
        clip_norm: the bound C (> 0, finite).

    Returns:
        ``(clipped, original_norm)``: new arrays of the same names, shapes and dtypes (float32
        stays float32), and the update's global L2 norm before clipping. The input is never
        modified, and the result never shares memory with it.

    Raises:
        ValueError: if ``clip_norm`` is not positive and finite, an array is not of a floating
            dtype, or the update holds ``nan``/``inf`` (it cannot be bounded; drop it).
    """
    _check_clip_norm(clip_norm)
    if isinstance(delta, Mapping):
        single = False
        arrays = {name: np.asarray(value) for name, value in delta.items()}
    else:
        single = True
        arrays = {"": np.asarray(delta)}
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            where = "the update" if single else f"array {name!r}"
            raise ValueError(
                f"{where} has dtype {array.dtype}; clip_update needs floating-point arrays "
                "(cast the update to float32 or float64 first)"
            )
    norm = global_l2_norm(arrays)
    if not math.isfinite(norm):
        raise ValueError(
            f"the update's L2 norm is {norm}: it holds nan or inf values and cannot be clipped "
            "to a bounded norm; discard this site's update for the round"
        )
    if norm <= clip_norm:
        clipped = {name: array.copy() for name, array in arrays.items()}
    else:
        clipped = _scale_within(arrays, clip_norm, norm)
    return (clipped[""] if single else clipped), norm


def _scale_within(
    arrays: Mapping[str, np.ndarray], clip_norm: float, norm: float
) -> dict[str, np.ndarray]:
    """Scale ``arrays`` by about ``clip_norm / norm``, shrinking until the result's norm fits."""
    eps = max((float(np.finfo(a.dtype).eps) for a in arrays.values()), default=0.0)
    factor = clip_norm / norm
    after = norm
    for _ in range(_MAX_SHRINK_STEPS):
        scaled = {
            name: (a.astype(np.float64) * factor).astype(a.dtype) for name, a in arrays.items()
        }
        after = global_l2_norm(scaled)
        if after <= clip_norm:
            return scaled
        factor *= (clip_norm / after) * (1.0 - 4.0 * eps)
    raise ArithmeticError(  # pragma: no cover - rounding cannot keep the norm above C this long
        f"could not scale the update to L2 norm <= {clip_norm} (still {after})"
    )


# --------------------------------------------------------------------------- accounting


class DpAccountant:
    """Running (epsilon, delta) of a DP-FedAvg run, one :meth:`step` per released round.

    Wraps Flower's ``RdpAccountant`` (``flwr.serverapp``) configured with:

    * ``SamplingMethod.WITHOUT_REPLACEMENT``: fedcore selects a fixed number of sites per round
      uniformly without replacement, so the subsampled-Gaussian bound for that scheme applies
      (amplification assumes which sites were selected stays hidden from whoever sees the
      released models);
    * ``NeighboringRelation.REPLACE_ONE``: neighbouring consortia differ in one site's whole
      data. Membership of a cross-silo consortium is public (its size is known, certificates
      are issued per site); what must be hidden is a site's contribution, which replace-one
      protects. It is also the only relation under which fixed-size sampling without
      replacement is analysed (Flower and dp-accounting refuse other pairings).

    The accountant is given ``z C / (2 S)`` (:func:`accounting_noise_multiplier`), the sum's
    noise in units of its replace-one sensitivity 2S, with ``S = C + quantization`` the bound
    on one site's update as the mode sends it (:func:`sensitivity`): ``z / 2`` where updates
    travel unrounded.

    Epsilon is recomputed from a ledger ``{sample_size: rounds}`` composed in a fixed order
    with Flower's ``compose(event, count)``, so a restored accountant reports bit-for-bit the
    same epsilon, and resuming costs one RDP evaluation per distinct sample size rather than
    one per round (each costs up to a second or two with sampling, none without).

    Args:
        spec: the scenario's DP settings (noise multiplier, clip norm, delta).
        population_size: number of sites that may be selected each round.
        orders: RDP orders to optimise over; default dp-accounting's (Flower's default).
        quantization: the mode's :func:`quantization_term` (default 0: no rounding).

    Raises:
        ValueError: if the settings cannot give a guarantee (:func:`check_dp_settings`).
    """

    def __init__(
        self,
        spec: DpSpec,
        population_size: int,
        *,
        orders: Sequence[float] | None = None,
        quantization: float = 0.0,
    ) -> None:
        check_dp_settings(spec, population_size=population_size)
        self._quantization = float(quantization)
        sensitivity(spec, self._quantization)  # refuses a negative or non-finite term
        self._spec = spec
        self._population = int(population_size)
        self._orders = None if orders is None else tuple(float(o) for o in orders)
        try:
            self._config = PrivacyConfig(
                target_delta=float(spec.delta),
                population_size=self._population,
                neighboring_relation=NEIGHBOURING,
                sampling_method=SAMPLING,
            )
            self._new_backend()  # validates orders early
        except ValueError as exc:
            raise ValueError(f"Flower's RdpAccountant refused the settings: {exc}") from exc
        self._ledger: dict[int, int] = {}
        self._epsilon = 0.0

    # ------------------------------------------------------------------ queries

    @property
    def spec(self) -> DpSpec:
        """The DP settings this accountant composes."""
        return self._spec

    @property
    def quantization(self) -> float:
        """The quantization term added to ``clip_norm`` in the sensitivity."""
        return self._quantization

    @property
    def population_size(self) -> int:
        """Number of sites that may be selected each round."""
        return self._population

    @property
    def rounds(self) -> int:
        """Rounds composed so far."""
        return sum(self._ledger.values())

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at ``spec.delta`` (0.0 before the first round)."""
        return self._epsilon

    @property
    def delta(self) -> float:
        """The delta epsilon is reported at (``spec.delta``)."""
        return float(self._spec.delta)

    def summary(self) -> dict[str, float | int | str]:
        """The run's privacy figures for logs and reports (no secrets)."""
        return {
            "epsilon": self._epsilon,
            "delta": self.delta,
            "noise_multiplier": float(self._spec.noise_multiplier),
            "clip_norm": float(self._spec.clip_norm),
            "rounds": self.rounds,
            "accountant": ACCOUNTANT_NAME,
            "sampling": f"{SAMPLING.value} (fixed-size) of {self._population} sites",
            "neighbouring": NEIGHBOURING.value,
            "population_size": self._population,
            "sensitivity": sensitivity(self._spec, self._quantization),
            "quantization_term": self._quantization,
            "accounting_noise_multiplier": accounting_noise_multiplier(
                self._spec, self._quantization
            ),
        }

    def __repr__(self) -> str:
        return (
            f"DpAccountant(epsilon={self._epsilon:.4g}, delta={self.delta:g}, "
            f"rounds={self.rounds}, population_size={self._population}, "
            f"noise_multiplier={self._spec.noise_multiplier:g})"
        )

    # ------------------------------------------------------------------ composition

    def step(self, sample_size: int) -> float:
        """Compose one released round and return the running epsilon at ``spec.delta``.

        Call it once per round whose noised aggregate is released, with the number of sites
        *selected* (the without-replacement sample), even if some did not reply: the noise was
        calibrated and the sample drawn for that many.

        Args:
            sample_size: sites selected this round (1 <= sample_size <= population_size).

        Returns:
            Epsilon after this round.

        Raises:
            ValueError: on an invalid sample size, or if Flower's accountant refuses the event;
                the accountant is then unchanged.
        """
        check_dp_settings(self._spec, population_size=self._population, sample_size=sample_size)
        ledger = dict(self._ledger)
        ledger[int(sample_size)] = ledger.get(int(sample_size), 0) + 1
        self._epsilon = self._compute(ledger)
        self._ledger = ledger
        return self._epsilon

    def _new_backend(self) -> RdpAccountant:
        return RdpAccountant(self._config, orders=self._orders)

    def _compute(self, ledger: Mapping[int, int]) -> float:
        backend = self._new_backend()
        z = accounting_noise_multiplier(self._spec, self._quantization)
        try:
            for sample_size in sorted(ledger):
                event = GaussianPrivacyEvent(
                    noise_multiplier=z,
                    sample_size=sample_size,
                    population_size=self._population,
                )
                backend.compose(event, ledger[sample_size])
            return backend.get_epsilon(self.delta)
        except ValueError as exc:
            raise ValueError(
                f"Flower's RdpAccountant refused the round ({self._population} sites, "
                f"rounds by sample size {dict(sorted(ledger.items()))}): {exc}"
            ) from exc

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state for the coordinator's checkpoint (see :meth:`from_state`)."""
        return {
            "schema": _STATE_SCHEMA,
            "accountant": ACCOUNTANT_NAME,
            "sampling": SAMPLING.value,
            "neighbouring": NEIGHBOURING.value,
            "population_size": self._population,
            "noise_multiplier": float(self._spec.noise_multiplier),
            "clip_norm": float(self._spec.clip_norm),
            "quantization_term": self._quantization,
            "delta": self.delta,
            "orders": None if self._orders is None else list(self._orders),
            "rounds_by_sample_size": [[m, n] for m, n in sorted(self._ledger.items())],
            "rounds": self.rounds,
            "epsilon": self._epsilon,
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        spec: DpSpec | None = None,
        population_size: int | None = None,
        quantization: float | None = None,
    ) -> DpAccountant:
        """Rebuild an accountant from :meth:`state_dict`, reporting exactly the same epsilon.

        The state records the DP settings it was made with. Pass the scenario's current
        ``spec`` (and ``population_size``) to refuse resuming under different settings, which
        would make the reported guarantee describe a mechanism that did not run.

        Args:
            state: what :meth:`state_dict` returned (e.g. after a JSON round trip).
            spec: if given, must equal the settings the state was made with.
            population_size: if given, must equal the state's.
            quantization: if given, the mode's quantization term; must equal the state's
                when the state records one (a state from before the term was recorded is
                recomputed with it, so its epsilon becomes the true one).

        Returns:
            The accountant, ready to :meth:`step` on.

        Raises:
            ValueError: if the state is malformed or was made with other settings.
        """
        if not isinstance(state, Mapping) or state.get("schema") != _STATE_SCHEMA:
            found = state.get("schema") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"DP accountant state has schema {found!r}; expected {_STATE_SCHEMA} "
                "(a DpAccountant.state_dict() of this fedcore version)"
            )
        expected: dict[str, object] = {
            "accountant": ACCOUNTANT_NAME,
            "sampling": SAMPLING.value,
            "neighbouring": NEIGHBOURING.value,
        }
        if spec is not None:
            expected["noise_multiplier"] = float(spec.noise_multiplier)
            expected["clip_norm"] = float(spec.clip_norm)
            expected["delta"] = float(spec.delta)
        if population_size is not None:
            expected["population_size"] = population_size
        if quantization is not None and "quantization_term" in state:
            expected["quantization_term"] = float(quantization)
        mismatched = [
            f"{key}: checkpoint {state.get(key)!r}, now {value!r}"
            for key, value in expected.items()
            if state.get(key) != value
        ]
        if mismatched:
            raise ValueError(
                "the checkpoint's privacy accounting was made with other DP settings ("
                + "; ".join(mismatched)
                + "); resume with the original privacy.dp settings or start a new run"
            )
        try:
            stored_spec = DpSpec(
                noise_multiplier=state["noise_multiplier"],
                clip_norm=state["clip_norm"],
                delta=state["delta"],
            )
            population = state["population_size"]
            orders = state["orders"]
            term = float(
                quantization if quantization is not None else state.get("quantization_term", 0.0)
            )
            ledger = {int(m): int(n) for m, n in state["rounds_by_sample_size"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"DP accountant state is malformed: {exc}") from exc
        counted = sum(ledger.values())
        if any(n < 1 for n in ledger.values()) or state.get("rounds", counted) != counted:
            raise ValueError(
                f"DP accountant state has rounds_by_sample_size {ledger} and rounds "
                f"{state.get('rounds')!r}; expected positive counts that add up to rounds"
            )
        accountant = cls(spec or stored_spec, population, orders=orders, quantization=term)
        for sample_size in ledger:
            check_dp_settings(accountant.spec, population_size=population, sample_size=sample_size)
        accountant._ledger = ledger
        accountant._epsilon = accountant._compute(ledger) if ledger else 0.0
        stored = state.get("epsilon")
        if isinstance(stored, float) and stored != accountant._epsilon:
            logger.warning(
                "DP accountant: checkpoint recorded epsilon %.6g, recomputed %.6g "
                "(the accounting library changed?); using the recomputed value",
                stored,
                accountant._epsilon,
            )
        return accountant
