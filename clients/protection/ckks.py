"""CKKS at the site: it keeps the global model itself, applies encrypted aggregates, sends ``Enc(w * update)``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import RecordDict

from clients.model_store import GlobalModelStore
from clients.protection.base import SiteProtection, clipped_for_round, signed_train_reply
from clients.runtime import LocalTraining, SiteRuntime
from fedcore import records as R

log = logging.getLogger(__name__)


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All arrays, names sorted, as one float64 vector."""
    if not arrays:
        return np.zeros(0)
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in sorted(arrays)])


def unflatten(vector: np.ndarray, template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`, shapes and dtypes taken from ``template``."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    for k in sorted(template):
        ref = np.asarray(template[k])
        out[k] = vector[pos : pos + ref.size].reshape(ref.shape).astype(ref.dtype)
        pos += ref.size
    if pos != vector.size:
        raise ValueError(f"vector has {vector.size} values; the model has {pos}")
    return out


def check_aggregate_norm(
    round_: int,
    mean_update: np.ndarray,
    site_clip: float,
    per_value: float,
    rounding: float = 0.0,
) -> None:
    """Refuse a decrypted aggregate whose mean update is longer than ``site_clip`` allows.

    Every site clips its update to ``site_clip``, so their weighted mean is no longer than
    that; ``per_value`` bounds the decryption error of one value of the mean, which over
    ``d`` values adds at most ``sqrt(d) * per_value`` to the norm; ``rounding`` bounds what
    the float rounding of the sites' clipped models adds.

    Raises:
        ValueError: naming the round, the norm and the bound.
    """
    norm = float(np.linalg.norm(mean_update))
    limit = site_clip * (1 + 1e-4) + math.sqrt(mean_update.size) * per_value + rounding
    if not norm <= limit:
        raise ValueError(
            f"the encrypted aggregate of round {round_} decrypts to a mean update of L2 norm "
            f"{norm:.6g}, over aggregation.site_clip {site_clip:g} (limit {limit:.6g} with the "
            "CKKS error): a site did not clip its update. This site refuses to apply it and "
            "keeps its model"
        )


def decrypted(codec: Any, agg: R.CkksRound, length: int) -> np.ndarray:
    """The decrypted sum of one aggregate: ``length`` finite float64 values, or ``ValueError``."""
    total = np.asarray(codec.decrypt(agg.chunks, length, agg.count), dtype=np.float64)
    if total.shape != (length,):
        raise ValueError(
            f"the encrypted aggregate of round {agg.round} decrypts to {total.size} values; "
            f"expected {length}"
        )
    if not np.all(np.isfinite(total)):
        raise ValueError(
            f"the encrypted aggregate of round {agg.round} decrypts to non-finite values; "
            "expected finite sums"
        )
    return total


def rounding_slack(arrays: Mapping[str, np.ndarray], norm: float, site_clip: float) -> float:
    """How far float rounding may lengthen a clipped update: ``eps * (2 ||model|| + site_clip)``.

    Each site adds its clipped update to the model in the model's dtype; a value moves by
    at most half an ulp of the larger of its two ends, ``eps`` times the two models' norms
    over all values (the trained model is at most ``site_clip`` longer than the global).
    """
    eps = max(
        (float(np.finfo(a.dtype).eps) for a in arrays.values() if a.dtype.kind == "f"), default=0.0
    )
    return eps * (2 * norm + site_clip)


def bring_up_to_date(
    store: GlobalModelStore,
    content: RecordDict,
    codec: Any,
    site_clip: float = 0.0,
    *,
    latest_round: int | None = None,
    check: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> tuple[int, dict[str, np.ndarray]]:
    """Apply the encrypted aggregates the site lacks; returns (round, global model).

    The base model (round 0) comes in clear in the instruction when the site holds none.
    Aggregates the site already applied are skipped, so a repeated message is harmless.
    Each aggregate is applied to the model in its own dtypes, round by round, so a site that
    missed rounds ends with the bit-identical model of the sites that did not. With
    ``site_clip`` (> 0) each aggregate's mean update must be within it
    (:func:`check_aggregate_norm`); an instruction with a refused aggregate changes nothing.

    Nothing is written unless the instruction reads whole: the aggregates record (no round
    after ``latest_round``), the base model and the held one must pass ``check`` (the site's
    model: names, shapes, dtypes, finite values), every aggregate must decrypt to ``length``
    finite values that keep the model finite. A refused instruction leaves the store as it was.

    Raises:
        ValueError: the instruction cannot be applied (the message says why).
    """
    aggregates = R.CkksAggregates.from_content(content, latest_round=latest_round)
    record = content.array_records.get(R.ARRAYS)
    base = None if record is None else R.record_to_arrays(record)
    if base is not None and check is not None:
        check(base)  # read and checked even when the site holds a model: all or nothing
    held = store.load()
    if held is None:
        if base is None:
            raise ValueError(
                "this site holds no global model for the run and the instruction carries no base "
                "model; the coordinator must resend round 0"
            )
        current, arrays = 0, base
    else:
        current, arrays = held
        if check is not None:
            check(arrays)
    size = sum(np.asarray(a).size for a in arrays.values())
    if aggregates.rounds and aggregates.length != size:
        raise ValueError(
            f"the encrypted aggregates hold {aggregates.length} values each; expected {size}, "
            "the values of this site's model"
        )
    changed = held is None
    for agg in aggregates.rounds:
        if agg.round <= current:
            continue
        if agg.round != current + 1:
            raise ValueError(
                f"missing encrypted aggregate: the site holds round {current}, next sent is "
                f"{agg.round}"
            )
        vec = flatten(arrays)
        if aggregates.length != vec.size:
            raise ValueError(
                f"aggregate of round {agg.round} has {aggregates.length} values; the model has "
                f"{vec.size}"
            )
        total = decrypted(codec, agg, aggregates.length)
        if site_clip > 0:
            check_aggregate_norm(
                agg.round,
                total / agg.weight,
                site_clip,
                codec.error_bound(agg.count) / agg.weight,
                rounding_slack(arrays, float(np.linalg.norm(vec)), site_clip),
            )
        # back to the model's dtypes after every round, as a site that took part in each
        # round did: a site catching up holds the bit-identical model
        with np.errstate(over="ignore", invalid="ignore"):  # refused below if not finite
            updated = unflatten(vec + total / agg.weight, arrays)
        if not all(np.all(np.isfinite(a)) for a in updated.values() if a.dtype.kind in "fc"):
            raise ValueError(
                f"the encrypted aggregate of round {agg.round} would make the model non-finite "
                f"(weight {agg.weight:g}); expected a mean update the model's dtypes can hold. "
                "This site refuses it and keeps its model"
            )
        arrays = updated
        current = agg.round
        changed = True
    if changed:
        store.save(current, arrays)
    return current, arrays


class CkksSite(SiteProtection):
    """The consortium's shared CKKS key encrypts each update; only sites can decrypt the sums."""

    name = "ckks"

    def global_model(
        self, runtime: SiteRuntime, content: RecordDict, cfg: R.RoundConfig
    ) -> dict[str, np.ndarray]:
        site = runtime.site()
        codec = runtime.codec(site.id, cfg.privacy, cfg.max_sites)
        store = GlobalModelStore.for_run(runtime.state_dir, cfg.run_key)
        _, arrays = bring_up_to_date(
            store,
            content,
            codec,
            cfg.site_clip,
            latest_round=cfg.round,
            check=lambda model: runtime.check_model(model, cfg.task),
        )
        return arrays

    def reply(
        self,
        runtime: SiteRuntime,
        cfg: R.RoundConfig,
        base: dict[str, np.ndarray],
        trained: LocalTraining,
    ) -> RecordDict:
        codec = runtime.codec(trained.site.id, cfg.privacy, cfg.max_sites)
        trained = clipped_for_round(cfg, base, trained)
        update = flatten(trained.arrays) - flatten(base)
        t0 = time.perf_counter()
        chunks = codec.encrypt(cfg.weight * update)
        log.debug("encrypted %d values in %.3fs", update.size, time.perf_counter() - t0)
        return signed_train_reply(
            runtime,
            cfg,
            R.TrainReply(
                arrays={},
                num_examples=trained.num_examples,
                loss=trained.loss,
                seconds=trained.seconds,
                site_id=trained.site.id,
                encrypted=chunks,
                length=int(update.size),
                round=cfg.round,
            ),
        )
