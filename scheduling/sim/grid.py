"""An in-process grid whose sites run on a simulated cluster: real training, simulated devices and clock."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import Context, Error, Message

from fedcore import carry
from fedcore import records as R
from fedcore.config import Scenario, SimulatorSpec
from fedcore.devices.environment import SiteEnvironment
from fedcore.devices.registry import SelectedDevice
from fedcore.engines.inprocess import InProcessGrid, wire_copy
from scheduling.sim.cluster import Outcome, SimCluster, SimSite, Work, heterogeneous_consortium

log = logging.getLogger(__name__)

SIM_ERROR_CODE = 504
"""Error code of a simulated site's failure or missed deadline (a reply that never came)."""


def build_cluster(scenario: Scenario) -> SimCluster:
    """The simulated cluster of a scenario's ``simulator`` section, one simulated site per scenario site.

    Sites listed in ``simulator.pools`` get that device pool; the others get the pool,
    time zone, load pattern, link and failure rate of a seeded heterogeneous consortium
    (:func:`~scheduling.sim.cluster.heterogeneous_consortium`).

    Raises:
        ValueError: if the scenario has no ``simulator`` section.
    """
    spec: SimulatorSpec | None = scenario.simulator
    if spec is None:
        raise ValueError("the scenario has no simulator section")
    ids = sorted(s.id for s in scenario.sites)
    drawn = heterogeneous_consortium(len(ids), spec.seed)
    sites: list[SimSite] = []
    for site_id, template in zip(ids, drawn, strict=True):
        site = replace(template, site_id=site_id)
        if site_id in spec.pools:
            site = replace(site, devices=tuple(spec.pools[site_id]))
        sites.append(site)
    return SimCluster(
        sites, spec.seed, spec.start_hour, base_examples_per_s=spec.examples_per_second
    )


class SimulatedEnvironment:
    """One simulated site's environment: its simulated device's readings and training time.

    Args:
        cluster: The simulated cluster.
        site_id: The site it stands for.
    """

    def __init__(self, cluster: SimCluster, site_id: str) -> None:
        self.cluster = cluster
        self.site_id = site_id
        self.seconds: float | None = None
        """Virtual seconds of the train instruction being delivered (set by the grid)."""

    def readings(self, device: SelectedDevice) -> dict[str, float]:
        """The simulated device's readings, in place of the host's."""
        return {str(k): float(v) for k, v in self.cluster.telemetry(self.site_id).items()}

    def train_seconds(self, measured: float) -> float:
        """The simulated device's time for this round's work, in place of the wall time."""
        return measured if self.seconds is None else self.seconds


