"""One exchange with the sites: push a batch of instructions, pull the replies until all are in or time runs out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from coordinator.protection.base import ExchangeResult
from fedcore import records as R
from fedcore.engines.polling import GridWrapper

log = logging.getLogger(__name__)

Send = tuple[int, RecordDict, str]
"""One instruction of a batch: destination node, content, message type."""


def exchange_batch(
    grid: Grid, sends: Sequence[Send], round_: int, timeout: float, poll_interval: float
) -> ExchangeResult:
    """Push ``sends`` as one batch and wait for every reply (or ``timeout`` seconds).

    A batch may mix message types (train instructions for the chosen sites, evaluate
    instructions for the others): it is one exchange, whose replies come back together.

    Returns:
        Replies by node, errors by node, bytes sent down, bytes received up.
    """
    msgs: list[Message] = []
    down = 0
    for nid, content, message_type in sends:
        msg = Message(content, nid, message_type, group_id=str(round_))
        down += R.message_nbytes(msg)
        msgs.append(msg)
    if not msgs:
        return ExchangeResult([], {}, 0, 0)
    ids = list(grid.push_messages(msgs))
    node_of = {
        (m.metadata.message_id or mid): m.metadata.dst_node_id
        for m, mid in zip(msgs, ids, strict=False)
    }
    pending = set(node_of)
    out: list[tuple[int, Message]] = []
    errors: dict[int, str] = {}
    up = 0
    deadline = time.monotonic() + timeout
    while pending:
        # The deadline is read before the pull: a pull can block for long (Flower retries
        # the objects of a reply whose sender died mid-upload until its push session
        # expires), and replies that arrived meanwhile still count.
        expired = time.monotonic() >= deadline
        for rep in grid.pull_messages(list(pending)):
            # match on the instruction answered, not the sender: when a node is offline the
            # link itself sends the error reply
            mid = rep.metadata.reply_to_message_id
            if mid not in pending:
                log.warning("ignoring unexpected or duplicate reply to message %s", mid)
                continue
            pending.discard(mid)
            nid = node_of[mid]
            up += R.message_nbytes(rep)
            if rep.has_error():
                errors[nid] = f"site error: {rep.error.reason or rep.error.code}"
            else:
                out.append((nid, rep))
        if not pending or expired:
            break
        if time.monotonic() < deadline:
            time.sleep(poll_interval)
    for mid in pending:
        errors[node_of[mid]] = f"no reply within {timeout:.0f}s"
    return ExchangeResult(out, errors, down, up)


class CountingGrid(GridWrapper):
    """Passes everything to ``inner``; each batch of messages sent is one exchange (``count()``).

    A protocol that runs its own exchanges (SecAgg+'s four stages) gets this grid, so the
    round record can say how many exchanges the round took.
    """

    def __init__(self, inner: Grid, count: Callable[[], None]) -> None:
        self.inner = inner
        self.count = count

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        msgs = list(messages)
        if msgs:
            self.count()
        return self.inner.push_messages(msgs)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:  # noqa: D102
        msgs = list(messages)
        if msgs:
            self.count()
        return self.inner.send_and_receive(msgs, timeout=timeout)
