"""The site's ClientApp worker: a long-lived process that serves its SuperNode's tasks over Flower's Runtime API (a Flower internal)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fedcore.engines.deployment.app_bundles import AppApproval, AppNotApproved
from fedcore.engines.deployment.flower_settings import (
    _CLIENT_APP_TASK,
    BUSY_FOR_S,
    FEDCORE_FAB_ID,
    RESTING_WAIT_S,
    TASK_POLL_MAX_S,
    TASK_POLL_S,
)

__all__ = ["ClientAppWorker", "TaskOutcome", "worker_main"]

# named, not __name__: the worker's records are flower_runtime's (its log file, its handler)
logger = logging.getLogger("fedcore.engines.deployment.flower_runtime")


@dataclass
class TaskOutcome:
    """What one task did: its run, the message type, whether the app answered, and why not."""

    run_id: int
    message_type: str
    ok: bool
    details: str = ""
    seconds: dict[str, float] | None = None
    """Where the task's time went: ``pull`` (message and context in), ``app``, ``push`` (reply out)."""


AppFactory = Callable[[], Any]
"""Builds the ClientApp the worker serves (a ``flwr.clientapp.ClientApp``)."""


def _app_project() -> dict[str, Any]:
    """The ``pyproject.toml`` of the Flower app fed-coordinator submits."""
    import tomllib

    from fedcore.engines.deployment.flower_cli import APP_DIR

    return tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))


def _fedcore_client_app() -> Any:
    """fedcore's ClientApp, loaded as Flower loads it: the app directory's ``clientapp`` component.

    That component (``fedcore/cli/flowerapp``) is the shim that builds the site's app from the
    installed ``clients`` package, exactly what a ``flwr-clientapp`` process would run.
    """
    import importlib

    from fedcore.engines.deployment.flower_cli import APP_DIR

    module, _, attr = _app_project()["tool"]["flwr"]["app"]["components"]["clientapp"].partition(
        ":"
    )
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    return getattr(importlib.import_module(module), attr)


