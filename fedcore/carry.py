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

Every record is a separate object on Flower's wire (one request per object and hop),
so what rides along adds no record: it goes into the ``config`` record of the
instruction or reply.

==========================  ===================================================================
where                       holds
==========================  ===================================================================
instruction's ``config``    ``carry.evaluate``: the round whose global model the site evaluates
                            first; ``carry.telemetry``: the round whose telemetry it adds
reply's ``config``          ``carried.*``: the records of an evaluate reply
                            (``carried.evaluation.metrics.*``, ``carried.evaluation.config.*``)
                            and of a telemetry reply (``carried.telemetry.info.*``,
                            ``carried.telemetry.metrics.*``, its signature in
                            ``carried.telemetry.auth.*``)
==========================  ===================================================================

What is carried is read back as the content of the reply it stands for and checked like
one: an evaluation with :meth:`~fedcore.records.EvalReply.from_content`, telemetry with
:meth:`~fedcore.records.Telemetry.from_content` and its signature.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedcore.records import AUTH, CONFIG, METRICS, TELEMETRY_INFO, TELEMETRY_METRICS
from fedcore.records.replies import TELEMETRY_QUALITY, TELEMETRY_SERVING

EVALUATION_REQUEST = "carry.evaluate"
TELEMETRY_REQUEST = "carry.telemetry"
CARRIED = "carried"
"""Prefix of what a reply carries, in its ``config`` record."""
_EVALUATION = (
    ("evaluation.metrics", METRICS, MetricRecord),
    ("evaluation.config", CONFIG, ConfigRecord),
)
_TELEMETRY = (
    ("telemetry.info", TELEMETRY_INFO, ConfigRecord),
    ("telemetry.metrics", TELEMETRY_METRICS, MetricRecord),
    ("telemetry.quality", TELEMETRY_QUALITY, MetricRecord),  # a table's data quality, if any
    ("telemetry.serving", TELEMETRY_SERVING, MetricRecord),  # the serving monitor's, if any
    ("telemetry.auth", AUTH, ConfigRecord),
)

__all__ = [
    "CARRIED",
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
    "telemetry_or_none",
]


def _with(content: RecordDict, key: str, round_: int) -> RecordDict:
    """A copy of ``content`` whose ``config`` record also holds ``key: round_``."""
    out = RecordDict(dict(content.items()))
    config = content.config_records.get(CONFIG)
    if config is None:
        raise ValueError(f"the instruction has no {CONFIG!r} record to carry {key!r}")
    out[CONFIG] = ConfigRecord({**config, key: int(round_)})
    return out


def _read(content: RecordDict, key: str) -> int | None:
    config = content.config_records.get(CONFIG)
    if config is None or key not in config:
        return None
    value = config[key]
    if type(value) is not int:
        raise ValueError(f"malformed {key!r} in the {CONFIG!r} record: {value!r} is not a round")
    return value


def _pack(content: RecordDict, parts: Any, source: RecordDict) -> None:
    """Copy ``source``'s records named in ``parts`` into ``content``'s ``config`` record."""
    config: dict[str, Any] = dict(content.config_records.get(CONFIG, ConfigRecord()))
    for prefix, key, kind in parts:
        records = source.metric_records if kind is MetricRecord else source.config_records
        record = records.get(key)
        if record is None:
            continue
        config[f"{CARRIED}.{prefix}"] = True  # the record was there, even if empty
        config.update({f"{CARRIED}.{prefix}.{k}": v for k, v in record.items()})
    content[CONFIG] = ConfigRecord(config)


def _unpack(content: RecordDict, parts: Any) -> RecordDict | None:
    """The records ``parts`` names, rebuilt from ``content``'s ``config`` record (or ``None``).

    Raises:
        ValueError: a carried value does not fit the record it came from.
    """
    if not isinstance(content, RecordDict):
        raise ValueError(f"expected a reply's RecordDict, found {type(content).__name__}")
    carried = content.config_records.get(CONFIG)
    if carried is None or f"{CARRIED}.{parts[0][0]}" not in carried:
        return None
    out = RecordDict()
    for prefix, key, kind in parts:
        if f"{CARRIED}.{prefix}" not in carried:
            continue
        start = f"{CARRIED}.{prefix}."
        values = {k[len(start) :]: v for k, v in carried.items() if k.startswith(start)}
        try:
            out[key] = kind(values)
        except Exception as exc:  # noqa: BLE001 - a hostile value may fail in any way
            raise ValueError(f"malformed carried {prefix}: {exc}") from None
    return out


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
    """Add a telemetry reply's records (and its signature) to ``content``; returns ``content``.

    ``telemetry`` is the content a ``query.telemetry`` reply would carry.
    """
    _pack(content, _TELEMETRY, telemetry)
    return content


def carried_telemetry(content: RecordDict) -> RecordDict | None:
    """The telemetry a reply carries, as the content of a ``query.telemetry`` reply.

    ``None`` when the reply carries none (the site was not asked, or could not take its
    readings).
    """
    return _unpack(content, _TELEMETRY)  # ValueError: malformed (the site's fault)


def telemetry_or_none(content: RecordDict) -> RecordDict | None:
    """:func:`carried_telemetry`, with ``None`` for a malformed one too (the node is asked again)."""
    try:
        return carried_telemetry(content)
    except ValueError:
        return None


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
    _pack(content, _EVALUATION, evaluation)
    return content


def carried_evaluation(content: RecordDict) -> RecordDict | None:
    """The evaluation a train reply carries, as the content of an evaluate reply (or ``None``)."""
    return _unpack(content, _EVALUATION)
