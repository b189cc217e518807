"""Site side of SecAgg+ (Bell et al., CCS 2020): a ClientApp mod and the legacy fit records it needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)
from flwr.compat.common import recorddict_compat as compat

from secure.secagg_guard import (
    FITRES_METRICS,
    FITRES_NUM_EXAMPLES,
    FITRES_PARAMETERS,
    FITRES_STATUS,
    SITE_TIMING,
)

log = logging.getLogger(__name__)

FITINS_PARAMETERS = "fitins.parameters"
FITINS_CONFIG = "fitins.config"
_SCALARS = (bool, bytes, float, int, str)


# --------------------------------------------------------------------------- legacy fit records


def is_legacy_fit(content: RecordDict) -> bool:
    """Whether a train instruction is a legacy fit (``fitins.*`` records), as SecAgg+ sends."""
    return FITINS_PARAMETERS in content.array_records and FITINS_CONFIG in content.config_records


def read_fit_instruction(content: RecordDict) -> tuple[list[np.ndarray], dict[str, Scalar]]:
    """Read the model arrays and fit config of a legacy fit instruction.

    Args:
        content: The train message's content (the SecAgg+ stage record may sit beside it).

    Returns:
        The arrays (fresh copies, in the order the coordinator sent them) and the fit config.

    Raises:
        ValueError: when the content is not a legacy fit instruction.
    """
    if not is_legacy_fit(content):
        raise ValueError(
            f"expected a legacy fit instruction with records {FITINS_PARAMETERS!r} and "
            f"{FITINS_CONFIG!r}, found {sorted(content.keys())}; only SecAgg+ rounds send these"
        )
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    return parameters_to_ndarrays(fitins.parameters), dict(fitins.config)


def fit_reply_content(
    arrays: Sequence[np.ndarray], num_examples: int, metrics: Mapping[str, Scalar]
) -> RecordDict:
    """Build a train reply with the legacy ``fitres.*`` records that ``secaggplus_mod`` masks.

    Args:
        arrays: The trained arrays, same order and shapes as the instruction's.
        num_examples: The site's weight in the mean (at most the round's ``max_weight``).
        metrics: Scalar metrics (e.g. ``loss``); they reach the coordinator in clear.

    Returns:
        Content with ``fitres.parameters``, ``fitres.num_examples``, ``fitres.metrics``
        and ``fitres.status`` (OK).

    Raises:
        ValueError: for a negative or non-integer ``num_examples`` or a non-scalar metric.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)):
        raise ValueError(f"num_examples must be an int, got {num_examples!r}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    bad = {k: type(v).__name__ for k, v in metrics.items() if not isinstance(v, _SCALARS)}
    if bad:
        raise ValueError(f"fit metrics must be scalars (bool, bytes, float, int, str); got {bad}")
    res = FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=ndarrays_to_parameters([np.asarray(a) for a in arrays]),
        num_examples=int(num_examples),
        metrics=dict(metrics),
    )
    return compat.fitres_to_recorddict(res, keep_input=False)


# --------------------------------------------------------------------------- the mod


def carries_secagg_stage(msg: Message) -> bool:
    """Whether ``msg`` is a SecAgg+ protocol message (a train message with a stage record)."""
    return (
        msg.metadata.message_type == MessageType.TRAIN
        and msg.has_content()
        and RECORD_KEY_CONFIGS in msg.content.config_records
    )


@contextmanager
def _own_numpy_global_rng() -> Iterator[None]:
    """Run with numpy's global RNG freshly seeded from the OS, then put the caller's state back.

    Flower's stochastic quantization draws from ``np.random``; without this, an
    in-process SecAgg+ round would shift every seeded draw that follows it.
    """
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence().generate_state(8))
    try:
        yield
    finally:
        np.random.set_state(saved)


def _check_fit_reply(reply: Message, ctxt: Context) -> None:
    """Fail clearly (rather than deep inside the mod) on a train reply SecAgg+ cannot mask."""
    if reply.has_error():
        raise RuntimeError(f"training failed: {reply.error.reason}")
    content = reply.content
    missing = [
        k
        for k, present in (
            (FITRES_PARAMETERS, FITRES_PARAMETERS in content.array_records),
            (FITRES_NUM_EXAMPLES, FITRES_NUM_EXAMPLES in content.metric_records),
            (FITRES_METRICS, FITRES_METRICS in content.config_records),
            (FITRES_STATUS, FITRES_STATUS in content.config_records),
        )
        if not present
    ]
    if missing:
        raise ValueError(
            f"a SecAgg+ train reply needs the legacy records {missing}, found "
            f"{sorted(content.keys())}; build it with secure.secagg.fit_reply_content"
        )
    params = compat.arrayrecord_to_parameters(content.array_records[FITRES_PARAMETERS], True)
    arrays = parameters_to_ndarrays(params)
    bad = sum(int(np.count_nonzero(~np.isfinite(a))) for a in arrays if a.dtype.kind in "fc")
    if bad:
        raise ValueError(
            f"the trained arrays hold {bad} non-finite values (NaN or inf); SecAgg+ would turn "
            "them into garbage in the sum. Fix the local training (lower the learning rate)"
        )
    state = ctxt.state.config_records.get(RECORD_KEY_STATE)
    n = content.metric_records[FITRES_NUM_EXAMPLES].get("num_examples")
    if state is None or not isinstance(n, int):
        return
    clip = float(state.get("clipping_range", 0.0))  # type: ignore[arg-type]
    max_weight = float(state.get("max_weight", 0.0))  # type: ignore[arg-type]
    if clip <= 0 or max_weight <= 0:
        return
    ratio = n / max_weight
    over = sum(int(np.count_nonzero(np.abs(a * ratio) > clip)) for a in arrays)
    if over:
        log.warning(
            "SecAgg+: %d values exceed the clipping range +-%g after weighting by "
            "num_examples/max_weight = %g and will be clipped, which biases the aggregate; "
            "raise privacy.secagg.clipping_range or clip the update before it",
            over,
            clip,
            ratio,
        )


def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: run SecAgg+ train messages through Flower's ``secaggplus_mod``.

    Messages without a SecAgg+ stage record (plaintext or CKKS train, evaluate,
    queries) go to ``call_next`` untouched. For SecAgg+ messages the mod checks
    the train handler's reply (legacy ``fitres`` records, finite values, clipping
    range), keeps numpy's global RNG of the caller intact, and adds a
    ``secagg.site`` MetricRecord with the seconds the protocol itself took at this
    site (``seconds``) and the training inside it (``train_seconds``).

    Args:
        msg: The incoming message.
        ctxt: The site's context (SecAgg+ keeps its per-round state there).
        call_next: The next mod or the train handler.

    Returns:
        The reply: masked vector, key shares or public keys, per stage.
    """
    if not carries_secagg_stage(msg):
        return call_next(msg, ctxt)
    stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "?"))
    train_seconds = 0.0

    def train(inner: Message, context: Context) -> Message:
        nonlocal train_seconds
        t = time.perf_counter()
        reply = call_next(inner, context)
        train_seconds += time.perf_counter() - t
        _check_fit_reply(reply, context)
        return reply

    t0 = time.perf_counter()
    with _own_numpy_global_rng():
        reply = secaggplus_mod(msg, ctxt, train)
    seconds = time.perf_counter() - t0 - train_seconds
    log.debug("SecAgg+ %s: %.3fs protocol, %.3fs training", stage, seconds, train_seconds)
    if reply.has_content():
        reply.content.metric_records[SITE_TIMING] = MetricRecord(
            {"seconds": seconds, "train_seconds": train_seconds}
        )
    return reply