@dataclass
class SimulatedGrid(InProcessGrid):
    """:class:`~fedcore.engines.inprocess.InProcessGrid` with sites on a :class:`SimCluster`.

    Every site runs the real ClientApp: it really trains and evaluates. The simulator
    decides the rest through each site's :class:`SimulatedEnvironment`, which the ClientApp
    is given in place of the host (``make_client_app(environment_for=grid.environment_for)``):
    the site's simulated device readings, and the virtual seconds the work took on the
    site's simulated device, which the site reports.
    A site the simulator makes drop out, or whose work would end after the round's
    deadline (``RoundConfig.deadline_s``), is not asked to train: its reply is the
    error the coordinator would get (code :data:`SIM_ERROR_CODE`); so is a site still
    busy when ``timeout_s`` runs out, whatever the policy. After each round of
    train instructions the virtual clock moves by the round's length (its slowest site,
    at most the deadline) plus ``round_overhead_s``.

    Args:
        cluster: The simulated cluster (see :func:`build_cluster`).
        round_overhead_s: Virtual seconds added per round for telemetry and evaluation.
    """

    cluster: SimCluster | None = None
    round_overhead_s: float = 5.0
    timeout_s: float = 0.0
    """Virtual seconds the coordinator waits for a site at most (the scenario's
    ``engine.round_timeout``); 0: no limit beyond the scheduler's deadline."""
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    """Every simulated train outcome: round, site, epochs, deadline and the :class:`Outcome` fields."""
    _examples: dict[str, int] = field(init=False, default_factory=dict)
    _planned: dict[str, tuple[Outcome, float]] = field(init=False, default_factory=dict)
    _environments: dict[int, SimulatedEnvironment] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cluster is None:
            raise ValueError("SimulatedGrid needs a cluster (see build_cluster)")
        missing = sorted({s.site_id for s in self._sites.values()} - set(self.cluster.site_ids))
        if missing:
            raise ValueError(f"the simulated cluster has no site(s) {', '.join(missing)}")
        self._environments = {
            nid: SimulatedEnvironment(self.cluster, site.site_id)
            for nid, site in self._sites.items()
        }

    def environment_for(self, context: Context) -> SiteEnvironment | None:
        """The simulated environment of the site whose context this is (``None``: not ours)."""
        site = self._sites.get(context.node_id)
        if site is None or site.context is not context:
            return None
        return self._environments[context.node_id]

    @property
    def sim(self) -> SimCluster:
        """The cluster (set at construction)."""
        assert self.cluster is not None
        return self.cluster

    @property
    def clock_s(self) -> float:
        """Virtual seconds since the start of the run."""
        return self.sim.now

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        msgs = list(messages)
        ids = list(super().push_messages(msgs))
        trains = [
            (m, mid) for m, mid in zip(msgs, ids, strict=True) if m.metadata.message_type == R.TRAIN
        ]
        if trains:
            self._plan_round(trains)
        return ids

    def _plan_round(self, trains: list[tuple[Message, str]]) -> None:
        """Run one round's train instructions on the simulated cluster and move its clock."""
        work: dict[str, Work] = {}
        meta: dict[str, tuple[str, int, float, int]] = {}
        for msg, mid in trains:
            site_id = self._sites[msg.metadata.dst_node_id].site_id
            cfg = R.RoundConfig.from_record(msg.content[R.CONFIG])
            epochs = cfg.epochs or cfg.training.local_epochs
            nbytes = R.message_nbytes(msg)
            device = cfg.device if 0 <= cfg.device < len(self.sim.site(site_id).devices) else None
            if device is not None and device != self.sim.current_device(site_id):
                self.sim.migrate(site_id, device)  # its telemetry now reads the new device
            work[site_id] = Work(
                steps=epochs,
                examples_per_step=max(self._examples.get(site_id, 1), 1),
                device=device,
                upload_bytes=nbytes,
                download_bytes=nbytes,
                headroom=min(max(cfg.headroom, 0.0), 0.95),
            )
            limit = cfg.deadline_s if cfg.deadline_s > 0 else 0.0
            if self.timeout_s > 0:
                limit = min(limit, self.timeout_s) if limit > 0 else self.timeout_s
            meta[site_id] = (mid, epochs, limit, cfg.round)
        outcomes = self.sim.run(work)
        deadline = max((m[2] for m in meta.values()), default=0.0)
        lengths = [o.duration_s for o in outcomes.values()]
        length = max(lengths, default=0.0)
        if deadline > 0:
            length = min(length, deadline)
        for site_id, outcome in outcomes.items():
            mid, epochs, site_deadline, rnd = meta[site_id]
            self._planned[mid] = (outcome, site_deadline)
            self.outcomes.append(
                {"round": rnd, "epochs": epochs, "deadline_s": site_deadline, **outcome.as_dict()}
            )
        self.sim.advance(length + self.round_overhead_s)

    def _deliver(self, ins: Message) -> Message:
        site = self._sites[ins.metadata.dst_node_id]
        mtype = ins.metadata.message_type
        if mtype in (R.TELEMETRY, R.EVALUATE):  # an evaluate reply may carry telemetry too
            reply = super()._deliver(ins)
            if not reply.has_error():
                self._note_examples(site.site_id, mtype, reply)
            return reply
        planned = self._planned.pop(ins.metadata.message_id, None) if mtype == R.TRAIN else None
        if planned is None:
            return super()._deliver(ins)
        outcome, deadline = planned
        if outcome.failed:
            return self._error(ins, f"simulated dropout: {outcome.reason}")
        if deadline > 0 and outcome.duration_s > deadline:
            return self._error(
                ins,
                f"no update by the round deadline: simulated {outcome.duration_s:.1f} s > "
                f"{deadline:.1f} s (waited {outcome.started_after_s:.1f} s for the device)",
            )
        env = self._environments[ins.metadata.dst_node_id]
        env.seconds = float(outcome.duration_s)
        try:
            reply = super()._deliver(ins)
        finally:
            env.seconds = None
        if not reply.has_error():  # a train reply may carry the next round's telemetry
            self._note_examples(site.site_id, mtype, reply)
        return reply

    def _note_examples(self, site_id: str, mtype: str, reply: Message) -> None:
        """Keep the training-set size a telemetry reply (or the telemetry another reply carries) gives."""
        content = reply.content if mtype == R.TELEMETRY else carry.telemetry_or_none(reply.content)
        if content is None:
            return
        try:
            self._examples[site_id] = int(R.Telemetry.from_content(content).num_train_examples)
        except (ValueError, KeyError, TypeError):
            pass  # the coordinator reports the malformed reply

    @staticmethod
    def _error(ins: Message, reason: str) -> Message:
        return wire_copy(Message(Error(code=SIM_ERROR_CODE, reason=reason), reply_to=ins))

    def stats(self) -> dict[str, Any]:
        """Per-run figures of the simulated work: mean wait for devices, dropouts, misses."""
        waits = [o["started_after_s"] for o in self.outcomes]
        return {
            "virtual_time_s": self.clock_s,
            "train_outcomes": len(self.outcomes),
            "mean_wait_s": sum(waits) / len(waits) if waits else 0.0,
            "dropouts": sum(1 for o in self.outcomes if o["failed"]),
            "deadline_misses": sum(
                1
                for o in self.outcomes
                if not o["failed"] and o["deadline_s"] > 0 and o["duration_s"] > o["deadline_s"]
            ),
        }