class ClientAppWorker:
    """One site's long-lived ClientApp process, serving its SuperNode's tasks one at a time.

    It plays the part of Flower's SuperExec plus ``flwr-clientapp`` for fedcore's app: the
    app is built once, and each site context is kept for its run (one per run id), so that
    the app's per-context state (the site's runtime: data, model, kit, codecs) lives across
    messages. The SuperNode stays the authority on a context's ``state`` (the records mods
    such as SecAgg+ keep between stages): each task's state replaces the kept one.

    Args:
        runtime_api_address: The SuperNode's Runtime API (``--host``/``--port`` of the SuperNode).
        app_factory: Builds the ClientApp (default: fedcore's site app).
        fab_id: The only app (``publisher/name``) served; another run gets an error reply.
        approval: The app bundles served (default: :meth:`AppApproval.for_site`, the bundle
            of this site's own fedcore); a run of any other bundle gets an error reply.
        poll: Seconds before the first task request after a task; each empty request doubles
            the wait, up to ``max_poll``.
        max_poll: The longest wait between two task requests.
    """

    def __init__(
        self,
        runtime_api_address: str,
        app_factory: AppFactory = _fedcore_client_app,
        *,
        fab_id: str = FEDCORE_FAB_ID,
        approval: AppApproval | None = None,
        poll: float = TASK_POLL_S,
        max_poll: float = TASK_POLL_MAX_S,
    ) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address = runtime_api_address
        self.fab_id = fab_id
        self.approval = AppApproval.for_site() if approval is None else approval
        self.poll = poll
        self.max_poll = max(poll, max_poll)
        self._app_factory = app_factory
        self._app: Any = None
        self._contexts: dict[int, Any] = {}
        self.served = 0
        self._client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def app(self) -> Any:
        """The ClientApp, built at the first task."""
        if self._app is None:
            self._app = self._app_factory()
        return self._app

    def acquire(self) -> tuple[str, Any] | None:
        """The next ClientApp task and its token, or ``None`` when the SuperNode has none."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest

        res = self._client.AcquireTask(AcquireTaskRequest(supported_task_types=[_CLIENT_APP_TASK]))
        if res.HasField("task") and res.token:
            return str(res.token), res.task
        return None

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Acquire and run tasks until ``should_stop()``; errors of one task never end the loop."""
        wait = self.poll
        last_task = time.monotonic()
        while not should_stop():
            acquired = self.acquire()
            if acquired is None:
                resting = time.monotonic() - last_task >= BUSY_FOR_S
                time.sleep(max(wait, RESTING_WAIT_S) if resting else wait)
                wait = min(wait * 2, self.max_poll)
                continue
            wait = self.poll
            last_task = time.monotonic()
            token, task = acquired
            try:
                outcome = self.run_task(token)
            except Exception:  # a broken connection to the SuperNode: log, keep serving
                logger.exception("task %s of run %s could not be served", task.task_id, task.run_id)
                continue
            level = logging.INFO if outcome.ok else logging.WARNING
            timing = " ".join(f"{k} {v:.2f}s" for k, v in (outcome.seconds or {}).items())
            logger.log(
                level,
                "run %d: %s %s%s [%s]",
                outcome.run_id,
                outcome.message_type,
                "answered" if outcome.ok else "failed",
                f" ({outcome.details})" if outcome.details else "",
                timing,
            )

    def _context(self, pulled: Any) -> Any:
        """The kept context of the pulled one's run (created at its run's first task)."""
        held = self._contexts.get(pulled.run_id)
        if held is None:
            self._contexts = {pulled.run_id: pulled}  # an old run's site runtime is let go
            return pulled
        held.node_config = pulled.node_config
        held.run_config = pulled.run_config
        held.state = pulled.state
        return held

    def run_task(self, token: str) -> TaskOutcome:
        """Run the task ``token`` grants, as ``flwr-clientapp --token TOKEN`` would."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        retry = make_simple_http_retry_invoker()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=retry,
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context = None
        reply = None
        message = None
        sub_status, details = SubStatus.FAILED, "the task failed before its message was read"
        run_id, message_type = 0, "?"
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        try:
            message, pulled, run, fab = pull_task_input(client)
            seconds["pull"] = time.perf_counter() - started
            run_id, message_type = pulled.run_id, message.metadata.message_type
            context = pulled  # a refused run's context is never kept
            refusal = self.approval.refusal(
                fab.content, run.fab_id, run_id, str(pulled.node_config.get("site-config", ""))
            )
            if refusal is not None:
                raise AppNotApproved(refusal)
            if run.fab_id != self.fab_id:
                raise AppNotApproved(
                    f"refused run {run_id}: this site serves only fedcore's app "
                    f"({self.fab_id}); run {run_id} is {run.fab_id!r}"
                )
            context = self._context(pulled)
            began = time.perf_counter()
            reply = self.app()(message=message, context=context)
            seconds["app"] = time.perf_counter() - began
            sub_status, details = SubStatus.COMPLETED, ""
            self.served += 1
        except AppNotApproved as exc:  # logged with the task's outcome
            details = str(exc)  # the reason itself, as the coordinator's operator reads it
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        except Exception as exc:
            logger.exception("the ClientApp raised on a %s message", message_type)
            details = f"{type(exc)}:<'{exc}'>"
            code = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                if isinstance(exc, PermissionError)
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            )
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        began = time.perf_counter()
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            retry.max_tries = 1
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
            seconds["push"] = time.perf_counter() - began
        return TaskOutcome(
            run_id, message_type, sub_status == SubStatus.COMPLETED, details, seconds
        )

    def close(self) -> None:
        """Close the connection to the SuperNode."""
        self._client.close()


def _log_to_stderr() -> None:
    """This module's records (INFO and up) on stderr, the worker's log file; no one else's chatter."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def worker_main(argv: Sequence[str]) -> None:
    """``worker --runtime-api-address HOST:PORT``: serve a SuperNode's ClientApp tasks until killed."""
    parser = argparse.ArgumentParser(prog="fedcore-clientapp-worker")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument(
        "--approved-app",
        action="append",
        default=None,
        metavar="SHA256",
        help="an approved app bundle (repeatable; default: this site's own fedcore bundle)",
    )
    parser.add_argument("--poll", type=float, default=TASK_POLL_S)
    parser.add_argument("--max-poll", type=float, default=TASK_POLL_MAX_S)
    args = parser.parse_args(list(argv))
    _log_to_stderr()
    # at call time: flower_runtime, which checks Flower's internals, imports this module
    from fedcore.engines.deployment.flower_runtime import internals_problems, shorten_object_pulls

    problems = internals_problems()
    if problems:
        raise SystemExit("the ClientApp worker cannot run on this Flower: " + "; ".join(problems))
    shorten_object_pulls("worker", problems=problems)
    approval = AppApproval.for_site(args.approved_app)
    worker = ClientAppWorker(
        args.runtime_api_address, approval=approval, poll=args.poll, max_poll=args.max_poll
    )
    logger.info("ClientApp worker serving the SuperNode at %s", args.runtime_api_address)
    logger.info(
        "approved app bundles (sha256%s): %s",
        ", from the site config's approved_apps" if approval.configured else "",
        approval.describe(),
    )
    try:
        worker.serve_forever()
    finally:
        worker.close()
