"""The round driver: telemetry -> select -> train -> validate -> aggregate -> evaluate -> persist."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from coordinator.aggregation import weighted_average, weighted_mean
from coordinator.auth import ReplyVerifier
from coordinator.ckks import CkksAggregator, Contribution
from coordinator.state import Checkpoint, StateStore
from coordinator.validation import check_train_reply
from fedcore import records as R
from fedcore.config import Scenario
from fedcore.metrics import metrics_from_counts, metrics_from_histograms
from scheduling.base import Candidate, Selection, Selector, SiteResult
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
        registered_keys: Site id -> OpenSSH node public key (coordinator kit). When given,
            every telemetry and train reply must be signed by the site it names.
        ckks_context: TenSEAL context without secret key (coordinator kit); needed by
            privacy mode ``ckks``.
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
        self.privacy = scenario.privacy
        # sites keep per-run state (the CKKS model copy) under this key: unique per run, kept on resume
        self.run_key = f"{scenario.fingerprint()}-{secrets.token_hex(4)}"
        self.verifier = ReplyVerifier(registered_keys)
        self.site_rounds: dict[str, int] = {}
        self.ckks: CkksAggregator | None = None
        if self.privacy.mode == "ckks":
            if ckks_context is None:
                raise ValueError(
                    "privacy mode 'ckks' needs the coordinator kit's public CKKS context "
                    "(fed-coordinator --kit, or let `fedcore run` provision one)"
                )
            self.ckks = CkksAggregator(
                self.privacy,
                ckks_context,
                len(scenario.sites),
                self.global_arrays,
                self.store.state / "ckks",
            )
        self.accountant: Any = None
        if self.privacy.dp is not None:
            from secure.dp import DpAccountant

            self.accountant = DpAccountant(self.privacy.dp, population_size=len(scenario.sites))
        self._rng = np.random.default_rng()  # DP noise: fresh OS entropy, never the scenario seed
        self._ckks_index: list[dict[str, Any]] = []
        self._last_candidates: list[Candidate] = []
        self._selection: Selection | None = None

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
        content = R.telemetry_instruction(
            round_, self.run_key, self.scenario.task.model_dump(mode="json")
        )
        replies, errors, _, _ = self._exchange(((n, content) for n in nodes), R.TELEMETRY, round_)
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
            refusal = self.verifier.check(
                R.TELEMETRY, tel.site_id, round_, self.run_key, tel.digest(), rep.content
            )
            if refusal is not None:
                problems[f"node {nid}"] = [f"claims site {tel.site_id!r}: {refusal}"]
                continue
            if tel.site_id in cands:
                problems[tel.site_id] = [f"two nodes claim site {tel.site_id!r}; keeping the first"]
                continue
            self.site_rounds[tel.site_id] = tel.model_round
            cands[tel.site_id] = Candidate(
                tel.site_id, nid, tel.num_train_examples, dict(tel.readings)
            )
        return sorted(cands.values(), key=lambda c: c.site_id), problems

    def round_config(
        self, round_: int, weight: float = 1.0, site: str | None = None
    ) -> R.RoundConfig:
        """The settings a site receives with this round's instructions (with its share of work)."""
        sel = self._selection or Selection([])
        return R.RoundConfig(
            round=round_,
            seed=self.scenario.seed,
            task=self.scenario.task.model_dump(mode="json"),
            training=self.scenario.training.model_dump(mode="json"),
            privacy=self.privacy.model_dump(mode="json"),
            run_key=self.run_key,
            weight=weight,
            max_sites=len(self.scenario.sites),
            export=self.scenario.export.model_dump(mode="json"),
            device=sel.devices.get(site, -1) if site else -1,
            epochs=sel.epochs.get(site, 0) if site else 0,
            deadline_s=sel.deadline_s or 0.0,
            headroom=sel.headroom,
        )

    def epochs_of(self, site: str) -> int:
        """Local epochs ``site`` runs this round."""
        given = self._selection.epochs.get(site, 0) if self._selection is not None else 0
        return given if given > 0 else self.scenario.training.local_epochs

    def weights(self, chosen: Sequence[Candidate]) -> dict[str, float]:
        """Aggregation weight per chosen site: its examples over the largest site's (DP: 1 each)."""
        if self.privacy.dp is not None:
            return {c.site_id: 1.0 for c in chosen}
        # FedNova (Wang et al. 2020): examples over local epochs keeps the aggregate unbiased
        # when the scheduler gives sites unequal work (equal epochs: plain examples)
        raw = {c.site_id: max(c.num_train_examples, 0) / self.epochs_of(c.site_id) for c in chosen}
        # relative to the largest, so the largest update uses the whole CKKS packing range
        # (the aggregate is divided by the sum of the weights, so the scale cancels)
        largest = max(raw.values(), default=0.0)
        if largest <= 0:
            return {c.site_id: 1.0 for c in chosen}
        return {k: v / largest for k, v in raw.items()}

    def _instruction(self, round_: int, cand: Candidate, weight: float = 1.0) -> RecordDict:
        cfg = self.round_config(round_, weight, cand.site_id)
        if self.ckks is not None:
            return self.ckks.instruction(cfg, self.site_rounds.get(cand.site_id, 0))
        return R.train_instruction(self.global_arrays, cfg)

    def train(
        self, round_: int, chosen: Sequence[Candidate], weights: Mapping[str, float]
    ) -> tuple[list[tuple[str, R.TrainReply]], dict[str, list[str]], int, int]:
        """Send train instructions; returns accepted replies (sorted by site) and rejections.

        In ``ckks`` mode the accepted replies carry ciphertexts, checked here and summed by
        :meth:`aggregate`; otherwise clear models, validated against the global model.

        Args:
            round_: The round.
            chosen: The sites to train.
            weights: Each chosen site's aggregation weight (:meth:`weights`).
        """
        by_node = {c.node_id: c for c in chosen}
        replies, errors, down, up = self._exchange(
            ((c.node_id, self._instruction(round_, c, weights[c.site_id])) for c in chosen),
            R.TRAIN,
            round_,
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
            if self.ckks is not None:
                reasons = self.ckks.check(parsed)
                if not 0 < parsed.num_examples:
                    reasons.append(f"num_examples is {parsed.num_examples}")
                if not np.isfinite(parsed.loss):
                    reasons.append(f"training loss is {parsed.loss}")
            else:
                reasons = check_train_reply(parsed, self.global_arrays)
            if parsed.site_id != target.site_id:
                reasons.append(f"reply names site {parsed.site_id!r}, sent to {target.site_id!r}")
            else:
                refusal = self.verifier.check(
                    R.TRAIN, parsed.site_id, round_, self.run_key, parsed.digest(), rep.content
                )
                if refusal is not None:
                    reasons.append(refusal)
            if reasons:
                rejected[target.site_id] = reasons
            else:
                accepted.append((target.site_id, parsed))
        for site, reasons in rejected.items():
            log.warning("round %d: left out %s: %s", round_, site, "; ".join(reasons))
        accepted.sort(key=lambda x: x[0])
        return accepted, rejected, down, up

    def aggregate(
        self,
        round_: int,
        accepted: Sequence[tuple[str, R.TrainReply]],
        weights: Mapping[str, float],
    ) -> None:
        """Combine the accepted updates into the new global state (clear or encrypted)."""
        dp = self.privacy.dp
        if self.ckks is not None:
            noise = None
            if dp is not None:
                from secure.dp import gaussian_noise, sum_noise_std

                # noise on the encrypted SUM of clipped updates (every weight is 1 under DP)
                noise = gaussian_noise(self.ckks.length, sum_noise_std(dp), self._rng)
            agg = self.ckks.combine(
                round_,
                [Contribution(s, r.encrypted or [], weights[s]) for s, r in accepted],
                noise,
            )
            self._ckks_index = [e for e in self._ckks_index if e["round"] < round_]
            self._ckks_index.append(self.ckks.commit(agg))
            return
        if dp is not None:  # uniform mean of clipped models, plus noise on the mean
            mean = weighted_average([(r.arrays, 1) for _, r in accepted])
            self.global_arrays = self._noised(mean, len(accepted))
            return
        self.global_arrays = weighted_average([(r.arrays, weights[s]) for s, r in accepted])

    def _noised(self, mean: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        from secure.dp import gaussian_noise, noise_std

        assert self.privacy.dp is not None
        std = noise_std(self.privacy.dp, count)
        return {
            k: (v + gaussian_noise(v.shape, std, self._rng)).astype(v.dtype)
            for k, v in mean.items()
        }

    def train_secagg(
        self, round_: int, chosen: Sequence[Candidate]
    ) -> tuple[list[str], dict[str, list[str]], float, int, int]:
        """One SecAgg+ round over the chosen sites: the coordinator only sees the masked sum.

        Returns:
            (contributing sites, rejected sites with reasons, mean training loss, bytes down, bytes up).
        """
        import json

        from secure.secagg import SecAggError, run_secagg_round

        names = sorted(self.global_arrays)
        cfg = self.round_config(round_)
        fit_config: dict[str, Any] = {
            "fedcore.round": json.dumps(dict(cfg.to_record())),
            "fedcore.names": json.dumps(names),
        }
        site_of = {c.node_id: c.site_id for c in chosen}
        # the weight of each site is quantized relative to max_weight: keep it tight
        if self.privacy.dp is not None:
            spec = self.privacy.secagg.model_copy(update={"max_weight": 1.0})
        else:
            largest = max((c.num_train_examples for c in chosen), default=0)
            spec = (
                self.privacy.secagg.model_copy(update={"max_weight": float(largest)})
                if largest > 0
                else self.privacy.secagg
            )
        try:
            outcome = run_secagg_round(
                self.grid,
                [c.node_id for c in chosen],
                fit_config,
                [self.global_arrays[n] for n in names],
                spec,
                round_,
                self.timeout,
            )
        except SecAggError as exc:
            raise FederationError(f"round {round_}: SecAgg+ failed: {exc}") from exc
        mean = {
            n: np.asarray(a, dtype=self.global_arrays[n].dtype).reshape(self.global_arrays[n].shape)
            for n, a in zip(names, outcome.arrays, strict=True)
        }
        problems = check_train_reply(
            R.TrainReply(mean, 1, 0.0, 0.0, "aggregate"), self.global_arrays
        )
        if problems:
            raise FederationError(f"round {round_}: SecAgg+ aggregate unusable: {problems}")
        self.global_arrays = (
            self._noised(mean, len(outcome.contributors)) if self.privacy.dp is not None else mean
        )
        sites = sorted(site_of[n] for n in outcome.contributors)
        rejected = {site_of[n]: [reason] for n, reason in outcome.dropped.items()}
        return sites, rejected, float(outcome.mean_loss), outcome.bytes_down, outcome.bytes_up

    def evaluate(
        self, round_: int, sites: Sequence[Candidate]
    ) -> tuple[dict[str, float], dict[str, list[str]], int, int]:
        """Federated evaluation of the global model; metrics pooled from per-site score histograms."""
        content = R.evaluate_instruction(self.global_arrays, self.round_config(round_))
        by_node = {c.node_id: c for c in sites}
        replies, errors, down, up = self._exchange(
            (
                (c.node_id, self._instruction(round_, c) if self.ckks is not None else content)
                for c in sites
            ),
            R.EVALUATE,
            round_,
        )
        problems = {by_node[n].site_id: [e] for n, e in errors.items()}
        parsed: list[R.EvalReply] = []
        for nid, rep in replies:
            try:
                parsed.append(R.EvalReply.from_content(rep.content))
            except (ValueError, KeyError, TypeError) as exc:
                problems[by_node[nid].site_id] = [f"malformed evaluation: {exc}"]
        if self.ckks is not None:
            for p in parsed:
                self.site_rounds[p.site_id] = round_
            digests = {p.site_id: p.model_digest for p in parsed}
            if len(set(digests.values())) > 1:
                log.warning("round %d: sites hold different global models: %s", round_, digests)
                problems.setdefault("model", []).append(f"sites disagree on the model: {digests}")
        if not parsed:
            return (
                {"loss": float("nan"), "pr_auc": float("nan"), "roc_auc": float("nan")},
                problems,
                down,
                up,
            )
        pooled: dict[str, Any] = pool_evaluations(parsed, self.scenario.task.threshold)
        pooled["per_site"] = {p.site_id: p.metrics for p in parsed}
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
            self._restore_privacy(cp.extra)
            self.selector.load_state_dict(cp.extra.get("selector", {}))
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
        result = self._result("completed", None)
        if self.ckks is None:
            result["model"] = self.store.save_model(self.global_arrays).name
        if self.scenario.export.enabled and self.scenario.export.int8:
            result["exports"] = self.export_models(nodes)
        else:
            result["model_location"] = (
                "sites: in ckks mode only the sites can decrypt the global model; each keeps it "
                "in its state directory under global/<run key>/model.safetensors"
            )
        self.store.write_result(result)
        return result

    def export_models(self, nodes: Sequence[int]) -> dict[str, Any]:
        """Ask every site to export the final model for its own device; returns manifests by site.

        A site that fails to export is reported with its reason; the run stays completed.
        """
        cands = self._last_candidates
        if not cands:
            cands, _ = self.telemetry(self.rounds, nodes)
        cfg = self.round_config(self.rounds)
        content = R.train_instruction(self.global_arrays, cfg) if self.ckks is None else None
        by_node = {c.node_id: c for c in cands}
        replies, errors, _, _ = self._exchange(
            (
                (c.node_id, content if content is not None else self._instruction(self.rounds, c))
                for c in cands
            ),
            R.EXPORT,
            self.rounds,
        )
        out: dict[str, Any] = {by_node[n].site_id: {"error": e} for n, e in errors.items()}
        for nid, rep in replies:
            site = by_node[nid].site_id
            try:
                claimed, manifest, error = R.read_export_reply(rep.content)
            except ValueError as exc:
                out[site] = {"error": f"malformed export reply: {exc}"}
                continue
            if claimed != site:
                out[site] = {"error": f"reply names site {claimed!r}"}
                continue
            out[site] = manifest if not error else {"error": error, **manifest}
        for site, m in sorted(out.items()):
            if "error" in m:
                log.warning("export at %s failed: %s", site, m["error"])
            else:
                log.info("export at %s: %s via %s", site, m.get("path_taken"), m.get("provider"))
        return dict(sorted(out.items()))

    def privacy_summary(self) -> dict[str, Any]:
        """What protected this run's updates (parameters and running figures, never keys)."""
        out: dict[str, Any] = {"mode": self.privacy.mode, "authenticated": self.verifier.enabled}
        if self.ckks is not None:
            ck = self.privacy.ckks
            out["ckks"] = {
                "poly_modulus_degree": ck.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(ck.coeff_mod_bit_sizes),
                "packing": ck.packing,
                "values_per_slot": ck.values_per_slot if ck.packing else 1,
                "error_bound": self.ckks.codec.error_bound(len(self.scenario.sites)),
                "coordinator_holds_secret_key": False,
            }
        if self.privacy.mode == "secagg+":
            out["secagg"] = self.privacy.secagg.model_dump(mode="json")
        if self.accountant is not None:
            out.update(self.accountant.summary())
        return out

    def _restore_privacy(self, extra: Mapping[str, Any]) -> None:
        self.run_key = str(extra.get("run_key", self.run_key))
        if self.ckks is not None:
            self._ckks_index = list(extra.get("ckks", []))
            self.ckks.restore(self._ckks_index)
        if self.accountant is not None and "dp" in extra:
            from secure.dp import DpAccountant

            self.accountant = DpAccountant.from_state(
                extra["dp"], spec=self.privacy.dp, population_size=len(self.scenario.sites)
            )

    def _privacy_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"run_key": self.run_key}
        if self.ckks is not None:
            extra["ckks"] = self._ckks_index
        if self.accountant is not None:
            extra["dp"] = self.accountant.state_dict()
        extra["selector"] = self.selector.state_dict()
        return extra

    def _result(self, status: str, error: str | None) -> dict[str, Any]:
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
        } | self._simulation()

    def _simulation(self) -> dict[str, Any]:
        """A simulated consortium's figures (virtual time, waits, dropouts), if the grid has them."""
        stats = getattr(self.grid, "stats", None)
        return {"simulation": stats()} if callable(stats) else {}

    def _one_round(self, rnd: int, nodes: Sequence[int]) -> None:
        t0 = time.perf_counter()
        candidates, problems = self.telemetry(rnd, nodes)
        self._last_candidates = candidates
        min_sites = self.scenario.scheduler.min_sites
        if len(candidates) < min_sites:
            raise FederationError(
                f"round {rnd}: only {len(candidates)} site(s) answered telemetry, need "
                f"scheduler.min_sites={min_sites}; problems: {_fmt(problems)}"
            )
        selection = self.selector.select(rnd, candidates)
        self._selection = selection
        if self.privacy.mode == "secagg+":
            sites, rejected, train_loss, down, up = self.train_secagg(rnd, selection.chosen)
        else:
            weights = self.weights(selection.chosen)
            accepted, rejected, down, up = self.train(rnd, selection.chosen, weights)
            sites = [s for s, _ in accepted]
        for who, reasons in problems.items():
            rejected.setdefault(who, []).extend(f"telemetry: {r}" for r in reasons)
        skipped = False
        if len(sites) < min_sites:
            if self.scenario.scheduler.short_round != "skip" or self.privacy.mode == "secagg+":
                raise FederationError(
                    f"round {rnd}: only {len(sites)} valid update(s), need scheduler.min_sites={min_sites}; "
                    f"left out: {_fmt(rejected)}. Rounds 1..{rnd - 1} are saved in {self.store.out}"
                )
            log.warning(
                "round %d: only %d valid update(s), need %d; keeping the global model "
                "(scheduler.short_round: skip); left out: %s",
                rnd,
                len(sites),
                min_sites,
                _fmt(rejected),
            )
            skipped, sites, accepted = True, [], []
        if self.privacy.mode != "secagg+":
            if not skipped:
                self.aggregate(rnd, accepted, weights)
            train_loss = weighted_mean([(r.loss, r.num_examples) for _, r in accepted])
            replies = dict(accepted)
        else:
            replies = {}
        results = {}
        for c in selection.chosen:
            rep = replies.get(c.site_id)
            results[c.site_id] = SiteResult(
                c.site_id,
                None if rep is None else rep.seconds,
                None if rep is None else rep.loss,
                self.epochs_of(c.site_id),
                c.num_train_examples,
                None if c.site_id in sites else "; ".join(rejected.get(c.site_id, ["no update"])),
            )
        self.selector.observe(rnd, results)
        epsilon = None
        if self.accountant is not None and not skipped:
            epsilon = self.accountant.step(len(selection.chosen))
        ev, ev_problems, edown, eup = self.evaluate(rnd, candidates)
        per_site: Any = ev.pop("per_site", {})
        record: dict[str, Any] = {
            "round": rnd,
            "sites": sites,
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
        if epsilon is not None:
            record["epsilon"] = round(epsilon, 4)
        record["schedule"] = schedule_digest(
            self.selector.name, selection, results, len(candidates)
        )
        clock = getattr(self.grid, "clock_s", None)
        if clock is not None:  # a simulated consortium: its virtual time after this round
            record["virtual_time_s"] = round(float(clock), 3)
        self.history.append(record)
        self.schedule.append(
            {
                "round": rnd,
                **selection.as_dict(),
                "measured_s": {
                    k: round(r.seconds, 3) for k, r in results.items() if r.seconds is not None
                },
                "telemetry_problems": problems,
                "eval_problems": ev_problems,
            }
        )
        self.store.save(
            Checkpoint(
                self.scenario.fingerprint(), rnd, self.history, self.schedule, self._privacy_state()
            ),
            self.global_arrays,
        )
        self.store.append_round(record)
        log.info(
            "round %d: sites=%s loss=%.4f pr_auc=%.4f %.1fs%s",
            rnd,
            record["sites"],
            train_loss,
            record["pr_auc"],
            record["seconds"],
            f" epsilon={epsilon:.3f}" if epsilon is not None else "",
        )
        if self.observer is not None:
            self.observer(record)


def pool_evaluations(parsed: Sequence[R.EvalReply], threshold: float) -> dict[str, float]:
    """Pooled metrics of the sites' evaluations, without any site's scores.

    AUCs come from the summed score histograms. F1, precision, recall and FPR come from the
    summed flag counts when every site sent them (each site flags at its own operating
    threshold, ``task.operating_point``), else from the histograms at ``threshold``.
    """
    hp = np.sum([p.hist_pos for p in parsed], axis=0)
    hn = np.sum([p.hist_neg for p in parsed], axis=0)
    pooled = metrics_from_histograms(hp.tolist(), hn.tolist(), threshold)
    if all(p.flagged_pos is not None and p.flagged_neg is not None for p in parsed):
        pooled.update(
            metrics_from_counts(
                sum(int(p.flagged_pos or 0) for p in parsed),
                sum(int(p.flagged_neg or 0) for p in parsed),
                sum(p.num_positive for p in parsed),
                sum(p.num_examples - p.num_positive for p in parsed),
            )
        )
    pooled["loss"] = weighted_mean([(p.loss, p.num_examples) for p in parsed])
    return pooled


def schedule_digest(
    policy: str, selection: Selection, results: Mapping[str, SiteResult], candidates: int
) -> dict[str, Any]:
    """A round's scheduling decision in a few numbers, for the progress display and ``rounds.jsonl``."""
    measured = [r.seconds for r in results.values() if r.seconds is not None]
    out: dict[str, Any] = {
        "policy": policy,
        "chosen": len(selection.chosen),
        "candidates": candidates,
    }
    if selection.epochs:
        out["epochs"] = [min(selection.epochs.values()), max(selection.epochs.values())]
    if selection.deadline_s is not None:
        out["deadline_s"] = round(selection.deadline_s, 3)
    if selection.predicted_s:
        out["predicted_max_s"] = round(max(selection.predicted_s.values()), 3)
    if measured:
        out["measured_max_s"] = round(max(measured), 3)
    scaling = selection.details.get("scaling")
    if isinstance(scaling, dict):
        out["scaling"] = scaling.get("action")
    return out


def _fmt(problems: Mapping[str, list[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in problems.items()) or "none"
