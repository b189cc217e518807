"""The record layout of every message between coordinator and site, defined once.

``coordinator`` and ``clients`` never import each other; both build and read
messages only through the helpers here, so the two sides cannot drift apart.

Message types and their content:

=====================  =========================================  ===========================================
message type           instruction (coordinator -> site)          reply (site -> coordinator)
=====================  =========================================  ===========================================
``query.telemetry``    ``config``: round, run key, task           ``telemetry``: site id, data size, device
                                                                  readings (ConfigRecord + MetricRecord)
``train``              ``arrays``: global model, ``config``:      ``arrays``: local model, ``config``:
                       the :class:`RoundConfig`; when asked,      site, round, num_examples, loss,
                       ``carry.evaluate`` and ``carry.telemetry`` seconds; when asked, the evaluation
                       in ``config``                              of the incoming model and the next
                                                                  round's telemetry (``carried.*`` in
                                                                  ``config``)
``evaluate``           ``arrays``: global model, ``config``:      ``metrics``: num_examples, loss, metrics,
                       the :class:`RoundConfig`; when asked,      score histograms per class, flag counts;
                       ``carry.telemetry`` in ``config``           when asked, the next round's telemetry
                                                                  (``carried.*`` in ``config``)
``query.export``       ``arrays``: global model, ``config``:      ``config``: site id, export manifest
                       the :class:`RoundConfig`                    (JSON), or the error that stopped it
=====================  =========================================  ===========================================

What else a reply carries (the next round's telemetry, the evaluation of the model a train
instruction brings) is laid out in :mod:`fedcore.carry`.

Privacy modes change what travels (see ``docs/privacy.md``):

* ``ckks``: instructions carry no clear model after round 0; instead ``ckks.aggregates``
  holds the encrypted aggregates a site has not applied yet (it keeps the global model
  itself). A train reply carries ``ckks.update`` (ciphertext chunks) and no ``arrays``.
* ``secagg+``: training runs Flower's SecAgg+ protocol (legacy ``fitins``/``fitres`` keys);
  the fit config carries the same :class:`RoundConfig` record plus the array names.
* Every reply may carry a signature (``auth.signature`` in its ``config`` record, or an
  ``auth`` record when it has none): ECDSA with the site's node key over
  :func:`signing_payload`, which the coordinator checks against the registered key.
"""

from __future__ import annotations

from fedcore.records.arrays import (
    arrays_to_record,
    message_nbytes,
    record_to_arrays,
)
from fedcore.records.fields import (
    MAX_CKKS_LENGTH,
    MAX_DEADLINE_S,
    MAX_DEVICE,
    MAX_EPOCHS,
    MAX_EXAMPLES,
    MAX_ROUND,
    MAX_SECONDS,
    MAX_SITES,
    MAX_SPEC_CHARS,
    MAX_WEIGHT,
    READING_RANGES,
    RUN_KEY_PATTERN,
    reading_range,
)
from fedcore.records.instructions import (
    CkksAggregates,
    CkksRound,
    RoundConfig,
    ckks_instruction,
    evaluate_instruction,
    export_reply,
    read_export_reply,
    read_instruction,
    read_telemetry_instruction,
    telemetry_instruction,
    train_instruction,
)
from fedcore.records.keys import (
    ARRAYS,
    AUTH,
    CKKS_AGGREGATES,
    CKKS_UPDATE,
    CONFIG,
    EVALUATE,
    EXPORT,
    HIST_BINS,
    METRICS,
    SIGNATURE,
    TELEMETRY,
    TELEMETRY_INFO,
    TELEMETRY_METRICS,
    TRAIN,
)
from fedcore.records.replies import (
    DATA_PROBLEMS,
    EvalReply,
    Telemetry,
    TrainReply,
)
from fedcore.records.signing import (
    MAX_SIGNATURE_BYTES,
    arrays_digest,
    attach_signature,
    chunks_digest,
    read_signature,
    signing_payload,
)
from fedcore.round_record import RoundRecord

__all__ = [
    "ARRAYS",
    "AUTH",
    "CKKS_AGGREGATES",
    "CKKS_UPDATE",
    "CONFIG",
    "CkksAggregates",
    "CkksRound",
    "DATA_PROBLEMS",
    "EVALUATE",
    "EXPORT",
    "EvalReply",
    "HIST_BINS",
    "MAX_CKKS_LENGTH",
    "MAX_DEADLINE_S",
    "MAX_DEVICE",
    "MAX_EPOCHS",
    "MAX_EXAMPLES",
    "MAX_ROUND",
    "MAX_SECONDS",
    "MAX_SIGNATURE_BYTES",
    "MAX_SITES",
    "MAX_SPEC_CHARS",
    "MAX_WEIGHT",
    "METRICS",
    "READING_RANGES",
    "RUN_KEY_PATTERN",
    "RoundConfig",
    "RoundRecord",
    "SIGNATURE",
    "TELEMETRY",
    "TELEMETRY_INFO",
    "TELEMETRY_METRICS",
    "TRAIN",
    "Telemetry",
    "TrainReply",
    "arrays_digest",
    "arrays_to_record",
    "attach_signature",
    "chunks_digest",
    "ckks_instruction",
    "evaluate_instruction",
    "export_reply",
    "message_nbytes",
    "read_export_reply",
    "read_instruction",
    "read_signature",
    "read_telemetry_instruction",
    "reading_range",
    "record_to_arrays",
    "signing_payload",
    "telemetry_instruction",
    "train_instruction",
]