class SimulatedGridFactory:
    """A ``make_grid`` for :func:`fedcore.engines.inprocess.run_inprocess` that builds a :class:`SimulatedGrid`.

    Pass :meth:`environment_for` to ``make_client_app`` so the sites read their simulated
    devices and clock.

    Args:
        scenario: A scenario with a ``simulator`` section.

    Raises:
        ValueError: the scenario has no ``simulator`` section.
    """

    def __init__(self, scenario: Scenario) -> None:
        if scenario.simulator is None:
            raise ValueError("the scenario has no simulator section")
        self.scenario = scenario
        self.spec: SimulatorSpec = scenario.simulator
        self.grid: SimulatedGrid | None = None

    def __call__(self, **kwargs: Any) -> SimulatedGrid:
        self.grid = SimulatedGrid(
            **kwargs,
            cluster=build_cluster(self.scenario),
            round_overhead_s=self.spec.round_overhead_s,
            timeout_s=self.scenario.engine.round_timeout,
        )
        return self.grid

    def environment_for(self, context: Context) -> SiteEnvironment | None:
        """The simulated environment of a site of the grid built last (``None`` before)."""
        return None if self.grid is None else self.grid.environment_for(context)


def simulated_grid_factory(scenario: Scenario) -> SimulatedGridFactory:
    """The :class:`SimulatedGridFactory` of ``scenario``."""
    return SimulatedGridFactory(scenario)


__all__ = [
    "SimulatedEnvironment",
    "SimulatedGrid",
    "SimulatedGridFactory",
    "build_cluster",
    "simulated_grid_factory",
]
