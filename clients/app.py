"""The site's Flower ``ClientApp``: thin train, evaluate, export and telemetry handlers over a ``SiteRuntime``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from clients.model_store import GlobalModelStore, digest_hex
from clients.protection import SiteProtection, read_round, site_protection
from clients.protection.registry import check_privacy
from clients.protection.secagg import refuse_malformed_stages
from clients.runtime import SiteRuntime, local_seed
from fedcore import carry
from fedcore import records as R
from fedcore.config import TaskSpec
from fedcore.devices.environment import SiteEnvironment

log = logging.getLogger(__name__)

__all__ = ["local_seed", "make_client_app", "signed_evaluation", "signed_telemetry"]

EnvironmentFor = Callable[[Context], SiteEnvironment | None]
"""Gives a site's environment (its readings and clock); ``None``: the real host."""


def make_client_app(environment_for: EnvironmentFor | None = None) -> ClientApp:
    """Build the site ClientApp.

    The node config names the site YAML (``site-config``), optionally the site's kit
    (``kit``: CKKS secret context, node key for signing replies) and its state directory
    (``state-dir``). Each site ``Context`` gets one :class:`~clients.runtime.SiteRuntime`,
    kept for as long as this app serves that context. Every instruction is held to the
    privacy the site file accepts (its ``privacy`` section) before any work: a SecAgg+
    stage message needs ``secagg+`` among its modes, a train, evaluate or export
    instruction its round's mode (and DP, where the site requires it).

    Args:
        environment_for: Gives each site's environment; a simulated consortium passes
            its simulated devices and clock here (default: the real host).
    """
    from secure.secagg import secagg_mod

    runtimes: dict[int, tuple[Context, SiteRuntime]] = {}

    def runtime(context: Context) -> SiteRuntime:
        held = runtimes.get(id(context))
        if held is None or held[0] is not context:
            env = environment_for(context) if environment_for is not None else None
            held = (context, SiteRuntime(context, env))
            runtimes[id(context)] = held
        return held[1]

    def refuse_unaccepted_secagg(
        msg: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        """ClientApp mod: a SecAgg+ stage message needs ``secagg+`` among the site's modes."""
        from secure.secagg import carries_secagg_stage

        if carries_secagg_stage(msg):
            rt = runtime(context)
            check_privacy(None, rt.site().privacy, rt.config_path)
        return call_next(msg, context)

    app = ClientApp(mods=[refuse_unaccepted_secagg, refuse_malformed_stages, secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train from the incoming global model; when asked, evaluate it first and add telemetry."""
        rt = runtime(context)
        cfg = read_round(msg.content)
        _check_requests(msg.content, cfg)  # refused before any work or write
        protection = _protection(rt, cfg)  # refused unless the site accepts its privacy
        base = protection.global_model(rt, msg.content, cfg)
        evaluation = None
        evaluated = carry.read_evaluation_request(msg.content)  # the round of the model it brings
        if evaluated is not None:
            try:
                ev = rt.evaluate(base, cfg, digest_hex(base))
                evaluation = signed_evaluation(rt, ev, evaluated, cfg.run_key)
            except Exception as exc:  # the update still counts; the coordinator asks again
                log.warning("evaluation of the incoming model failed, training on: %s", exc)
        trained = rt.train(base, cfg)
        content = protection.reply(rt, cfg, base, trained)
        if evaluation is not None:
            carry.attach_evaluation(content, evaluation)
        _add_telemetry(rt, msg.content, content, cfg)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the global model; when asked, add the next round's telemetry to the reply."""
        rt = runtime(context)
        cfg = read_round(msg.content)
        _check_requests(msg.content, cfg)  # refused before any work or write
        arrays = _protection(rt, cfg).global_model(rt, msg.content, cfg)
        ev = rt.evaluate(arrays, cfg, digest_hex(arrays))
        content = signed_evaluation(rt, ev, cfg.round, cfg.run_key)
        _add_telemetry(rt, msg.content, content, cfg)
        return Message(content, reply_to=msg)

    @app.query("export")
    def export(msg: Message, context: Context) -> Message:
        """Export the final global model as INT8 for this site's device; reply with the manifest."""
        rt = runtime(context)
        cfg = read_round(msg.content)
        site = rt.site()
        # under ckks the model exists in clear only here, after decryption
        arrays = _protection(rt, cfg).global_model(rt, msg.content, cfg)
        try:
            manifest = rt.export(arrays, cfg)
        except Exception as exc:  # the run completed: a failed export is reported, not raised
            log.warning("export failed at %s: %s", site.id, exc)
            return Message(
                R.export_reply(site.id, None, f"{type(exc).__name__}: {exc}"), reply_to=msg
            )
        return Message(R.export_reply(site.id, manifest), reply_to=msg)

    @app.query("telemetry")
    def telemetry(msg: Message, context: Context) -> Message:
        rt = runtime(context)
        round_, run_key, task = R.read_telemetry_instruction(msg.content)
        return Message(signed_telemetry(rt, round_, run_key, task), reply_to=msg)

    return app


def _protection(rt: SiteRuntime, cfg: R.RoundConfig) -> SiteProtection:
    """The site's protection for ``cfg``'s privacy, refused unless the site file accepts it."""
    return site_protection(cfg.privacy, rt.site().privacy, rt.config_path)


def _check_requests(instruction: RecordDict, cfg: R.RoundConfig) -> None:
    """Refuse an instruction whose carry requests are malformed, before the site does any work.

    The evaluation a train instruction asks for is of the model it brings: a round in
    0..``cfg.round``; the telemetry it asks for is of a round in 0..``MAX_ROUND + 1``.

    Raises:
        ValueError: naming the request, what was expected and what was found.
    """
    evaluated = carry.read_evaluation_request(instruction)
    if evaluated is not None and not 0 <= evaluated <= cfg.round:
        raise ValueError(
            f"malformed {carry.EVALUATION_REQUEST!r}: expected the round of the model the "
            f"instruction brings, in 0..{cfg.round}, found {evaluated}"
        )
    telemetry = carry.read_telemetry_request(instruction)
    if telemetry is not None and not 0 <= telemetry <= R.MAX_ROUND + 1:
        raise ValueError(
            f"malformed {carry.TELEMETRY_REQUEST!r}: expected a round in 0..{R.MAX_ROUND + 1}, "
            f"found {telemetry}"
        )


def _add_telemetry(
    rt: SiteRuntime, instruction: RecordDict, content: RecordDict, cfg: R.RoundConfig
) -> None:
    """Add the telemetry ``instruction`` asks for to the reply ``content``, if it asks.

    Taken after the site's work: its model copy is the one the next round starts from.
    Without it the reply stands; the coordinator asks again and hears why.
    """
    next_round = carry.read_telemetry_request(instruction)
    if next_round is None:
        return
    try:
        carry.attach_telemetry(content, signed_telemetry(rt, next_round, cfg.run_key, cfg.task))
    except Exception as exc:
        log.warning("telemetry for round %d not attached: %s", next_round, exc)


def signed_evaluation(
    rt: SiteRuntime, evaluation: R.EvalReply, round_: int, run_key: str
) -> RecordDict:
    """An evaluate reply's content, signed when the site has a kit.

    Signed like a train reply: over the kind, the site, the round whose model was
    evaluated (``round_``), the run key and the evaluation's digest
    (:meth:`~fedcore.records.EvalReply.digest`), so the coordinator can refuse an
    evaluation from another site's node, for another round (a replay) or altered on the way.
    A train reply carries it as it is (:func:`fedcore.carry.attach_evaluation`).
    """
    payload = R.signing_payload(
        R.EVALUATE, evaluation.site_id, round_, run_key, evaluation.digest()
    )
    return rt.sign(evaluation.site_id, evaluation.to_content(), payload)


def signed_telemetry(rt: SiteRuntime, round_: int, run_key: str, task: TaskSpec) -> RecordDict:
    """The site's telemetry for ``round_`` of run ``run_key``, signed when the site has a kit.

    The content of a ``query.telemetry`` reply; a train or evaluate reply carries the same
    (:func:`fedcore.carry.attach_telemetry`).
    """
    store = GlobalModelStore.for_run(rt.state_dir, run_key)
    tel = rt.telemetry(task, store.round())
    payload = R.signing_payload(R.TELEMETRY, tel.site_id, round_, run_key, tel.digest())
    return rt.sign(tel.site_id, tel.to_content(), payload)
