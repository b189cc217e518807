"""The Flower internals fedcore leans on to make a site's rounds fast: one long-lived ClientApp worker, and a SuperNode that waits less.

Flower 1.42's SuperNode starts a fresh ``flwr-clientapp`` process for every message (its
SuperExec launches one per task), so every message re-imports torch and reloads the site's
data; and an idle SuperNode sleeps 3 s between pulls and 0.5 s while it waits for a reply,
with no flag to change either. fedcore therefore runs, for each site:

* the SuperNode through :func:`supernode_main`, which shortens those two waits
  (:func:`patch_supernode_waits`) and leaves everything else to Flower; it is started with
  ``--isolation process``, so it starts no SuperExec of its own;
* one :class:`ClientAppWorker` process in place of Flower's SuperExec: it acquires the
  SuperNode's tasks over the Runtime API exactly as ``flower-superexec`` does, but instead of
  starting ``flwr-clientapp --token T`` it runs the task itself, as ``flwr-clientapp`` would
  (pull the message and context, call the app, push the reply and the context back), with
  fedcore's own ClientApp built once and kept, with the site's data, model and kit, between
  messages. It serves fedcore's app only: a run of any other app gets an error reply.

None of this is Flower's public API. It is kept in this one module, checked by
:func:`internals_problems` before use (the site falls back to Flower's stock SuperNode and
SuperExec when a check fails, and says so), and held by
``tests/fedcore/engines/test_flower_runtime.py``, which fails loudly when Flower's internals
move. ``pyproject.toml`` pins Flower to the release range these were read from.

Run as ``python -m fedcore.engines.deployment.flower_runtime supernode FLOWER-SUPERNODE-ARGS``
or ``... worker --runtime-api-address HOST:PORT``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import logging
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = [
    "FEDCORE_FAB_ID",
    "IDLE_WAIT_S",
    "REPLY_WAIT_S",
    "SUPPORTED_FLOWER",
    "TASK_POLL_MAX_S",
    "TASK_POLL_S",
    "ClientAppWorker",
    "internals_problems",
    "patch_supernode_waits",
    "shorten_object_pulls",
    "supernode_main",
    "worker_main",
]

# named, not __name__: run with -m this module is __main__
logger = logging.getLogger("fedcore.engines.deployment.flower_runtime")

#: Flower releases whose internals this module was read from (version prefixes).
SUPPORTED_FLOWER = ("1.42.",)

#: Seconds an idle SuperNode waits between two pulls from the SuperLink (Flower: 3 s) while a
#: run is under way: within :data:`BUSY_FOR_S` of its last message.
IDLE_WAIT_S = 0.1
#: Seconds after a message during which the SuperNode and the worker poll quickly; after that,
#: between runs, they poll every :data:`RESTING_WAIT_S` (a resting site costs next to no CPU,
#: and its first message waits at most that long).
BUSY_FOR_S = 30.0
RESTING_WAIT_S = 1.0
#: Seconds the SuperNode waits between two looks for its ClientApp's reply (Flower: 0.5 s).
REPLY_WAIT_S = 0.02
#: Seconds between two task requests of the worker to its SuperNode (Flower's SuperExec: 1 s):
#: the first wait after a task; each empty request doubles it up to :data:`TASK_POLL_MAX_S`
#: (a round's messages come in bursts, and an idle worker should cost next to no CPU).
TASK_POLL_S = 0.02
TASK_POLL_MAX_S = 0.1

#: Object pulls (a message's arrays, once its header arrived) retry after this many seconds,
#: doubling up to :data:`PULL_BACKOFF_CAP_S` (Flower: 1 s doubling to 10 s). A message's header
#: is visible before its objects are (the SuperNode stores a message before it pulls the
#: objects; the SuperLink gets a reply before its objects), so every first pull fails and
#: Flower's backoff alone cost 1-7 s per message here.
PULL_INITIAL_BACKOFF_S = 0.02
PULL_BACKOFF_CAP_S = 0.2
#: Tries per object at the capped backoff: about 15 minutes, as long as a message may take.
PULL_MAX_TRIES = 5000

#: Where each process kind pulls objects: (module, function) patched by :func:`shorten_object_pulls`.
PULL_SITES: dict[str, tuple[tuple[str, str], ...]] = {
    "supernode": (("flwr.supernode.start_client_internal", "pull_objects"),),
    "worker": (("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree"),),
    "serverapp": (("flwr.superlink.grid.http_grid", "pull_objects"),),
}
_PULL_PARAMS = ("initial_backoff", "backoff_cap", "max_tries_per_object")

#: The Flower waits :func:`patch_supernode_waits` replaces: Flower's value -> fedcore's.
_FLOWER_IDLE_WAIT = 3
_FLOWER_REPLY_WAIT = 0.5

#: ``publisher/name`` of the Flower app fed-coordinator submits (fedcore/cli/flowerapp).
FEDCORE_FAB_ID = "fedcore/fedcore-app"

#: The task type a ClientApp task has in Flower's Runtime API.
_CLIENT_APP_TASK = "flwr-clientapp"


def flower_version() -> str:
    """The installed Flower version."""
    import flwr

    return str(getattr(flwr, "__version__", "unknown"))


def internals_problems() -> list[str]:
    """What of the Flower internals this module uses is missing or changed (empty: all there).

    Each entry names the internal and what was expected, so that the warning a site prints
    (and the test that fails) says what moved.
    """
    problems: list[str] = []
    version = flower_version()
    if not version.startswith(SUPPORTED_FLOWER):
        problems.append(
            f"Flower {version} is installed; fedcore's worker was built against "
            f"{', '.join(v + 'x' for v in SUPPORTED_FLOWER)}"
        )
    try:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
        from flwr.supercore.constant import TaskType
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode import start_client_internal as sci
        from flwr.supernode.runtime import run_clientapp as rca
    except ImportError as exc:
        return [*problems, f"a Flower module moved: {exc}"]
    del HeartbeatSender, make_task_heartbeat_fn_http, RuntimeTokenHttpInterceptor
    del RuntimeVersionHttpInterceptor, make_simple_http_retry_invoker
    if getattr(TaskType, "CLIENT_APP", None) != _CLIENT_APP_TASK:
        problems.append(f"TaskType.CLIENT_APP is no longer {_CLIENT_APP_TASK!r}")
    fields = {f.name for f in AcquireTaskRequest.DESCRIPTOR.fields}
    if "supported_task_types" not in fields:
        problems.append("AcquireTaskRequest lost its supported_task_types field")
    if not {"task", "token"} <= {f.name for f in AcquireTaskResponse.DESCRIPTOR.fields}:
        problems.append("AcquireTaskResponse no longer carries task and token")
    for name in ("AcquireTask", "PullTaskInput", "PullMessages", "PushMessages"):
        if not hasattr(RuntimeHttpClient, name):
            problems.append(f"RuntimeHttpClient.{name} is gone")
    for name, params in (
        ("pull_task_input", ["client"]),
        ("push_message", ["client", "message", "context"]),
        ("push_task_output", ["client", "context", "sub_status", "details"]),
    ):
        fn = getattr(rca, name, None)
        if fn is None or list(inspect.signature(fn).parameters) != params:
            problems.append(f"flwr.supernode.runtime.run_clientapp.{name}({', '.join(params)})")
    for sites in PULL_SITES.values():
        for module, name in sites:
            try:
                fn = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                problems.append(f"{module}.{name} is gone")
                continue
            if isinstance(fn, functools.partial):
                fn = fn.func  # patched already in this process
            if not set(_PULL_PARAMS) <= set(inspect.signature(fn).parameters):
                problems.append(f"{module}.{name} no longer takes {', '.join(_PULL_PARAMS)}")
    try:
        source = inspect.getsource(sci.start_client_internal) + inspect.getsource(
            sci._push_messages
        )
    except (AttributeError, OSError, TypeError) as exc:
        problems.append(f"cannot read the SuperNode's loop: {exc}")
    else:
        for wait in (_FLOWER_IDLE_WAIT, _FLOWER_REPLY_WAIT):
            if f"time.sleep({wait})" not in source:
                problems.append(f"the SuperNode no longer waits with time.sleep({wait})")
        if not isinstance(getattr(sci, "time", None), types.ModuleType | _ShortWaits):
            problems.append("flwr.supernode.start_client_internal no longer imports time")
    return problems


class _ShortWaits:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: shorter sleeps.

    The reply wait only happens while a message is being served, so it marks the SuperNode
    busy; the idle wait is ``idle`` within :data:`BUSY_FOR_S` of that, else ``resting``.
    """

    def __init__(self, idle: float, reply: float, resting: float = RESTING_WAIT_S) -> None:
        self.idle, self.reply, self.resting = idle, reply, resting
        self.busy_at = time.monotonic()  # a SuperNode just started expects its first message

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        now = time.monotonic()
        if seconds == _FLOWER_REPLY_WAIT:
            self.busy_at = now
            time.sleep(self.reply)
        elif seconds == _FLOWER_IDLE_WAIT:
            time.sleep(self.idle if now - self.busy_at < BUSY_FOR_S else self.resting)
        else:
            time.sleep(seconds)


