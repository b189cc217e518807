"""What a reply carries besides its own answer, so that a round takes one exchange.

A round after the first is one exchange with the sites (SecAgg+: its four stages and an
evaluation). The coordinator's train instruction of round ``r`` asks each chosen site

* to evaluate the model the instruction brings (the global model of round ``r - 1``)
  before it trains (:func:`request_evaluation`); the evaluation rides on the train reply
  (:func:`attach_evaluation`, read back with :func:`carried_evaluation`);
* for its telemetry of round ``r + 1``, taken after training (:func:`request_telemetry`);
  it rides on the same reply (:func:`attach_telemetry`, :func:`carried_telemetry`).

A site that is connected but not chosen gets an ``evaluate`` instruction in the same
exchange, which asks for its telemetry the same way. After the last round one evaluate
exchange scores the final model.

Records added to an instruction or reply (their names never clash with its own):

==========================  ===================================================================
record                      holds
==========================  ===================================================================
``evaluation.request``      (instruction) the round whose global model the site evaluates first
``telemetry.request``       (instruction) the round whose telemetry the site adds
``evaluation.metrics``      (reply) the ``metrics`` record of an evaluate reply
``evaluation.config``       (reply) the ``config`` record of an evaluate reply
``telemetry.info``,         (reply) a ``query.telemetry`` reply's records; its signature in
``telemetry.metrics``       ``telemetry.auth``
==========================  ===================================================================

What is carried is read back as the content of the reply it stands for and checked like
one: an evaluation with :meth:`~fedcore.records.EvalReply.from_content`, telemetry with
:meth:`~fedcore.records.Telemetry.from_content` and its signature.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from fedcore.records import AUTH, CONFIG, METRICS, TELEMETRY_INFO, TELEMETRY_METRICS

EVALUATION_REQUEST = "evaluation.request"
TELEMETRY_REQUEST = "telemetry.request"
EVALUATION_METRICS = "evaluation.metrics"
EVALUATION_CONFIG = "evaluation.config"
TELEMETRY_AUTH = "telemetry.auth"

__all__ = [
    "EVALUATION_REQUEST",
    "TELEMETRY_REQUEST",
    "attach_evaluation",
    "attach_telemetry",
    "carried_evaluation",
    "carried_telemetry",
    "read_evaluation_request",
    "read_telemetry_request",
    "request_evaluation",
    "request_telemetry",
]


def _with(content: RecordDict, key: str, round_: int) -> RecordDict:
    out = RecordDict(dict(content.items()))
    out[key] = ConfigRecord({"round": int(round_)})
    return out


def _read(content: RecordDict, key: str) -> int | None:
    rec = content.config_records.get(key)
    if rec is None:
        return None
    try:
        return int(rec["round"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {key!r} record: {exc}") from exc


# --------------------------------------------------------------------------- telemetry


def request_telemetry(content: RecordDict, round_: int) -> RecordDict:
    """A copy of a train or evaluate instruction that also asks for the telemetry of ``round_``.

    The site answers with the readings a ``query.telemetry`` for ``round_`` would give,
    taken after its work (see :func:`attach_telemetry`); run key and task are the
    instruction's own. ``content`` is not changed.
    """
    return _with(content, TELEMETRY_REQUEST, round_)


def read_telemetry_request(content: RecordDict) -> int | None:
    """The round whose telemetry an instruction asks for, or ``None`` when it asks none.

    Raises:
        ValueError: the request record is malformed.
    """
    return _read(content, TELEMETRY_REQUEST)


def attach_telemetry(content: RecordDict, telemetry: RecordDict) -> RecordDict:
    """Add a telemetry reply's records (and its signature, as ``telemetry.auth``) to ``content``.

    ``telemetry`` is the content a ``query.telemetry`` reply would carry; returns ``content``.
    """
    content[TELEMETRY_INFO] = telemetry.config_records[TELEMETRY_INFO]
    content[TELEMETRY_METRICS] = telemetry.metric_records[TELEMETRY_METRICS]
    auth = telemetry.config_records.get(AUTH)
    if auth is not None:
        content[TELEMETRY_AUTH] = auth
    return content


def carried_telemetry(content: RecordDict) -> RecordDict | None:
    """The telemetry a reply carries, as the content of a ``query.telemetry`` reply.

    ``None`` when the reply carries none (the site was not asked, or could not take its
    readings).
    """
    held = [key for key in (TELEMETRY_INFO, TELEMETRY_METRICS) if key in content]
    if not held:
        return None
    out = RecordDict({key: content[key] for key in held})
    auth = content.config_records.get(TELEMETRY_AUTH)
    if auth is not None:
        out[AUTH] = auth
    return out


# --------------------------------------------------------------------------- evaluation


def request_evaluation(content: RecordDict, round_: int) -> RecordDict:
    """A copy of a train instruction that asks the site to evaluate the model it brings first.

    ``round_`` is the round that produced that model (the coordinator files the evaluation
    under it). ``content`` is not changed.
    """
    return _with(content, EVALUATION_REQUEST, round_)


def read_evaluation_request(content: RecordDict) -> int | None:
    """The round whose model a train instruction asks to evaluate first, or ``None``.

    Raises:
        ValueError: the request record is malformed.
    """
    return _read(content, EVALUATION_REQUEST)


def attach_evaluation(content: RecordDict, evaluation: RecordDict) -> RecordDict:
    """Add an evaluate reply's records to a train reply's ``content``; returns ``content``."""
    content[EVALUATION_METRICS] = evaluation.metric_records[METRICS]
    content[EVALUATION_CONFIG] = evaluation.config_records[CONFIG]
    return content


def carried_evaluation(content: RecordDict) -> RecordDict | None:
    """The evaluation a train reply carries, as the content of an evaluate reply (or ``None``)."""
    metrics = content.metric_records.get(EVALUATION_METRICS)
    if metrics is None:
        return None
    config = content.config_records.get(EVALUATION_CONFIG, ConfigRecord())
    return RecordDict({METRICS: metrics, CONFIG: config})
