"""One exchange per round: the train batch carries the last round's evaluation and the next round's telemetry.

The driver hands a protection's :meth:`~coordinator.protection.base.Protection.collect`
a :class:`Carrier` in place of its plain exchange. When the protection sends its train
batch through it, each chosen site's train instruction also asks the site to evaluate
the model it brings (the global model of the round before, still unevaluated) and for
its telemetry of the next round (:mod:`fedcore.carry`); each candidate site that was not
chosen gets, in the same batch, an evaluate instruction asking for its telemetry (or,
when there is nothing to evaluate, a telemetry query). The protection sees only its
train replies; the evaluations and the telemetry stay here for the driver.

A train reply that parsed but carries no evaluation (a site that does not know the
request) is followed by an evaluate instruction to that site, so the record of the
round before stays whole; a site whose train instruction failed gave no evaluation,
and the reason is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from flwr.app import RecordDict

from coordinator.exchange import Send
from coordinator.protection.base import ExchangeResult
from fedcore import carry
from fedcore import records as R

log = logging.getLogger(__name__)

__all__ = ["Carrier"]


@dataclass
class Carrier:
    """The exchange a protection trains one round through, carrying evaluation and telemetry.

    Args:
        send: Sends one batch (the driver's exchange).
        nodes: Every candidate node of the round (chosen or not).
        evaluate_round: The round whose model is still to be evaluated (``None``: none).
        telemetry_round: The round whose telemetry replies should carry (``None``: none).
        evaluate_instruction: The evaluate instruction for a node (the model of
            ``evaluate_round``, as the protection sends it).
        telemetry_instruction: A telemetry query for ``telemetry_round``.
    """

    send: Callable[[Sequence[Send], int], ExchangeResult]
    nodes: Sequence[int]
    evaluate_round: int | None
    telemetry_round: int | None
    evaluate_instruction: Callable[[int], RecordDict]
    telemetry_instruction: Callable[[int], RecordDict]
    used: bool = False
    """Whether the train batch went through this carrier."""
    evaluations: list[tuple[int, RecordDict]] = field(default_factory=list)
    """Node -> the content of its evaluate reply for ``evaluate_round``."""
    eval_errors: dict[int, str] = field(default_factory=dict)
    """Node -> why it gave no evaluation."""
    telemetry: dict[int, RecordDict] = field(default_factory=dict)
    """Node -> the telemetry content its reply carried (unchecked: the driver checks it)."""
    telemetry_errors: dict[int, str] = field(default_factory=dict)
    """Node -> why the telemetry its reply carried was left out (malformed; it is asked again)."""

    def __call__(
        self, targets: Iterable[tuple[int, RecordDict]], message_type: str, round_: int
    ) -> ExchangeResult:
        """The driver's exchange; the first train batch carries the rest."""
        plain = [(n, c, message_type) for n, c in targets]
        if message_type != R.TRAIN or self.used:
            return self.send(plain, round_)
        self.used = True
        chosen = {n for n, _, _ in plain}
        sends = [(n, self._ask(c, evaluate=True), t) for n, c, t in plain]
        for nid in self.nodes:
            if nid in chosen:
                continue
            if self.evaluate_round is not None:
                sends.append((nid, self._ask(self.evaluate_instruction(nid)), R.EVALUATE))
            elif self.telemetry_round is not None:
                sends.append((nid, self.telemetry_instruction(nid), R.TELEMETRY))
        result = self.send(sends, round_)
        sent = {n: t for n, _, t in sends}
        replies = [(n, rep) for n, rep in result.replies if n in chosen]
        uncarried: list[int] = []
        for nid, rep in result.replies:
            if sent[nid] == R.TELEMETRY:
                self.telemetry[nid] = rep.content
                continue
            self._keep_telemetry(nid, rep.content)
            try:
                evaluation = (
                    rep.content if nid not in chosen else carry.carried_evaluation(rep.content)
                )
            except ValueError as exc:
                self.eval_errors[nid] = f"malformed evaluation: {exc}"
                continue
            if evaluation is not None:
                self.evaluations.append((nid, evaluation))
            elif self.evaluate_round is not None:
                uncarried.append(nid)
        for nid, error in result.errors.items():
            if nid not in chosen:
                self.eval_errors[nid] = error
            else:
                self.eval_errors[nid] = f"no evaluation: the train instruction failed ({error})"
        down, up = result.bytes_down, result.bytes_up
        if uncarried:  # sites that do not carry the evaluation are asked for it
            follow = self.send(
                [(n, self._ask(self.evaluate_instruction(n)), R.EVALUATE) for n in uncarried],
                round_,
            )
            for nid, rep in follow.replies:
                self.evaluations.append((nid, rep.content))
                if nid not in self.telemetry:
                    self._keep_telemetry(nid, rep.content)
            self.eval_errors.update(follow.errors)
            down, up = down + follow.bytes_down, up + follow.bytes_up
        train_errors = {n: e for n, e in result.errors.items() if n in chosen}
        return ExchangeResult(replies, train_errors, down, up)

    def _keep_telemetry(self, nid: int, content: RecordDict) -> None:
        """Keep the telemetry a reply carries; a malformed one is left out (the node is asked)."""
        try:
            tel = carry.carried_telemetry(content)
        except ValueError as exc:
            log.warning("node %d: %s; it is asked for telemetry next round", nid, exc)
            self.telemetry_errors[nid] = str(exc)
            return
        if tel is not None:
            self.telemetry[nid] = tel
            self.telemetry_errors.pop(nid, None)

    def _ask(self, content: RecordDict, *, evaluate: bool = False) -> RecordDict:
        if evaluate and self.evaluate_round is not None:
            content = carry.request_evaluation(content, self.evaluate_round)
        if self.telemetry_round is not None:
            content = carry.request_telemetry(content, self.telemetry_round)
        return content