def patch_supernode_waits(
    idle: float = IDLE_WAIT_S, reply: float = REPLY_WAIT_S, *, problems: list[str] | None = None
) -> bool:
    """Shorten the SuperNode's idle and reply waits in this process; ``False``: left as Flower's.

    Only the two sleeps of Flower's SuperNode loop change (3 s idle -> ``idle`` while a run is
    under way, :data:`RESTING_WAIT_S` between runs; 0.5 s waiting for a reply -> ``reply``); any
    other sleep in that module keeps its length. Nothing is patched when
    :func:`internals_problems` finds anything amiss (``problems``: its answer, when the caller
    has it already).
    """
    problems = internals_problems() if problems is None else problems
    if problems:
        logger.warning(
            "SuperNode waits left at Flower's defaults (3 s idle, 0.5 s per reply check): %s",
            "; ".join(problems),
        )
        return False
    from flwr.supernode import start_client_internal as sci

    sci.time = _ShortWaits(idle, reply)  # type: ignore[attr-defined,assignment]
    return True


def shorten_object_pulls(where: str, *, problems: list[str] | None = None) -> bool:
    """Make this process's object pulls retry after 0.02 s, not 1 s; ``False``: left as Flower's.

    Args:
        where: Which process this is: ``supernode``, ``worker`` or ``serverapp``
            (:data:`PULL_SITES`).
        problems: :func:`internals_problems` when the caller has them already.
    """
    problems = internals_problems() if problems is None else problems
    if problems:
        logger.warning("object pulls left at Flower's 1 s backoff: %s", "; ".join(problems))
        return False
    for module_name, name in PULL_SITES[where]:
        module = importlib.import_module(module_name)
        fn = getattr(module, name)
        if isinstance(fn, functools.partial):
            continue
        shorter = functools.partial(
            fn,
            initial_backoff=PULL_INITIAL_BACKOFF_S,
            backoff_cap=PULL_BACKOFF_CAP_S,
            max_tries_per_object=PULL_MAX_TRIES,
        )
        setattr(module, name, shorter)
    return True


def supernode_main(argv: Sequence[str]) -> NoReturn:
    """Run Flower's SuperNode (``flower-supernode ARGV``) with shortened waits where possible."""
    problems = internals_problems()  # read Flower's sources once for both patches
    patched = patch_supernode_waits(problems=problems) and shorten_object_pulls(
        "supernode", problems=problems
    )
    from flwr.supernode.cli import flower_supernode

    if patched:
        print(
            f"fedcore: SuperNode waits {IDLE_WAIT_S:.2f} s idle ({RESTING_WAIT_S:.0f} s after "
            f"{BUSY_FOR_S:.0f} s without a message), {REPLY_WAIT_S:.2f} s per reply "
            f"check, object pulls retry after {PULL_INITIAL_BACKOFF_S:.2f} s "
            "(Flower: 3 s, 0.5 s, 1 s)",
            file=sys.stderr,
            flush=True,
        )
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()
    raise SystemExit(0)


# --------------------------------------------------------------------------- the worker


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
        poll: float = TASK_POLL_S,
        max_poll: float = TASK_POLL_MAX_S,
    ) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address = runtime_api_address
        self.fab_id = fab_id
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
            message, pulled, run, _fab = pull_task_input(client)
            seconds["pull"] = time.perf_counter() - started
            run_id, message_type = pulled.run_id, message.metadata.message_type
            context = self._context(pulled)
            if run.fab_id != self.fab_id:
                raise PermissionError(
                    f"this site serves only fedcore's app ({self.fab_id}); run {run_id} is "
                    f"{run.fab_id!r}"
                )
            began = time.perf_counter()
            reply = self.app()(message=message, context=context)
            seconds["app"] = time.perf_counter() - began
            sub_status, details = SubStatus.COMPLETED, ""
            self.served += 1
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
    parser.add_argument("--poll", type=float, default=TASK_POLL_S)
    parser.add_argument("--max-poll", type=float, default=TASK_POLL_MAX_S)
    args = parser.parse_args(list(argv))
    _log_to_stderr()
    problems = internals_problems()
    if problems:
        raise SystemExit("the ClientApp worker cannot run on this Flower: " + "; ".join(problems))
    shorten_object_pulls("worker", problems=problems)
    worker = ClientAppWorker(args.runtime_api_address, poll=args.poll, max_poll=args.max_poll)
    logger.info("ClientApp worker serving the SuperNode at %s", args.runtime_api_address)
    try:
        worker.serve_forever()
    finally:
        worker.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``supernode ARGS`` or ``worker ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("supernode", "worker"):
        raise SystemExit(
            "usage: python -m fedcore.engines.deployment.flower_runtime supernode|worker ..."
        )
    if args[0] == "supernode":
        supernode_main(args[1:])
    worker_main(args[1:])


if __name__ == "__main__":
    main()
