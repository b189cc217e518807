"""The round driver: telemetry -> select -> train -> aggregate -> evaluate -> persist, over any protection.

A round after the first is one exchange with the sites (:mod:`coordinator.carrying`):
each chosen site's train instruction also asks it to evaluate the model it brings (the
last round's, which is then recorded) and for its telemetry of the next round; the
sites not chosen evaluate and answer telemetry in the same batch. The first round also
queries telemetry, and the last ends with one evaluate exchange of the final model.
Under SecAgg+, whose stages carry the train instruction, a round is its four stages and
an evaluate exchange whose replies carry the next round's telemetry. A telemetry query
goes only to connected nodes without carried telemetry: every node in the first round
of a run (or of a resume), then a site that rejoined or could not answer.

A round's record is written once its model is evaluated, so with one exchange per round
round ``r`` appears (in ``rounds.jsonl``, to observers) when round ``r + 1`` has trained;
a checkpoint keeps the record still waiting for its evaluation.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid

from coordinator.aggregation import pool_replies
from coordinator.auth import ReplyVerifier
from coordinator.carrying import Carrier
from coordinator.errors import FederationError
from coordinator.exchange import CountingGrid, Send, exchange_batch
from coordinator.exports import read_export_replies
from coordinator.protection import (
    Collected,
    Protection,
    ProtectionInputs,
    TrainRound,
    build_protection,
)
from coordinator.protection.base import Exchange, ExchangeResult
from coordinator.round_notes import SiteSummaries, log_round
from coordinator.state import Checkpoint, StateStore
from coordinator.telemetry_checks import _fmt, read_telemetry
from fedcore import carry
from fedcore import records as R
from fedcore.config import Scenario
from scheduling.base import Candidate, Selection, Selector, SiteResult, schedule_digest

log = logging.getLogger(__name__)

NOT_CONNECTED = "not connected: no telemetry this round"
"""The reason a round record gives for a scenario site that did not answer telemetry at all."""

PENDING_KEY = "pending_round"
"""Checkpoint key: the record of the last round trained, still waiting for its evaluation."""

RoundObserver = Callable[[R.RoundRecord], None]

__all__ = ["FederationError", "RoundDriver", "RoundObserver", "read_telemetry"]


class RoundDriver:
    """Drives a scenario's rounds over any Flower ``Grid`` and any protection.

    The driver waits for nodes, asks for telemetry, schedules, hands the round to the
    protection (which trains, checks and aggregates), evaluates and checkpoints. It
    never looks at the privacy mode: that is the protection's business. A round's
    evaluation and the next round's telemetry ride on the next train batch, so a round
    after the first is one exchange (see the module docstring).

    Args:
        grid: Where messages go (in-process, deployment...).
        scenario: The validated scenario.
        selector: Chooses each round's sites.
        out_dir: Run directory (checkpoints, round logs, final model).
        initial_arrays: The global model before round 1.
        rounds: Number of rounds (default: the scenario's).
        observer: Called with each finished round's record.
        wait_for_sites: Seconds to wait for every scenario site to connect.
        registered_keys: Site id -> OpenSSH node public key (coordinator kit). When given,
            every telemetry and train reply must be signed by the site it names.
        ckks_context: TenSEAL context without secret key (coordinator kit); needed by
            privacy mode ``ckks``.
        protection: The protection to use (default: built from the scenario).
    """

    def __init__(
        self,
        grid: Grid,
        scenario: Scenario,
        selector: Selector,
        out_dir: Path,
        initial_arrays: Mapping[str, np.ndarray],
        *,
        rounds: int | None = None,
        observer: RoundObserver | None = None,
        wait_for_sites: float = 120.0,
        registered_keys: Mapping[str, bytes] | None = None,
        ckks_context: Any = None,
        protection: Protection | None = None,
    ) -> None:
        self.grid = grid
        self.scenario = scenario
        self.selector = selector
        self.store = StateStore(out_dir)
        self.rounds = rounds or scenario.rounds
        self.observer = observer
        self.wait_for_sites = wait_for_sites
        self.timeout = scenario.engine.round_timeout
        self.poll_interval = 0.05
        self.members = {s.id for s in scenario.sites}
        self.history: list[R.RoundRecord] = []
        # why the run resumed from an older round than the newest stored (damaged state)
        self.state_recovered: str | None = None
        self.schedule: list[dict[str, Any]] = []
        # sites keep per-run state (the CKKS model copy) under this key: unique per run, kept on resume
        self.run_key = f"{scenario.fingerprint()}-{secrets.token_hex(4)}"
        self.verifier = ReplyVerifier(registered_keys)
        self.protection = protection or build_protection(
            ProtectionInputs(scenario, initial_arrays, self.store.state, ckks_context)
        )
        self._last_candidates: list[Candidate] = []
        self._selection: Selection | None = None
        # node id -> the site it answered telemetry for: names a node that fails later by its site
        self._site_of_node: dict[int, str] = {}
        # telemetry the last replies carried: (the round it is for, node id -> content)
        self._carried: tuple[int, dict[int, RecordDict]] = (0, {})
        # carried telemetry refused as malformed: (the round it was for, node id -> why)
        self._carried_refused: tuple[int, dict[int, str]] = (0, {})
        # telemetry refused while gathering the round's candidates, by site or node (for the record)
        self._telemetry_refused: dict[str, list[str]] = {}
        self._summaries = SiteSummaries()  # sites' data-quality and serving summaries
        # the record of the last round trained, until its model's evaluation comes in
        self._pending: dict[str, Any] | None = None
        # finished records not yet written to the round logs and observer (after the checkpoint)
        self._unpublished: list[R.RoundRecord] = []
        self._exchanges = 0
        """Exchanges with the sites so far (each SecAgg+ stage counts once)."""

    @property
    def global_arrays(self) -> dict[str, np.ndarray]:
        """The arrays the protection checkpoints (the global model where it holds one)."""
        return self.protection.global_arrays

    # ------------------------------------------------------------------ messaging

    def exchange(
        self, targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> ExchangeResult:
        """Send one message per node, wait for replies (or the round timeout).

        Returns:
            Replies by node, errors by node, bytes sent down, bytes received up.
        """
        return self._send([(n, c, message_type) for n, c in targets], round_)

    def _send(self, sends: Sequence[Send], round_: int) -> ExchangeResult:
        """One exchange of a batch that may mix message types (see :func:`exchange_batch`)."""
        if sends:
            self._exchanges += 1
        return exchange_batch(self.grid, sends, round_, self.timeout, self.poll_interval)

    # ------------------------------------------------------------------ phases

    def wait_for_nodes(self) -> list[int]:
        """Wait until every scenario site is connected (or the wait runs out)."""
        deadline = time.monotonic() + self.wait_for_sites
        want = len(self.scenario.sites)
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= want or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if len(nodes) < self.scenario.scheduler.min_sites:
            raise FederationError(
                f"only {len(nodes)} site(s) connected after {self.wait_for_sites:.0f}s; "
                f"the scenario needs at least scheduler.min_sites={self.scenario.scheduler.min_sites}"
            )
        if len(nodes) < want:
            log.warning("%d of %d sites connected; going on without the others", len(nodes), want)
        return nodes

    def telemetry(
        self, round_: int, nodes: Sequence[int]
    ) -> tuple[list[Candidate], dict[str, list[str]], int, int]:
        """Every connected node's telemetry for ``round_``: candidates, problems by site/node, bytes.

        Telemetry that the last evaluate replies carried for ``round_`` is used as it is;
        only the other nodes are queried (none, when every node's telemetry came along).
        Both are checked alike: a member site, its signature, one node per site.

        Returns:
            Candidates (sorted by site), problems by site or node, bytes sent down and up.
        """
        carried_round, carried = self._carried
        refused_round, refused = self._carried_refused
        self._carried = (0, {})
        self._carried_refused = (0, {})
        held = {n: carried[n] for n in nodes if n in carried} if carried_round == round_ else {}
        # telemetry that came along malformed was left out (the node is asked again): noted
        notes = {
            self._who(n): [f"carried telemetry refused, asked again: {why}"]
            for n, why in (refused.items() if refused_round == round_ else ())
        }
        ask = [n for n in nodes if n not in held]
        content = R.telemetry_instruction(round_, self.run_key, self.scenario.task)
        replies, errors, down, up = self.exchange(((n, content) for n in ask), R.TELEMETRY, round_)
        problems: dict[str, list[str]] = {self._who(n): [e] for n, e in errors.items()}
        cands: dict[str, Candidate] = {}
        answers = [*held.items(), *((nid, rep.content) for nid, rep in replies)]
        for nid, answer in answers:
            gate = self.scenario.data_quality
            tel, refusal = read_telemetry(
                answer, self.members, self.verifier, round_, self.run_key, gate
            )
            if tel is not None:  # verified: its summaries are shown in the round record
                self._summaries.seen(tel.site_id, tel.quality, tel.serving)
            if refusal is not None:  # named by its site once the reply is known to be the site's
                problems[tel.site_id if tel is not None else self._who(nid)] = [refusal]
                continue
            assert tel is not None
            if tel.site_id in cands:
                problems[tel.site_id] = [f"two nodes claim site {tel.site_id!r}; keeping the first"]
                continue
            self.protection.observe_telemetry(tel)
            self._site_of_node[nid] = tel.site_id
            cands[tel.site_id] = Candidate(
                tel.site_id, nid, tel.num_train_examples, dict(tel.readings)
            )
        self._telemetry_refused = {
            who: [*notes.get(who, []), *problems.get(who, [])] for who in {*notes, *problems}
        }
        return sorted(cands.values(), key=lambda c: c.site_id), problems, down, up

    def _count_exchange(self) -> None:
        self._exchanges += 1

    def _who(self, node_id: int) -> str:
        """The site a node answered for before (its problems are then the site's), else ``node N``."""
        return self._site_of_node.get(node_id, f"node {node_id}")

    def absent_sites(
        self, candidates: Sequence[Candidate], problems: Mapping[str, list[str]]
    ) -> dict[str, list[str]]:
        """Scenario sites with neither a telemetry answer nor a problem of their own this round.

        A site that is not connected (or whose node was never named by a reply) has no entry
        in ``problems``; without this it would vanish from the round record.
        """
        answered = {c.site_id for c in candidates}
        return {
            site: [NOT_CONNECTED]
            for site in sorted(self.members)
            if site not in answered and site not in problems
        }

    def round_config(
        self, round_: int, weight: float = 1.0, site: str | None = None
    ) -> R.RoundConfig:
        """The settings a site receives with this round's instructions (with its share of work)."""
        sel = self._selection or Selection([])
        return R.RoundConfig(
            round=round_,
            seed=self.scenario.seed,
            task=self.scenario.task,
            training=self.scenario.training,
            privacy=self.scenario.privacy,
            run_key=self.run_key,
            weight=weight,
            max_sites=len(self.scenario.sites),
            export=self.scenario.export,
            device=sel.devices.get(site, -1) if site else -1,
            epochs=sel.epochs.get(site, 0) if site else 0,
            deadline_s=sel.deadline_s or 0.0,
            headroom=sel.headroom,
        )

    def epochs_of(self, site: str) -> int:
        """Local epochs ``site`` runs this round."""
        given = self._selection.epochs.get(site, 0) if self._selection is not None else 0
        return given if given > 0 else self.scenario.training.local_epochs

    def train_round(
        self, round_: int, chosen: Sequence[Candidate], exchange: Exchange | None = None
    ) -> TrainRound:
        """What the protection needs to train ``round_`` over the ``chosen`` sites.

        ``exchange`` replaces the plain one (the round's :class:`~coordinator.carrying.Carrier`).
        """

        def verify(reply: R.TrainReply, content: RecordDict) -> str | None:
            return self.verifier.check(
                R.TRAIN, reply.site_id, round_, self.run_key, reply.digest(), content
            )

        def config_for(site: Candidate | None, weight: float) -> R.RoundConfig:
            if site is None:
                return self.round_config(round_)
            return self.round_config(round_, weight, site.site_id)

        return TrainRound(
            round=round_,
            chosen=chosen,
            config_for=config_for,
            exchange=exchange or self.exchange,
            verify=verify,
            epochs_of=self.epochs_of,
            grid=CountingGrid(self.grid, self._count_exchange),
            timeout=self.timeout,
        )

    def evaluate(
        self, round_: int, sites: Sequence[Candidate], telemetry_for: int | None = None
    ) -> tuple[dict[str, Any], dict[str, list[str]], int, int]:
        """Federated evaluation of the global model in an exchange of its own.

        Args:
            round_: The round evaluated.
            sites: The sites that evaluate.
            telemetry_for: Ask each site also for its telemetry of this round (the next
                one); what the replies carry is kept for :meth:`telemetry`, unchecked.

        Returns:
            Pooled metrics, problems by site, bytes down and up.
        """
        cfg = self.round_config(round_)

        def instruction(c: Candidate) -> RecordDict:
            content = self.protection.instruction(cfg, c)
            return (
                content
                if telemetry_for is None
                else carry.request_telemetry(content, telemetry_for)
            )

        replies, errors, down, up = self.exchange(
            ((c.node_id, instruction(c)) for c in sites), R.EVALUATE, round_
        )
        if telemetry_for is not None:  # a node whose reply carried none (or garbage) is asked
            held: dict[int, RecordDict] = {}
            refused: dict[int, str] = {}
            for nid, rep in replies:
                try:
                    tel = carry.carried_telemetry(rep.content)
                except ValueError as exc:
                    refused[nid] = str(exc)
                    continue
                if tel is not None:
                    held[nid] = tel
            self._carried = (telemetry_for, held)
            self._carried_refused = (telemetry_for, refused)
        pooled, problems = self._pool(round_, sites, [(n, r.content) for n, r in replies], errors)
        return pooled, problems, down, up

    def _pool(
        self,
        round_: int,
        sites: Sequence[Candidate],
        replies: Sequence[tuple[int, RecordDict]],
        errors: Mapping[int, str],
    ) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """Round ``round_``'s evaluations pooled (see :func:`~coordinator.aggregation.pool_replies`)."""
        site_of = {c.node_id: c.site_id for c in sites}

        def verify(reply: R.EvalReply, content: RecordDict) -> str | None:
            # signed over the round whose model was evaluated: a replay of another round fails
            return self.verifier.check(
                R.EVALUATE, reply.site_id, round_, self.run_key, reply.digest(), content
            )

        pooled, parsed, problems = pool_replies(
            replies, errors, site_of, self.scenario.task.threshold, verify
        )
        model_problems = self.protection.check_evaluations(round_, parsed)
        if model_problems:
            problems.setdefault("model", []).extend(model_problems)
        return pooled, problems

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        """Run all rounds (resuming from a checkpoint of the same scenario); returns the result."""
        fp = self.scenario.fingerprint()
        start_round = 1
        resumed = self.store.load(fp)
        if resumed is not None:
            cp, arrays = resumed
            self.history = cast(list[R.RoundRecord], cp.history)
            self.schedule = cp.schedule
            self.run_key = str(cp.extra.get("run_key", self.run_key))
            self.protection.load_state_dict(cp.extra, arrays)
            self.selector.load_state_dict(cp.extra.get("selector", {}))
            pending = cp.extra.get(PENDING_KEY)
            self._pending = dict(pending) if isinstance(pending, Mapping) else None
            start_round = cp.round + 1
            log.info("resuming after round %d from %s", cp.round, self.store.state)
        recovered = self.store.recovered
        self.state_recovered = recovered.message if recovered is not None else None
        self.store.reset_logs(self.history)
        try:
            nodes = self.wait_for_nodes()
            for rnd in range(start_round, self.rounds + 1):
                self._one_round(rnd, nodes)
                nodes = sorted(self.grid.get_node_ids())
            if self._pending is not None:  # resumed after the last round trained
                self._evaluate_last(nodes)
        except FederationError as exc:
            self._stopped_unevaluated(str(exc))
            result = self._result("failed", str(exc))
            self.store.write_result(result)
            raise
        result = self._result("completed", None)
        if self.protection.holds_global_model:
            result["model"] = self.store.save_model(self.protection.global_arrays).name
        if self.scenario.export.enabled and self.scenario.export.int8:
            result["exports"] = self.export_models(nodes)
        elif not self.protection.holds_global_model:
            result["model_location"] = (
                f"sites: in {self.protection.name} mode only the sites can decrypt the global "
                "model; each keeps it in its state directory under global/<run key>/model.safetensors"
            )
        self.store.write_result(result)
        return result

    def export_models(self, nodes: Sequence[int]) -> dict[str, Any]:
        """Ask every site to export the final model for its own device; returns manifests by site.

        A site that fails to export is reported with its reason; the run stays completed.
        """
        cands = self._last_candidates
        if not cands:
            cands, *_ = self.telemetry(self.rounds, nodes)
        cfg = self.round_config(self.rounds)
        replies, errors, _, _ = self.exchange(
            ((c.node_id, self.protection.instruction(cfg, c)) for c in cands),
            R.EXPORT,
            self.rounds,
        )
        return read_export_replies(replies, errors, {c.node_id: c.site_id for c in cands})

    def privacy_summary(self) -> dict[str, Any]:
        """What protected this run's updates (parameters and running figures, never keys)."""
        return {
            "mode": self.protection.name,
            "authenticated": self.verifier.enabled,
            **self.protection.summary(),
        }

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            **self.protection.state_dict(),
            "selector": self.selector.state_dict(),
        }

    def _result(self, status: str, error: str | None) -> dict[str, Any]:
        stats = getattr(self.grid, "stats", None)  # a simulated consortium's figures, if any
        return {
            "status": status,
            "error": error,
            "scenario": self.scenario.name,
            "fingerprint": self.scenario.fingerprint(),
            "run_key": self.run_key,
            "rounds": self.history,
            "schedule": self.schedule,
            "privacy": self.privacy_summary(),
            "model": None,
            **({"simulation": stats()} if callable(stats) else {}),
            # why the run resumed from an older round than the newest stored one, if it did
            **({"state_recovered": self.state_recovered} if self.state_recovered else {}),
        }

    def _carrier(self, rnd: int, candidates: Sequence[Candidate]) -> Carrier | None:
        """The exchange round ``rnd`` trains through, when the protection lets the batch carry."""
        if not self.protection.evaluation_rides_on_train:
            return None
        pending = None if self._pending is None else int(self._pending["round"])
        cfg = self.round_config(pending or rnd)
        by_node = {c.node_id: c for c in candidates}
        next_round = rnd + 1 if rnd < self.rounds else None
        return Carrier(
            send=self._send,
            nodes=[c.node_id for c in candidates],
            evaluate_round=pending,
            telemetry_round=next_round,
            evaluate_instruction=lambda nid: self.protection.instruction(cfg, by_node[nid]),
            telemetry_instruction=lambda nid: R.telemetry_instruction(
                next_round or rnd, self.run_key, self.scenario.task
            ),
        )

    def _settle_pending(
        self, rnd: int, candidates: Sequence[Candidate], carrier: Carrier | None
    ) -> tuple[int, int]:
        """Record the evaluation of the last round's model, before round ``rnd`` aggregates.

        The evaluation came with the train batch (``carrier``); without it (the protection
        sent no train batch through the carrier) it is asked for now. Returns the bytes
        down and up of that extra exchange (0 when carried).
        """
        if carrier is not None and carrier.used:
            self._carried = (rnd + 1, carrier.telemetry)  # the carrier serves this round only
            self._carried_refused = (rnd + 1, carrier.telemetry_errors)
        if self._pending is None:
            return 0, 0
        pending, self._pending = self._pending, None
        evaluated = int(pending["round"])
        down = up = 0
        if carrier is not None and carrier.used:
            carried = carrier.evaluations, carrier.eval_errors
            ev, problems = self._pool(evaluated, candidates, *carried)
        else:
            ev, problems, down, up = self.evaluate(evaluated, candidates)
        self._finish(pending, ev, problems)
        return down, up

    def _finish(
        self, record: dict[str, Any], ev: dict[str, Any], problems: dict[str, list[str]]
    ) -> None:
        """Complete a round's record with its model's evaluation; it is published after the next checkpoint."""
        record["per_site"] = ev.pop("per_site", {})
        record["eval_loss"] = ev.get("loss", float("nan"))
        record["pr_auc"] = ev.get("pr_auc", float("nan"))
        record["roc_auc"] = ev.get("roc_auc", float("nan"))
        record["eval_problems"] = problems  # evaluations left out, and why
        for entry in reversed(self.schedule):
            if entry.get("round") == record["round"]:
                entry["eval_problems"] = problems
                break
        done = cast(R.RoundRecord, record)
        self.history.append(done)
        self._unpublished.append(done)

    def _publish(self) -> None:
        """Write finished records to the round logs, the log and the observer (after a checkpoint)."""
        while self._unpublished:
            done = self._unpublished.pop(0)
            self.store.append_round(done)
            log_round(done)
            if self.observer is not None:
                self.observer(done)

    def _evaluate_last(self, nodes: Sequence[int]) -> None:
        """Evaluate the model still pending when no round is left to carry it (a resume)."""
        if self._pending is None:
            return
        cands = self._last_candidates or self.telemetry(int(self._pending["round"]), nodes)[0]
        self._settle_pending(self.rounds, cands, None)
        self._save(int(self.history[-1]["round"]))
        self._publish()

    def _stopped_unevaluated(self, why: str) -> None:
        """The run failed: finished records are published, the pending one unevaluated.

        The checkpoint still holds the pending record: a resume evaluates it.
        """
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._finish(pending, {}, {"model": [f"not evaluated: {why}"]})
        self._publish()

    def _save(self, rnd: int) -> None:
        """Checkpoint after round ``rnd``: the model, finished records and the pending one."""
        extra = self._checkpoint_extra()
        if self._pending is not None:
            extra[PENDING_KEY] = self._pending
        self.store.save(
            Checkpoint(
                self.scenario.fingerprint(),
                rnd,
                cast(list[dict[str, Any]], self.history),
                self.schedule,
                extra,
            ),
            self.protection.global_arrays,
        )

    def _train(
        self,
        rnd: int,
        selection: Selection,
        candidates: Sequence[Candidate],
        problems: dict[str, list[str]],
        absent: Mapping[str, list[str]],
    ) -> tuple[Collected, int, int]:
        """Train and aggregate one round through the protection (or keep the model: skip).

        The last round's model is evaluated (carried by the train batch) before this
        round's aggregate replaces it. Returns the collected round and the bytes down and
        up of any evaluate exchange that the batch could not carry.
        """
        carrier = self._carrier(rnd, candidates)
        collected = self.protection.collect(self.train_round(rnd, selection.chosen, carrier))
        edown, eup = self._settle_pending(rnd, candidates, carrier)
        for who, reasons in problems.items():
            collected.rejected.setdefault(who, []).extend(f"telemetry: {r}" for r in reasons)
        for who, reasons in absent.items():
            collected.rejected.setdefault(who, []).extend(reasons)
        min_sites = self.scenario.scheduler.min_sites
        if len(collected.sites) >= min_sites:
            self.protection.aggregate(rnd, collected)
            return collected, edown, eup
        if self.scenario.scheduler.short_round != "skip" or not self.protection.can_skip_round:
            raise FederationError(
                f"round {rnd}: only {len(collected.sites)} valid update(s), need scheduler.min_sites={min_sites}; "
                f"left out: {_fmt(collected.rejected)}. Rounds 1..{rnd - 1} are saved in {self.store.out}"
            )
        log.warning(
            "round %d: only %d valid update(s), need %d; keeping the global model "
            "(scheduler.short_round: skip); left out: %s",
            rnd,
            len(collected.sites),
            min_sites,
            _fmt(collected.rejected),
        )
        return collected.skipped(), edown, eup

    def _one_round(self, rnd: int, nodes: Sequence[int]) -> None:
        t0 = time.perf_counter()
        exchanges = self._exchanges
        candidates, problems, tdown, tup = self.telemetry(rnd, nodes)
        absent = self.absent_sites(candidates, problems)
        self._last_candidates = candidates
        min_sites = self.scenario.scheduler.min_sites
        if len(candidates) < min_sites:
            raise FederationError(
                f"round {rnd}: only {len(candidates)} site(s) answered telemetry, need "
                f"scheduler.min_sites={min_sites}; problems: {_fmt({**problems, **absent})}"
            )
        selection = self.selector.select(rnd, candidates)
        self._selection = selection
        collected, edown, eup = self._train(rnd, selection, candidates, problems, absent)
        results = {}
        for c in selection.chosen:
            rep = collected.reports.get(c.site_id)
            results[c.site_id] = SiteResult(
                c.site_id,
                None if rep is None else rep.seconds,
                None if rep is None else rep.loss,
                self.epochs_of(c.site_id),
                c.num_train_examples,
                None
                if c.site_id in collected.sites
                else "; ".join(collected.rejected.get(c.site_id, ["no update"])),
            )
        self.selector.observe(rnd, results)
        figures = self.protection.round_figures()
        last = rnd == self.rounds
        evaluated = None  # its evaluation rides on the next round's train batch
        if last or not self.protection.evaluation_rides_on_train:  # an exchange of its own
            *evaluated, down, up = self.evaluate(rnd, candidates, None if last else rnd + 1)
            edown, eup = edown + down, eup + up
        record: dict[str, Any] = {
            "round": rnd,
            "sites": collected.sites,
            "loss": collected.loss,
            "eval_loss": float("nan"),
            "pr_auc": float("nan"),
            "roc_auc": float("nan"),
            "seconds": round(time.perf_counter() - t0, 3),
            "bytes_up": tup + collected.bytes_up + eup,
            "bytes_down": tdown + collected.bytes_down + edown,
            "exchanges": self._exchanges - exchanges,
            "rejected": collected.rejected,
            "telemetry_problems": self._telemetry_refused,
            **self._summaries.notes(),
            "per_site": {},
            **figures,
            "schedule": schedule_digest(self.selector.name, selection, results, len(candidates)),
        }
        clock = getattr(self.grid, "clock_s", None)
        if clock is not None:  # a simulated consortium: its virtual time after this round
            record["virtual_time_s"] = round(float(clock), 3)
        self.schedule.append(
            {
                "round": rnd,
                **selection.as_dict(),
                "measured_s": {
                    k: round(r.seconds, 3) for k, r in results.items() if r.seconds is not None
                },
                "telemetry_problems": self._telemetry_refused,
                "eval_problems": {},
            }
        )
        if evaluated is None:
            self._pending = record
        else:
            self._finish(record, *evaluated)
        self._save(rnd)
        self._publish()
