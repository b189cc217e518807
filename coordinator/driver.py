"""The round driver: telemetry -> select -> train -> validate -> aggregate -> evaluate -> persist."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from coordinator.aggregation import weighted_average, weighted_mean
from coordinator.state import Checkpoint, StateStore
from coordinator.validation import check_train_reply
from fedcore import records as R
from fedcore.config import Scenario
from fedcore.metrics import metrics_from_histograms
from scheduling.base import Candidate, Selector
from secure.modes import warn_if_plaintext

log = logging.getLogger(__name__)

RoundObserver = Callable[[dict[str, Any]], None]


class FederationError(RuntimeError):
    """The federation cannot go on (too few sites, no sites at all...); the message says why."""


@dataclass
class _Replies:
    ok: list[tuple[Candidate, RecordDict]] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


class RoundDriver:
    """Drives a scenario's rounds over any Flower ``Grid``.

    Args:
        grid: Where messages go (in-process, deployment...).
        scenario: The validated scenario.
        selector: Chooses each round's sites.
        out_dir: Run directory (checkpoints, round logs, final model).
        initial_arrays: The global model before round 1.
        rounds: Number of rounds (default: the scenario's).
        observer: Called with each finished round's record.
        wait_for_sites: Seconds to wait for every scenario site to connect.
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
    ) -> None:
        self.grid = grid
        self.scenario = scenario
        self.selector = selector
        self.store = StateStore(out_dir)
        self.global_arrays = {k: np.array(v, copy=True) for k, v in initial_arrays.items()}
        self.rounds = rounds or scenario.rounds
        self.observer = observer
        self.wait_for_sites = wait_for_sites
        self.timeout = scenario.engine.round_timeout
        self.poll_interval = 0.2
        self.members = {s.id for s in scenario.sites}
        self.history: list[dict[str, Any]] = []
        self.schedule: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ messaging

    def _exchange(
        self, targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> tuple[list[tuple[int, Message]], dict[int, str], int, int]:
        """Send one message per node, wait for replies.

        Returns:
            (replies by node, errors by node, bytes sent down, bytes received up).
        """
        msgs: list[Message] = []
        down = 0
        for nid, content in targets:
            msg = Message(content, nid, message_type, group_id=str(round_))
            down += R.message_nbytes(msg)
            msgs.append(msg)
        if not msgs:
            return [], {}, 0, 0
        ids = list(self.grid.push_messages(msgs))
        node_of = {
            (m.metadata.message_id or mid): m.metadata.dst_node_id
            for m, mid in zip(msgs, ids, strict=False)
        }
        pending = set(node_of)
        out: list[tuple[int, Message]] = []
        errors: dict[int, str] = {}
        up = 0
        deadline = time.monotonic() + self.timeout
        while pending:
            for rep in self.grid.pull_messages(list(pending)):
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
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        for mid in pending:
            errors[node_of[mid]] = f"no reply within {self.timeout:.0f}s"
        return out, errors, down, up

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
    ) -> tuple[list[Candidate], dict[str, list[str]]]:
        """Ask every connected node for telemetry; returns candidates and problems by site/node."""
        replies, errors, _, _ = self._exchange(
            ((n, R.telemetry_instruction(round_)) for n in nodes), R.TELEMETRY, round_
        )
        problems: dict[str, list[str]] = {f"node {n}": [e] for n, e in errors.items()}
        cands: dict[str, Candidate] = {}
        for nid, rep in replies:
            try:
                tel = R.Telemetry.from_content(rep.content)
            except (ValueError, KeyError, TypeError) as exc:
                problems[f"node {nid}"] = [f"malformed telemetry: {exc}"]
                continue
            if tel.site_id not in self.members:
                problems[f"node {nid}"] = [
                    f"site id {tel.site_id!r} is not a member of this scenario"
                ]
                continue
            if tel.site_id in cands:
                problems[tel.site_id] = [f"two nodes claim site {tel.site_id!r}; keeping the first"]
                continue
            cands[tel.site_id] = Candidate(
                tel.site_id, nid, tel.num_train_examples, dict(tel.readings)
            )
        return sorted(cands.values(), key=lambda c: c.site_id), problems

    def round_config(self, round_: int) -> R.RoundConfig:
        """The settings every site receives with this round's instructions."""
        return R.RoundConfig(
            round=round_,
            seed=self.scenario.seed,
            task=self.scenario.task.model_dump(mode="json"),
            training=self.scenario.training.model_dump(mode="json"),
        )

    def train(
        self, round_: int, chosen: Sequence[Candidate]
    ) -> tuple[list[tuple[str, R.TrainReply]], dict[str, list[str]], int, int]:
        """Send train instructions; returns accepted replies (sorted by site) and rejections."""
        cfg = self.round_config(round_)
        content = R.train_instruction(self.global_arrays, cfg)
        by_node = {c.node_id: c for c in chosen}
        replies, errors, down, up = self._exchange(
            ((c.node_id, content) for c in chosen), R.TRAIN, round_
        )
        rejected: dict[str, list[str]] = {by_node[n].site_id: [e] for n, e in errors.items()}
        accepted: list[tuple[str, R.TrainReply]] = []
        for nid, rep in replies:
            target = by_node[nid]
            try:
                parsed = R.TrainReply.from_content(rep.content)
            except (ValueError, KeyError, TypeError) as exc:
                rejected[target.site_id] = [f"malformed reply: {exc}"]
                continue
            reasons = check_train_reply(parsed, self.global_arrays)
            if parsed.site_id != target.site_id:
                reasons.append(f"reply names site {parsed.site_id!r}, sent to {target.site_id!r}")
            if reasons:
                rejected[target.site_id] = reasons
            else:
                accepted.append((target.site_id, parsed))
        for site, reasons in rejected.items():
            log.warning("round %d: left out %s: %s", round_, site, "; ".join(reasons))
        accepted.sort(key=lambda x: x[0])
        return accepted, rejected, down, up

    def evaluate(
        self, round_: int, sites: Sequence[Candidate]
    ) -> tuple[dict[str, float], dict[str, list[str]], int, int]:
        """Federated evaluation of the global model; metrics pooled from per-site score histograms."""
        content = R.evaluate_instruction(self.global_arrays, self.round_config(round_))
        by_node = {c.node_id: c for c in sites}
        replies, errors, down, up = self._exchange(
            ((c.node_id, content) for c in sites), R.EVALUATE, round_
        )
        problems = {by_node[n].site_id: [e] for n, e in errors.items()}
        parsed: list[R.EvalReply] = []
        for nid, rep in replies:
            try:
                parsed.append(R.EvalReply.from_content(rep.content))
            except (ValueError, KeyError, TypeError) as exc:
                problems[by_node[nid].site_id] = [f"malformed evaluation: {exc}"]
        if not parsed:
            return (
                {"loss": float("nan"), "pr_auc": float("nan"), "roc_auc": float("nan")},
                problems,
                down,
                up,
            )
        hp = np.sum([p.hist_pos for p in parsed], axis=0)
        hn = np.sum([p.hist_neg for p in parsed], axis=0)
        threshold = self.scenario.task.threshold
        pooled = metrics_from_histograms(hp.tolist(), hn.tolist(), threshold)
        pooled["loss"] = weighted_mean([(p.loss, p.num_examples) for p in parsed])
        pooled["per_site"] = {p.site_id: p.metrics for p in parsed}  # type: ignore[assignment]
        return pooled, problems, down, up

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        """Run all rounds (resuming from a checkpoint of the same scenario); returns the result."""
        fp = self.scenario.fingerprint()
        start_round = 1
        resumed = self.store.load(fp)
        if resumed is not None:
            cp, arrays = resumed
            self.global_arrays, self.history, self.schedule = arrays, cp.history, cp.schedule
            start_round = cp.round + 1
            log.info("resuming after round %d from %s", cp.round, self.store.state)
        self.store.reset_logs(self.history)
        warn_if_plaintext(self.scenario.privacy.mode, log)
        try:
            nodes = self.wait_for_nodes()
            for rnd in range(start_round, self.rounds + 1):
                self._one_round(rnd, nodes)
                nodes = sorted(self.grid.get_node_ids())
        except FederationError as exc:
            result = self._result("failed", str(exc))
            self.store.write_result(result)
            raise
        model_path = self.store.save_model(self.global_arrays)
        result = self._result("completed", None)
        result["model"] = model_path.name
        self.store.write_result(result)
        return result

    def _result(self, status: str, error: str | None) -> dict[str, Any]:
        return {
            "status": status,
            "error": error,
            "scenario": self.scenario.name,
            "fingerprint": self.scenario.fingerprint(),
            "rounds": self.history,
            "schedule": self.schedule,
            "model": None,
        }

    def _one_round(self, rnd: int, nodes: Sequence[int]) -> None:
        t0 = time.perf_counter()
        candidates, problems = self.telemetry(rnd, nodes)
        min_sites = self.scenario.scheduler.min_sites
        if len(candidates) < min_sites:
            raise FederationError(
                f"round {rnd}: only {len(candidates)} site(s) answered telemetry, need "
                f"scheduler.min_sites={min_sites}; problems: {_fmt(problems)}"
            )
        selection = self.selector.select(rnd, candidates)
        accepted, rejected, down, up = self.train(rnd, selection.chosen)
        for who, reasons in problems.items():
            rejected.setdefault(who, []).extend(f"telemetry: {r}" for r in reasons)
        if len(accepted) < min_sites:
            raise FederationError(
                f"round {rnd}: only {len(accepted)} valid update(s), need scheduler.min_sites={min_sites}; "
                f"left out: {_fmt(rejected)}. Rounds 1..{rnd - 1} are saved in {self.store.out}"
            )
        self.global_arrays = weighted_average([(r.arrays, r.num_examples) for _, r in accepted])
        train_loss = weighted_mean([(r.loss, r.num_examples) for _, r in accepted])
        ev, ev_problems, edown, eup = self.evaluate(rnd, candidates)
        per_site: Any = ev.pop("per_site", {})
        record: dict[str, Any] = {
            "round": rnd,
            "sites": [s for s, _ in accepted],
            "loss": train_loss,
            "eval_loss": ev.get("loss", float("nan")),
            "pr_auc": ev.get("pr_auc", float("nan")),
            "roc_auc": ev.get("roc_auc", float("nan")),
            "seconds": round(time.perf_counter() - t0, 3),
            "bytes_up": up + eup,
            "bytes_down": down + edown,
            "rejected": rejected,
            "per_site": per_site,
        }
        self.history.append(record)
        self.schedule.append(
            {
                "round": rnd,
                **selection.as_dict(),
                "telemetry_problems": problems,
                "eval_problems": ev_problems,
            }
        )
        self.store.save(
            Checkpoint(self.scenario.fingerprint(), rnd, self.history, self.schedule),
            self.global_arrays,
        )
        self.store.append_round(record)
        log.info(
            "round %d: sites=%s loss=%.4f pr_auc=%.4f %.1fs",
            rnd,
            record["sites"],
            train_loss,
            record["pr_auc"],
            record["seconds"],
        )
        if self.observer is not None:
            self.observer(record)


def _fmt(problems: Mapping[str, list[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in problems.items()) or "none"
