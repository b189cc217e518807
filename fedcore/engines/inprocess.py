"""In-process engine: a Flower ``Grid`` that delivers messages to a ClientApp in this process.

Every message crosses a real serialization boundary (Flower's own object
deflate/inflate, as on the wire), so sites never share Python objects with the
coordinator, and each site keeps its own ``Context`` (and state) across rounds.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

CLIENT_APP_EXCEPTION = 1
"""Error code of a reply whose ClientApp raised (mirrors the deployment runtime's)."""


def wire_copy(msg: Message) -> Message:
    """Serialize a message to its wire objects and inflate a fresh copy from them.

    The copy shares no Python object with ``msg``, and its message id is its
    object id, as Flower's link assigns it.
    """
    objects = get_all_nested_objects(msg)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    copy = cast(Message, inflate_object_from_contents(msg.object_id, contents))
    copy.metadata.__dict__["_message_id"] = copy.object_id
    return copy


def node_id_for(site_id: str) -> int:
    """A stable, positive 63-bit node id for a site (so runs are reproducible)."""
    return int.from_bytes(hashlib.sha256(site_id.encode()).digest()[:8], "big") >> 1 or 1


@dataclass
class _Site:
    site_id: str
    context: Context


@dataclass(frozen=True)
class Delivery:
    """One instruction a site handled and the reply its ClientApp gave, before the reply leaves.

    Attributes:
        site_id: The site that handled it.
        context: The site's ``Context`` (its node config names its kit: ``kit``).
        instruction: The instruction, as the site received it.
        reply: The site's reply (an error reply when its ClientApp raised).
    """

    site_id: str
    context: Context
    instruction: Message
    reply: Message


ReplyHook = Callable[[Sequence[Delivery]], Sequence[Message]]
"""Sees each batch of replies at the sites, before they leave, and returns the replies that
leave, one per delivery and in the same order (e.g. what hostile sites send instead:
``benchmarks/attacks.py``). A batch is every reply one ``pull_messages`` call collects."""


@dataclass
class InProcessGrid(Grid):
    """A ``Grid`` whose nodes are ClientApp instances in this process.

    Args:
        client_app: The ClientApp every site runs.
        node_configs: Per site id, the node config its ``Context`` carries
            (e.g. ``{"site-config": "/path/site.yaml"}``).
        run_id: The run id stamped on every message.
        run_config: The run config the sites see.
        reply_hook: Sees every batch of replies before it leaves the sites and may replace
            replies (default: none, the replies leave as the ClientApp gave them).
    """

    client_app: ClientApp
    node_configs: Mapping[str, Mapping[str, Any]]
    run_id: int = 1
    run_config: Mapping[str, Any] = field(default_factory=dict)
    reply_hook: ReplyHook | None = None
    _sites: dict[int, _Site] = field(init=False, default_factory=dict)
    _pending: dict[str, Message] = field(init=False, default_factory=dict)
    _run: Run = field(init=False)

    def __post_init__(self) -> None:
        for site_id, cfg in self.node_configs.items():
            nid = node_id_for(site_id)
            ctx = Context(
                run_id=self.run_id,
                node_id=nid,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(self.run_config),
            )
            self._sites[nid] = _Site(site_id, ctx)
        self._run = Run.create_empty(self.run_id)

    # ------------------------------------------------------------------ Grid API

    def set_run(self, run: Run) -> None:  # noqa: D102
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:  # noqa: D102
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self._sites)

    def get_nodes(self) -> Iterable[NodeInfo]:  # noqa: D102
        return [NodeInfo(node_id=nid) for nid in self._sites]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        ids: list[str] = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._sites:
                raise ValueError(f"message addressed to unknown node {msg.metadata.dst_node_id}")
            sent = wire_copy(msg)
            self._pending[sent.metadata.message_id] = sent
            msg.metadata.__dict__["_message_id"] = sent.metadata.message_id
            ids.append(sent.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        delivered: list[tuple[Message, Message]] = []
        for mid in message_ids:
            ins = self._pending.pop(mid, None)
            if ins is not None:
                delivered.append((ins, self._deliver(ins)))
        if self.reply_hook is None:
            return [reply for _, reply in delivered]
        return self._hooked(delivered, self.reply_hook)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:  # noqa: D102
        return list(self.pull_messages(list(self.push_messages(messages))))

    # ------------------------------------------------------------------ delivery

    def _hooked(self, delivered: list[tuple[Message, Message]], hook: ReplyHook) -> list[Message]:
        """The replies ``hook`` lets leave (each crosses the wire again)."""
        batch = [
            Delivery(
                self._sites[ins.metadata.dst_node_id].site_id,
                self._sites[ins.metadata.dst_node_id].context,
                ins,
                reply,
            )
            for ins, reply in delivered
        ]
        out = list(hook(batch))
        if len(out) != len(batch):
            raise ValueError(
                f"the reply hook must return one reply per delivery: expected {len(batch)}, "
                f"found {len(out)}"
            )
        return [wire_copy(reply) for reply in out]

    def _deliver(self, ins: Message) -> Message:
        site = self._sites[ins.metadata.dst_node_id]
        t0 = time.perf_counter()
        try:
            reply = self.client_app(ins, site.context)
        except Exception as exc:  # a site's failure becomes an error reply, as in deployment
            log.warning(
                "site %s raised while handling %s: %s", site.site_id, ins.metadata.message_type, exc
            )
            reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            reply = Message(Error(code=CLIENT_APP_EXCEPTION, reason=reason), reply_to=ins)
        log.debug(
            "site %s handled %s in %.2fs",
            site.site_id,
            ins.metadata.message_type,
            time.perf_counter() - t0,
        )
        return wire_copy(reply)


def run_inprocess(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    run_config: Mapping[str, Any],
    node_configs: Mapping[str, Mapping[str, Any]],
    run_id: int = 1,
    make_grid: Callable[..., InProcessGrid] | None = None,
    reply_hook: ReplyHook | None = None,
) -> None:
    """Run a ServerApp against in-process sites until its main returns.

    Args:
        server_app: The coordinator's ServerApp.
        client_app: The ClientApp every site runs.
        run_config: The run config (the ServerApp and sites both see it).
        node_configs: Per site id, its node config.
        run_id: Run id stamped on messages.
        make_grid: Builds the grid from the keyword arguments of :class:`InProcessGrid`
            (default: :class:`InProcessGrid` itself), e.g. a simulated consortium's grid.
        reply_hook: Sees each batch of site replies before it leaves (see :data:`ReplyHook`).
    """
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 1
    grid = (make_grid or InProcessGrid)(
        client_app=client_app,
        node_configs=node_configs,
        run_id=run_id,
        run_config=run_config,
        reply_hook=reply_hook,
    )
    ctx = Context(
        run_id=run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    server_app(grid, ctx)
