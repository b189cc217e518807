"""SecAgg+ (Bell et al., CCS 2020) rounds for fedcore's driver, on Flower's ``SecAggPlusWorkflow``."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, SimpleClientManager
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedcore.config import SecAggSpec
from secure.secagg_client import (
    carries_secagg_stage,
    fit_reply_content,
    is_legacy_fit,
    read_fit_instruction,
    secagg_mod,
)
from secure.secagg_guard import (
    SITE_TIMING,
    STAGES,
    Dropout,
    GuardedGrid,
    Ledger,
    SecAggError,
)

__all__ = [
    "MOD_RANGE",
    "SITE_TIMING",
    "STAGES",
    "Dropout",
    "SecAggError",
    "SecAggOutcome",
    "carries_secagg_stage",
    "effective_num_shares",
    "fit_reply_content",
    "is_legacy_fit",
    "read_fit_instruction",
    "run_secagg_round",
    "secagg_error_bound",
    "secagg_mod",
]

log = logging.getLogger(__name__)

MOD_RANGE = 2**32
"""Modulus of the masked sums (Flower's default ``modulus_range``)."""


# --------------------------------------------------------------------------- pure helpers


def effective_num_shares(spec: SecAggSpec, num_sites: int) -> int:
    """Shares each site's secrets are split into for ``num_sites`` selected sites.

    ``spec.num_shares`` counts the *other* sites that get a share; the site keeps
    one more. Flower needs the count odd (a symmetric neighbourhood) unless it
    equals the number of sites: given an even count it announces that count to
    the sites but builds neighbourhoods one larger, and every site fails for
    want of a share. So an even count is raised by one here; it never exceeds
    ``num_sites`` (then every site is every site's neighbour).

    Example: ``num_shares=3`` gives 4 -> 5 shares with 5 or more sites, and 4 with 4 sites.
    """
    k = spec.num_shares + 1
    if k >= num_sites:
        return num_sites
    return k + 1 if k % 2 == 0 else k


def secagg_error_bound(
    spec: SecAggSpec, num_examples: Sequence[int], *, dtype: np.dtype | type = np.float64
) -> float:
    """Largest error of a SecAgg+ mean versus the exact weighted mean, per value.

    Derived from Flower's code, with ``c = clipping_range``, ``Q = quantization_range``,
    ``m = max_weight``, ``n`` sites of weights ``w_i`` (``w_i <= m``, values ``|x| <= c``):

    * each site's weight is quantized to ``q_i = round(w_i * Q / m)`` (sum ``S = sum q_i``);
      the result is the exact mean under weights ``q_i``; versus weights ``w_i`` that
      moves it by at most ``n * c / S`` (each ``q_i`` is off by 1/2, values differ by
      at most ``2c``);
    * each weighted value ``x * q_i / Q`` is mapped to ``[0, Q]`` in steps of
      ``2c / Q`` and stochastically rounded: under 1 step, plus at most ``Q * 2**-22``
      steps of float32 rounding when the site's arrays are float32; dividing the sum
      of ``n`` such errors by ``S / Q`` gives ``2 n c (1 + Q * 2**-22) / S``;
    * casting the mean to ``dtype`` adds half an ulp at ``c``.

    Total: ``n * c * (3 + Q * 2**-21) / S + c * eps(dtype) / 2``. With ``c = 8`` and
    ``Q = 2**22`` this is ``40 n / S``, about ``40 n m / (Q W)`` for a total weight ``W``:
    keep ``max_weight`` near the largest weight (1 when every site weighs 1).

    Args:
        spec: The round's SecAgg+ settings.
        num_examples: The contributing sites' weights.
        dtype: The dtype the mean is returned in.

    Returns:
        The bound (``inf`` when every weight quantizes to zero).
    """
    c, q, m = spec.clipping_range, spec.quantization_range, spec.max_weight
    total = sum(round(w / m * q) for w in num_examples)
    if total <= 0:
        return float("inf")
    n = len(num_examples)
    eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0
    return n * c * (3 + q * 2.0**-21) / total + c * eps / 2


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class SecAggOutcome:
    """What one SecAgg+ round produced, and what it cost.

    Attributes:
        round: The round number.
        arrays: The weighted mean of the contributors' arrays (each in the dtype of
            the instruction array it replaces when that is floating, else float64).
        selected: The node ids the round was run over, in order.
        contributors: Node ids whose masked vectors are in the mean, in selection order.
        dropouts: Node id -> why and when it stopped. A node that stopped in the
            unmask stage is also a contributor (its vector was already in the sum).
        num_examples: Contributor -> its weight (``fitres.num_examples``, sent in clear).
        metrics: Contributor -> its legacy fit metrics (sent in clear).
        bytes_down_by_node: Node id -> bytes the coordinator sent it.
        bytes_up_by_node: Node id -> bytes it sent the coordinator.
        stage_seconds: Stage -> wall seconds at the coordinator.
        coordinator_seconds: Stage -> the coordinator's own compute, less waiting on sites.
        site_seconds: Node id -> stage -> the protocol seconds the site reported.
        num_shares: Shares each secret was split into (see :func:`effective_num_shares`).
        threshold: Shares needed to rebuild a secret.
        error_bound: :func:`secagg_error_bound` for the contributors' weights.
    """

    round: int
    arrays: list[np.ndarray]
    selected: tuple[int, ...]
    contributors: tuple[int, ...]
    dropouts: dict[int, Dropout]
    num_examples: dict[int, int]
    metrics: dict[int, dict[str, Scalar]]
    bytes_down_by_node: dict[int, int]
    bytes_up_by_node: dict[int, int]
    stage_seconds: dict[str, float]
    coordinator_seconds: dict[str, float]
    site_seconds: dict[int, dict[str, float]]
    num_shares: int
    threshold: int
    error_bound: float

    @property
    def dropped(self) -> dict[int, str]:
        """Selected node id whose vector is not in the mean -> ``"stage: reason"``."""
        out = {}
        for n in self.selected:
            if n not in self.contributors:
                d = self.dropouts.get(n)
                out[n] = f"{d.stage}: {d.reason}" if d else "not in the aggregate"
        return out

    @property
    def bytes_down(self) -> int:
        """Bytes the coordinator sent, all sites together."""
        return sum(self.bytes_down_by_node.values())

    @property
    def bytes_up(self) -> int:
        """Bytes the sites sent the coordinator, all together."""
        return sum(self.bytes_up_by_node.values())

    @property
    def mean_loss(self) -> float:
        """Contributors' ``loss`` metric weighted by num_examples (NaN when none report one)."""
        pairs = [
            (float(m["loss"]), self.num_examples[n])
            for n, m in self.metrics.items()
            if isinstance(m.get("loss"), (int, float)) and not isinstance(m.get("loss"), bool)
        ]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else float("nan")


# --------------------------------------------------------------------------- legacy adapters


class _FixedSelection(Strategy):
    """A legacy strategy that fits exactly the given proxies and keeps what the workflow aggregated."""

    def __init__(self, proxies: Sequence[ClientProxy], fitins: FitIns) -> None:
        self.proxies = list(proxies)
        self.fitins = fitins
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def __repr__(self) -> str:
        return f"_FixedSelection(nodes={[p.cid for p in self.proxies]})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, self.fitins) for proxy in self.proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # every FitRes carries the one aggregate the workflow unmasked
        self.results = list(results)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def _forget_early_dropouts(state: WorkflowState) -> None:
    """Make sites lost in setup/share-keys count as never selected (Flower 1.42 fault).

    Their neighbours never received their key shares, yet Flower's unmask stage
    asks for them and needs ``threshold`` of them; pairwise masks with them were
    never added, so they must also leave every neighbourhood.
    """
    live = set(state.active_node_ids)
    state.sampled_node_ids = live
    state.nid_to_neighbours = {
        nid: nbrs & live for nid, nbrs in state.nid_to_neighbours.items() if nid in live
    }


def _diagnose(stage: str, state: WorkflowState) -> str:
    """Which sites the workflow found short of live neighbours or of key shares."""
    what = "key shares returned" if stage == Stage.UNMASK else "live sites in its neighbourhood"
    short = []
    for nid in sorted(state.sampled_node_ids):
        have = len(state.nid_to_neighbours.get(nid, set()) & state.active_node_ids)
        if have < state.threshold:
            short.append(f"node {nid} has {have}")
    found = ", ".join(short) if short else "(halted before checking)"
    return f"{found} {what}; each needs reconstruction_threshold = {state.threshold}"


class _Workflow(SecAggPlusWorkflow):
    """Flower's workflow with per-stage timing, the record of a halt, and the early-dropout fix."""

    def __init__(self, num_shares: int, reconstruction_threshold: int, **kwargs: Any) -> None:
        super().__init__(num_shares, reconstruction_threshold, **kwargs)
        self.stage_seconds: dict[str, float] = {}
        self.current = ""
        self.halted: tuple[str, str] | None = None

    def _timed(
        self,
        stage: str,
        step: Callable[[Grid, LegacyContext, WorkflowState], bool],
        grid: Grid,
        context: LegacyContext,
        state: WorkflowState,
    ) -> bool:
        self.current = stage
        t0 = time.perf_counter()
        try:
            ok = step(grid, context, state)
        finally:
            self.stage_seconds[stage] = time.perf_counter() - t0
        if not ok:
            self.halted = (stage, _diagnose(stage, state))
        return ok

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # noqa: D102
        return self._timed(Stage.SETUP, super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # noqa: D102
        ok = self._timed(Stage.SHARE_KEYS, super().share_keys_stage, grid, context, state)
        if ok:
            _forget_early_dropouts(state)
        return ok

    def collect_masked_vectors_stage(  # noqa: D102
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        step = super().collect_masked_vectors_stage
        return self._timed(Stage.COLLECT_MASKED_VECTORS, step, grid, context, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # noqa: D102
        return self._timed(Stage.UNMASK, super().unmask_stage, grid, context, state)


@contextmanager
def _own_python_random() -> Iterator[None]:
    """Shuffle neighbours with fresh OS entropy and leave the caller's ``random`` state as it was."""
    saved = random.getstate()
    random.seed(os.urandom(32))
    try:
        yield
    finally:
        random.setstate(saved)


def _task_run_id() -> int:
    try:
        run_id = TaskIdentity.run_id
        _ = TaskIdentity.node_id, TaskIdentity.task_id
    except RuntimeError as exc:
        raise RuntimeError(
            f"run_secagg_round creates Flower messages, which needs the task identity that a "
            f"ServerApp runtime sets ({exc}); call it from inside a ServerApp main "
            "(fedcore's engines and Flower's runtime both set it)"
        ) from None
    return run_id


def _check_inputs(
    node_ids: Sequence[int], arrays: Sequence[np.ndarray], spec: SecAggSpec, timeout: float
) -> None:
    if len(set(node_ids)) != len(node_ids):
        raise ValueError(f"node_ids must be distinct, got {list(node_ids)}")
    if not arrays:
        raise ValueError("arrays is empty: SecAgg+ needs at least one model array to average")
    odd = [i for i, a in enumerate(arrays) if np.asarray(a).dtype.kind not in "fiu"]
    if odd:
        raise ValueError(f"arrays must be numeric; arrays {odd} are not")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    n = len(node_ids)
    if n <= spec.reconstruction_threshold:
        raise SecAggError(
            f"SecAgg+ needs more selected sites than reconstruction_threshold "
            f"({spec.reconstruction_threshold}); got {n}. Select at least "
            f"{spec.reconstruction_threshold + 1} sites, or lower "
            "privacy.secagg.reconstruction_threshold"
        )
    limit = MOD_RANGE // n - 1
    if spec.quantization_range > limit:
        raise ValueError(
            f"quantization_range {spec.quantization_range} is too large for {n} sites: the "
            f"masked sum of {n} values in [0, quantization_range] must stay below 2**32. "
            f"Set privacy.secagg.quantization_range to at most {limit}"
        )


def run_secagg_round(
    grid: Grid,
    node_ids: Sequence[int],
    fit_config: Mapping[str, Scalar],
    arrays: Sequence[np.ndarray],
    spec: SecAggSpec,
    round_: int,
    timeout: float,
) -> SecAggOutcome:
    """Run one SecAgg+ round over exactly ``node_ids`` and return the weighted mean.

    Each selected site receives a legacy fit instruction (``arrays`` and
    ``fit_config``), trains, and answers with a masked vector; the coordinator
    learns only the sum. Sites that fail, time out, or send a reply that fails
    its check drop out; the protocol rebuilds their masks from the others' key
    shares, so the mean is that of the sites that contributed.

    Flower's workflow speaks only the legacy strategy API, so each round gets a
    fresh legacy context: a strategy that fits exactly these sites, their
    proxies, a client manager. The workflow talks through a
    :class:`~secure.secagg_guard.GuardedGrid`, so malformed replies become
    dropouts instead of crashes or a corrupt sum. Sites run :func:`secagg_mod`.

    Must run where Flower's task identity is set (inside a ServerApp main). It
    leaves no Flower state behind: the legacy context, strategy and client
    manager are built for this round only, and Python's ``random`` state (which
    the workflow uses to shuffle neighbours) is restored afterwards.

    Args:
        grid: The grid (fedcore's ``InProcessGrid`` or Flower's deployment grid).
        node_ids: The sites chosen by the scheduler; only these receive messages.
        fit_config: Scalar config sent to every site in ``fitins.config``.
        arrays: The global model arrays, in the order sites read them back.
        spec: num_shares, reconstruction_threshold, clipping_range,
            quantization_range, max_weight.
        round_: The round number (the messages' group id).
        timeout: Seconds to wait for replies in each of the four stages.

    Returns:
        The mean, who contributed and who dropped (and why), bytes and seconds.

    Raises:
        SecAggError: when too few sites are selected or remain to rebuild the
            masks, or the key shares disagree beyond repair; the message names
            the stage and each dropped site's reason.
        ValueError: for bad arguments (duplicate node ids, no arrays, a
            quantization range too large for this many sites).
    """
    nodes = [int(n) for n in node_ids]
    _check_inputs(nodes, arrays, spec, timeout)
    run_id = _task_run_id()
    num_shares = effective_num_shares(spec, len(nodes))
    guarded = GuardedGrid(
        inner=grid,
        allowed=frozenset(nodes),
        shapes=[(1,), *(np.shape(a) for a in arrays)],
        max_weight=spec.max_weight,
        quantization_range=spec.quantization_range,
        mod_range=MOD_RANGE,
        num_shares=num_shares,
        threshold=spec.reconstruction_threshold,
        ledger=Ledger(),
    )
    parameters = ndarrays_to_parameters([np.asarray(a) for a in arrays])
    strategy = _FixedSelection(
        [GridClientProxy(node_id=n, grid=guarded, run_id=run_id) for n in nodes],
        FitIns(parameters=parameters, config=dict(fit_config)),
    )
    manager = SimpleClientManager()
    for proxy in strategy.proxies:
        manager.register(proxy)
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: round_}),
            MAIN_PARAMS_RECORD: compat.parameters_to_arrayrecord(parameters, keep_input=True),
        }
    )
    context = LegacyContext(
        Context(
            run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=state, run_config={}
        ),
        strategy=strategy,
        client_manager=manager,
    )
    workflow = _Workflow(
        num_shares,
        spec.reconstruction_threshold,
        max_weight=spec.max_weight,
        clipping_range=spec.clipping_range,
        quantization_range=spec.quantization_range,
        modulus_range=MOD_RANGE,
        timeout=timeout,
    )
    ledger = guarded.ledger
    t0 = time.perf_counter()
    try:
        with _own_python_random():
            workflow(guarded, context)
    except SecAggError as exc:
        raise SecAggError(
            f"SecAgg+ round {round_} stopped in stage {workflow.current!r}: {exc}"
            f"{_dropout_lines(ledger)}"
        ) from exc
    except Exception as exc:
        raise SecAggError(
            f"SecAgg+ round {round_} failed in stage {workflow.current!r}: "
            f"{type(exc).__name__}: {exc}{_dropout_lines(ledger)}"
        ) from exc
    if strategy.results is None:
        stage, why = workflow.halted or (workflow.current, "unknown")
        raise SecAggError(
            f"SecAgg+ round {round_} halted in stage {stage!r}: too few sites remain to rebuild "
            f"the masks: {why}. {len(nodes)} sites selected, {num_shares} shares per "
            f"secret.{_dropout_lines(ledger)}\nTo fix: look at why those sites dropped, select "
            "more sites, or raise privacy.secagg.num_shares relative to reconstruction_threshold"
        )
    return _outcome(round_, nodes, arrays, spec, strategy.results, workflow, ledger, num_shares, t0)


def _dropout_lines(ledger: Ledger) -> str:
    if not ledger.dropouts:
        return ""
    lines = [f"\n  node {d.node_id} ({d.stage}): {d.reason}" for d in ledger.dropouts.values()]
    return "\nDropped:" + "".join(lines)


def _outcome(
    round_: int,
    nodes: list[int],
    arrays: Sequence[np.ndarray],
    spec: SecAggSpec,
    results: list[tuple[ClientProxy, FitRes]],
    workflow: _Workflow,
    ledger: Ledger,
    num_shares: int,
    t0: float,
) -> SecAggOutcome:
    mean: NDArrays = parameters_to_ndarrays(results[0][1].parameters)
    out = []
    for ref, agg in zip(arrays, mean, strict=True):
        ref_dtype = np.asarray(ref).dtype
        out.append(agg.astype(ref_dtype) if ref_dtype.kind == "f" else agg)
    fitres = {int(proxy.cid): res for proxy, res in results}
    contributors = tuple(n for n in nodes if n in fitres)
    weights = {n: int(fitres[n].num_examples) for n in contributors}
    out_dtype = np.result_type(*[np.asarray(a).dtype for a in arrays])
    bound = secagg_error_bound(spec, list(weights.values()), dtype=out_dtype)
    coordinator = {
        s: sec - ledger.grid_seconds.get(s, 0.0) - ledger.accounting_seconds.get(s, 0.0)
        for s, sec in workflow.stage_seconds.items()
    }
    outcome = SecAggOutcome(
        round=round_,
        arrays=out,
        selected=tuple(nodes),
        contributors=contributors,
        dropouts=dict(ledger.dropouts),
        num_examples=weights,
        metrics={n: dict(fitres[n].metrics) for n in contributors},
        bytes_down_by_node=dict(ledger.bytes_down),
        bytes_up_by_node=dict(ledger.bytes_up),
        stage_seconds=dict(workflow.stage_seconds),
        coordinator_seconds=coordinator,
        site_seconds={n: dict(s) for n, s in ledger.site_seconds.items()},
        num_shares=num_shares,
        threshold=spec.reconstruction_threshold,
        error_bound=bound,
    )
    log.info(
        "SecAgg+ round %d: %d of %d sites contributed, %d dropped, %.2fs, error bound %.2g",
        round_,
        len(contributors),
        len(nodes),
        len(outcome.dropped),
        time.perf_counter() - t0,
        bound,
    )
    largest = max(weights.values(), default=0)
    if largest and spec.max_weight > 100 * largest:
        log.warning(
            "SecAgg+: max_weight %g is %.0fx the largest site weight %d, which costs precision "
            "(error bound %.2g); set privacy.secagg.max_weight near the largest num_examples",
            spec.max_weight,
            spec.max_weight / largest,
            largest,
            bound,
        )
    return outcome
