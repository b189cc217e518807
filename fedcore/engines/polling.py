"""Grid wrappers: plain delegation to a wrapped ``Grid``, and one that pulls replies every fraction of a second.

Flower 1.42's deployment grid sleeps 3 s between pulls in ``send_and_receive``; SecAgg+
drives its four stages through that method, so each stage costs at least 3 s even when
every site answered in milliseconds. This wrapper keeps Flower's semantics (push, then
pull until every reply is in or ``timeout`` runs out; ``None`` waits for all) with a
short pull interval, and passes everything else to the wrapped grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

DEFAULT_INTERVAL = 0.1
"""Seconds between two pulls while replies are missing."""


class GridWrapper(Grid):
    """A ``Grid`` that passes every call to the grid it wraps (``inner``); subclasses override some.

    Anything a particular grid offers beyond Flower's interface (a simulated clock, its
    stats) is reached through the wrapper too.
    """

    inner: Grid

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def set_run(self, run: Run) -> None:  # noqa: D102
        self.inner.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:  # noqa: D102
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:  # noqa: D102
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:  # noqa: D102
        return self.inner.send_and_receive(messages, timeout=timeout)


class FastPollGrid(GridWrapper):
    """Wraps a grid; only ``send_and_receive`` changes (a short pull interval).

    Args:
        inner: The grid that talks to the sites (deployment, in-process, simulated).
        interval: Seconds between pulls while replies are missing (> 0).

    Raises:
        ValueError: for a non-positive ``interval``.
    """

    def __init__(self, inner: Grid, interval: float = DEFAULT_INTERVAL) -> None:
        if not interval > 0:
            raise ValueError(f"interval is {interval!r}; expected a positive number of seconds")
        self.inner = inner
        self.interval = interval

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull every ``interval`` until all replies are in or ``timeout``."""
        pending = set(self.inner.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.inner.pull_messages(list(pending)))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies
