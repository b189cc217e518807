"""The protection extension point: how a privacy mode trains a round and holds the global model.

A protection is to fedcore's round driver what a ``Strategy`` is to Flower's: the driver
waits for nodes, asks for telemetry, schedules, evaluates and checkpoints; the protection
sends the train instructions of one round through the exchange it is given, checks the
replies, combines the accepted updates and keeps whatever stands for the global model
(clear arrays, or an encrypted transcript it cannot read). Differential privacy wraps an
inner protection (:class:`coordinator.protection.dp.DifferentialPrivacy`), as Flower's DP
strategies wrap an inner strategy.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from coordinator.aggregation import weighted_mean
from coordinator.robust import capped_examples
from fedcore import records as R
from scheduling.base import Candidate
from scheduling.fednova import relative_fednova_weights

log = logging.getLogger(__name__)


class ExchangeResult(NamedTuple):
    """Replies of one exchange: by node, errors by node, bytes sent down, bytes received up."""

    replies: list[tuple[int, Message]]
    errors: dict[int, str]
    bytes_down: int
    bytes_up: int


class Exchange(Protocol):
    """Sends one message per node and waits for the replies (the driver's ``exchange``)."""

    def __call__(
        self, targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> ExchangeResult: ...


@dataclass(frozen=True)
class TrainRound:
    """What a protection needs to train one round; built by the driver.

    Args:
        round: The round number.
        chosen: The sites the scheduler chose.
        config_for: The round config for one site and its aggregation weight
            (``None``: the config every site shares, without a site's share of work).
        exchange: Sends instructions and collects replies.
        verify: The reason to refuse a train reply's signature, or ``None`` when it is
            authentic (or the coordinator checks none).
        epochs_of: Local epochs a site runs this round.
        grid: The grid, for protocols that run their own exchanges (SecAgg+).
        timeout: Seconds to wait for a reply.
    """

    round: int
    chosen: Sequence[Candidate]
    config_for: Callable[[Candidate | None, float], R.RoundConfig]
    exchange: Exchange
    verify: Callable[[R.TrainReply, RecordDict], str | None]
    epochs_of: Callable[[str], int]
    grid: Grid
    timeout: float


@dataclass(frozen=True)
class SiteReport:
    """A contributing site's own figures (what the scheduler learns from)."""

    seconds: float
    loss: float


@dataclass(frozen=True)
class Collected:
    """One round's train replies, checked, before aggregation.

    ``sites`` may enter the aggregate; ``rejected`` holds every site left out with all its
    reasons. ``accepted`` and ``weights`` are the protection's own (clear models or
    ciphertexts and their weights; SecAgg+ has its mean in ``pending``).
    """

    chosen: int
    sites: list[str]
    rejected: dict[str, list[str]]
    loss: float
    bytes_down: int
    bytes_up: int
    reports: dict[str, SiteReport] = field(default_factory=dict)
    accepted: list[tuple[str, R.TrainReply]] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    pending: dict[str, np.ndarray] | None = None

    def skipped(self) -> Collected:
        """The same round with nothing to aggregate (``scheduler.short_round: skip``)."""
        return replace(self, sites=[], loss=float("nan"), reports={}, accepted=[], pending=None)


class Noise(Protocol):
    """Differential-privacy noise, applied where the protection's aggregate lives."""

    def on_sum(self, length: int) -> np.ndarray:
        """Noise for the sum of ``length`` values (every weight is 1 under DP)."""
        ...

    def on_mean(self, mean: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """``mean`` of ``count`` clipped updates, noised."""
        ...


# --------------------------------------------------------------------------- weights


class WeightPolicy(ABC):
    """How much each chosen site's update counts in the aggregate."""

    @abstractmethod
    def weights(
        self, chosen: Sequence[Candidate], epochs_of: Callable[[str], int]
    ) -> dict[str, float]:
        """Aggregation weight per chosen site."""

    @abstractmethod
    def max_site_weight(self, chosen: Sequence[Candidate]) -> float | None:
        """The largest weight a site may report itself (SecAgg+); ``None``: keep the spec's."""


class FedNovaWeights(WeightPolicy):
    """Examples over local epochs, relative to the largest (FedNova, Wang et al. 2020).

    With equal epochs these are plain example weights. Relative to the largest, so the
    largest update uses the whole CKKS packing range (the aggregate is divided by the sum
    of the weights, so the scale cancels). A SecAgg+ site reports its examples.
    """

    def weights(
        self, chosen: Sequence[Candidate], epochs_of: Callable[[str], int]
    ) -> dict[str, float]:
        rel = relative_fednova_weights(
            [c.num_train_examples for c in chosen], [epochs_of(c.site_id) for c in chosen]
        )
        return {c.site_id: w for c, w in zip(chosen, rel, strict=True)}

    def max_site_weight(self, chosen: Sequence[Candidate]) -> float | None:
        largest = max((c.num_train_examples for c in chosen), default=0)
        return float(largest) if largest > 0 else None


class CappedWeights(WeightPolicy):
    """FedNova weights of example counts capped at ``cap`` x the round's median.

    A site's examples come from its own telemetry; alone, they let one site that claims
    10^12 examples replace the global model with its own. Each count is first cut to at
    most ``cap`` x the median count of the round's chosen sites
    (:func:`coordinator.robust.capped_examples`), then divided by the local epochs the
    scheduler gave the site (FedNova): the epochs are the coordinator's own decision, the
    counts are what a site could inflate. A SecAgg+ site reports at most the capped
    largest count.

    Args:
        cap: The multiple of the median a site may count (``>= 1``; default 4).
    """

    def __init__(self, cap: float = 4.0) -> None:
        if not cap >= 1.0:
            raise ValueError(f"weight cap is {cap}; expected a number >= 1")
        self.cap = float(cap)

    def __repr__(self) -> str:
        return f"CappedWeights(cap={self.cap})"

    def capped(self, chosen: Sequence[Candidate]) -> list[float]:
        """Each chosen site's example count, capped."""
        return capped_examples([c.num_train_examples for c in chosen], self.cap)

    def weights(
        self, chosen: Sequence[Candidate], epochs_of: Callable[[str], int]
    ) -> dict[str, float]:
        rel = relative_fednova_weights(self.capped(chosen), [epochs_of(c.site_id) for c in chosen])
        return {c.site_id: w for c, w in zip(chosen, rel, strict=True)}

    def max_site_weight(self, chosen: Sequence[Candidate]) -> float | None:
        largest = max(self.capped(chosen), default=0.0)
        return float(largest) if largest > 0 else None


class UniformWeights(WeightPolicy):
    """Every site counts once (differential privacy bounds each site's influence)."""

    def weights(
        self, chosen: Sequence[Candidate], epochs_of: Callable[[str], int]
    ) -> dict[str, float]:
        return {c.site_id: 1.0 for c in chosen}

    def max_site_weight(self, chosen: Sequence[Candidate]) -> float | None:
        return 1.0


# --------------------------------------------------------------------------- the base


class Protection(ABC):
    """A privacy mode at the coordinator: trains a round, holds what stands for the model.

    Subclasses set :attr:`name` and implement :meth:`collect`, :meth:`aggregate` and
    :meth:`instruction`; the rest has defaults.
    """

    name: str = ""
    can_skip_round: bool = True
    """Whether a round with too few valid updates may keep the model (``short_round: skip``)."""
    evaluation_rides_on_train: bool = True
    """Whether the train batch can carry the evaluation of the incoming model and the next
    round's telemetry (:mod:`fedcore.carry`): true when :meth:`collect` sends its train
    instructions through ``TrainRound.exchange`` as one batch."""

    site_clip: float | None = None
    """The L2 bound every site clips its update to (``aggregation.site_clip``); it travels
    in the round config of every instruction (the sites check what they apply against it)."""

    def __init__(self) -> None:
        self.weights: WeightPolicy = FedNovaWeights()

    def site_bounds(self, cfg: R.RoundConfig) -> R.RoundConfig:
        """``cfg`` with this protection's :attr:`site_clip` (unchanged when there is none)."""
        if self.site_clip is None:
            return cfg
        return replace(cfg, site_clip=float(self.site_clip))

    # -- the round

    @abstractmethod
    def collect(self, rnd: TrainRound) -> Collected:
        """Send this round's train instructions and check the replies."""

    @abstractmethod
    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        """Combine the accepted updates (with DP ``noise``, if any) into the new global state."""

    @abstractmethod
    def instruction(self, cfg: R.RoundConfig, site: Candidate) -> RecordDict:
        """Content of a train, evaluate or export instruction for ``site``."""

    def round_figures(self) -> dict[str, Any]:
        """Figures of the last aggregated round for its record (e.g. DP's ``epsilon``,
        robust aggregation's ``robust``)."""
        return {}

    # -- what the sites report

    def observe_telemetry(self, telemetry: R.Telemetry) -> None:
        """Note what a site's telemetry says about its copy of the model (default: nothing)."""
        return None

    def check_evaluations(self, round_: int, replies: Sequence[R.EvalReply]) -> list[str]:
        """Problems with the evaluated models (default: none)."""
        return []

    # -- the model and the record

    @property
    @abstractmethod
    def global_arrays(self) -> dict[str, np.ndarray]:
        """The arrays this protection checkpoints (the global model, or the public base)."""

    @property
    def holds_global_model(self) -> bool:
        """Whether :attr:`global_arrays` is the current global model in clear."""
        return True

    def summary(self) -> dict[str, Any]:
        """What protected this run's updates (parameters and running figures, never keys)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps beyond the arrays (JSON-serializable)."""
        return {}

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore from a checkpoint's extra state and arrays."""


class WrappedProtection(Protection):
    """A protection that wraps another, as Flower's DP strategies wrap a strategy.

    Differential privacy and robust aggregation change how a round is combined; everything
    they leave alone passes through to ``inner``, including the weight policy (setting
    :attr:`weights` here sets the inner protection's). Subclasses override what they change.

    Args:
        inner: The protection wrapped.
    """

    def __init__(self, inner: Protection) -> None:
        # not Protection.__init__: the weight policy stays the inner protection's
        self.inner = inner
        self.name = inner.name
        self.can_skip_round = inner.can_skip_round
        self.evaluation_rides_on_train = inner.evaluation_rides_on_train

    @property
    def weights(self) -> WeightPolicy:
        """The inner protection's weight policy."""
        return self.inner.weights

    @weights.setter
    def weights(self, policy: WeightPolicy) -> None:
        self.inner.weights = policy

    def collect(self, rnd: TrainRound) -> Collected:
        return self.inner.collect(rnd)

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        self.inner.aggregate(round_, collected, noise)

    def round_figures(self) -> dict[str, Any]:
        return self.inner.round_figures()

    def instruction(self, cfg: R.RoundConfig, site: Candidate) -> RecordDict:
        return self.inner.instruction(cfg, site)

    def observe_telemetry(self, telemetry: R.Telemetry) -> None:
        self.inner.observe_telemetry(telemetry)

    def check_evaluations(self, round_: int, replies: Sequence[R.EvalReply]) -> list[str]:
        return self.inner.check_evaluations(round_, replies)

    @property
    def global_arrays(self) -> dict[str, np.ndarray]:
        return self.inner.global_arrays

    @property
    def holds_global_model(self) -> bool:
        return self.inner.holds_global_model

    def summary(self) -> dict[str, Any]:
        return self.inner.summary()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.inner.load_state_dict(state, arrays)


class ClearModelProtection(Protection):
    """A protection whose coordinator holds the global model in clear (plaintext, SecAgg+).

    Args:
        initial: The global model before round 1 (copied).
    """

    def __init__(self, initial: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self._arrays = {k: np.array(v, copy=True) for k, v in initial.items()}

    @property
    def global_arrays(self) -> dict[str, np.ndarray]:
        return self._arrays

    def instruction(self, cfg: R.RoundConfig, site: Candidate) -> RecordDict:
        return R.train_instruction(self._arrays, self.site_bounds(cfg))

    def set_global_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the global model (a wrapper's aggregate; kept as given, not copied)."""
        if sorted(arrays) != sorted(self._arrays):
            raise ValueError(
                f"new global model has arrays {sorted(arrays)}; expected {sorted(self._arrays)}"
            )
        self._arrays = dict(arrays)

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}


def send_train(
    protection: Protection,
    rnd: TrainRound,
    check: Callable[[R.TrainReply], list[str]],
) -> Collected:
    """Send every chosen site its train instruction and keep the replies that pass all checks.

    ``check`` gives the mode's reasons to refuse a parsed reply; the reply must also name
    the site it was sent to and carry that site's signature (when the coordinator has
    registered keys). Accepted replies are sorted by site.
    """
    weights = protection.weights.weights(rnd.chosen, rnd.epochs_of)
    by_node = {c.node_id: c for c in rnd.chosen}
    replies, errors, down, up = rnd.exchange(
        (
            (c.node_id, protection.instruction(rnd.config_for(c, weights[c.site_id]), c))
            for c in rnd.chosen
        ),
        R.TRAIN,
        rnd.round,
    )
    rejected: dict[str, list[str]] = {by_node[n].site_id: [e] for n, e in errors.items()}
    accepted: list[tuple[str, R.TrainReply]] = []
    for nid, rep in replies:
        target = by_node[nid]
        try:
            parsed = R.TrainReply.from_content(rep.content)
        except (ValueError, KeyError, TypeError) as exc:
            rejected[target.site_id] = [f"malformed reply: {exc}"]
            continue
        reasons = check(parsed)
        if parsed.site_id != target.site_id:
            reasons.append(f"reply names site {parsed.site_id!r}, sent to {target.site_id!r}")
        else:
            refusal = rnd.verify(parsed, rep.content)
            if refusal is not None:
                reasons.append(refusal)
        if reasons:
            rejected[target.site_id] = reasons
        else:
            accepted.append((target.site_id, parsed))
    for site, reasons in rejected.items():
        log.warning("round %d: left out %s: %s", rnd.round, site, "; ".join(reasons))
    accepted.sort(key=lambda x: x[0])
    return Collected(
        chosen=len(rnd.chosen),
        sites=[s for s, _ in accepted],
        rejected=rejected,
        loss=weighted_mean([(r.loss, r.num_examples) for _, r in accepted]),
        bytes_down=down,
        bytes_up=up,
        reports={s: SiteReport(r.seconds, r.loss) for s, r in accepted},
        accepted=accepted,
        weights=weights,
    )
