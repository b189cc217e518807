"""The Flower internals fedcore leans on: a long-lived ClientApp worker that serves approved app bundles only, a SuperNode that waits less, a SuperLink whose Control API stays on loopback.

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
  messages. It serves fedcore's app only, and only runs whose app bundle (FAB) the site
  approved (:class:`AppApproval`): any other run gets an error reply that says why.

And for the coordinator, the SuperLink through :func:`superlink_main`: Flower's own SuperLink
app, served on two sockets, every API on a loopback one and only the Fleet API (what
SuperNodes call) and ``/health`` on the address sites reach (:class:`FleetOnlyGate`), because
Flower's Control API has no authentication of its own.

None of this is Flower's public API. It is kept in this one module, checked by
:func:`internals_problems` before use (the site falls back to Flower's stock SuperNode and
SuperExec when a check fails, and says so), and held by
``tests/fedcore/engines/test_flower_runtime.py``, which fails loudly when Flower's internals
move. ``pyproject.toml`` pins Flower to the release range these were read from.

Run as ``python -m fedcore.engines.deployment.flower_runtime supernode FLOWER-SUPERNODE-ARGS``,
``... worker --runtime-api-address HOST:PORT [--approved-app SHA256 ...]`` or
``... superlink --fleet-listen HOST:PORT FLOWER-SUPERLINK-ARGS``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import logging
import re
import socket
import sys
import textwrap
import time
import types
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "FEDCORE_FAB_ID",
    "IDLE_WAIT_S",
    "PUBLIC_PATH",
    "REPLY_WAIT_S",
    "SUPPORTED_FLOWER",
    "TASK_POLL_MAX_S",
    "TASK_POLL_S",
    "AppApproval",
    "AppNotApproved",
    "ClientAppWorker",
    "FleetOnlyGate",
    "app_bundle",
    "bundle_hash",
    "directory_bundle",
    "internals_problems",
    "patch_supernode_waits",
    "shorten_object_pulls",
    "superlink_internals_problems",
    "superlink_main",
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


# --------------------------------------------------------------------------- approved apps


def app_bundle(app_dir: Path | None = None) -> bytes:
    """fedcore's Flower app bundle (FAB), built by Flower's own builder from ``app_dir``.

    Only the app's files (:data:`~.flower_cli.APP_FILES`) go in, so a stray ``__pycache__``
    or editor file beside them changes nothing; ``flwr run`` on the coordinator's copy of
    those files (see ``coordinator._copy_app``) builds the same bytes: Flower's builder is
    deterministic (sorted files, fixed dates).

    Args:
        app_dir: The app directory; default the installed ``fedcore/cli/flowerapp``.
    """
    from flwr.cli.build import build_fab_from_files

    from fedcore.engines.deployment.flower_cli import APP_DIR, APP_FILES

    root = APP_DIR if app_dir is None else app_dir
    with _quiet_builder():
        return build_fab_from_files({name: root / name for name in APP_FILES})[0]


def directory_bundle(app_dir: Path) -> bytes:
    """The bundle ``flwr run APP_DIR`` submits: Flower's builder on the whole directory."""
    from flwr.cli.build import build_fab_from_disk

    with _quiet_builder():
        return build_fab_from_disk(app_dir)


@contextlib.contextmanager
def _quiet_builder() -> Iterator[None]:
    """Flower 1.42's builder trips a DeprecationWarning of its ``pathspec`` per pattern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pathspec\b")
        yield


def bundle_hash(fab: bytes) -> str:
    """The hash Flower gives an app bundle: the sha256 of its bytes, in hex."""
    return hashlib.sha256(fab).hexdigest()


class AppNotApproved(PermissionError):
    """A run whose app bundle the site did not approve; the message says which and how to."""


@dataclass(frozen=True)
class AppApproval:
    """Which app bundles a site runs: by default the one its own installed fedcore builds.

    The site runs its own installed code whatever a bundle holds; approval makes the site
    refuse a run that was submitted with anything else (a tampered copy of fedcore's app,
    another app), so nothing but the consortium's agreed app is ever served.

    Attributes:
        approved: sha256 digests of the approved bundles.
        own: The digest of the bundle built from this site's installed fedcore.
        configured: Whether ``approved`` comes from the site config's ``approved_apps``.
    """

    approved: frozenset[str]
    own: str
    configured: bool = False

    @classmethod
    def for_site(cls, approved_apps: Iterable[str] | None = None) -> AppApproval:
        """The approval of a site: ``approved_apps`` (its site config's list) or its own bundle."""
        own = bundle_hash(app_bundle())
        if approved_apps is None:
            return cls(frozenset([own]), own)
        return cls(frozenset(h.lower() for h in approved_apps), own, configured=True)

    def describe(self) -> str:
        """The approved digests, the site's own bundle marked, for logs and messages."""
        return ", ".join(
            f"{h} (its own fedcore's)" if h == self.own else h for h in sorted(self.approved)
        )

    def refusal(
        self, fab_content: bytes, fab_id: str, run_id: int, site_config: str = ""
    ) -> str | None:
        """Why the run must be refused, or ``None`` when its bundle is approved.

        The bundle's digest is computed here from its bytes, not taken from the run's claim.
        """
        got = bundle_hash(fab_content)
        if got in self.approved:
            return None
        where = f"the site config {site_config}" if site_config else "the site config"
        if self.configured:
            runs = f"the bundles approved_apps lists in {where}: {self.describe()}"
        else:
            runs = f"the bundle of its own fedcore ({self.own})"
        app = f"app {fab_id!r}" if fab_id else "an app without id"
        return (
            f"refused run {run_id}: its app bundle ({app}, sha256 {got}) is not approved at "
            f"this site, which runs only {runs}. If the consortium agreed on this bundle (e.g. "
            f"the coordinator runs another fedcore release), add {got} to approved_apps in "
            f"{where} and restart fed-client; otherwise ask the coordinator's operator why "
            "the bundle differs"
        )


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


# --------------------------------------------------------------------------- the SuperLink

#: What the SuperLink serves on the address sites reach: Flower's Fleet API (every call a
#: SuperNode makes) and ``/health``. Everything else (the Control API, which has no
#: authentication: submit runs, register nodes; the Runtime API; the API docs) is served on
#: the loopback socket only.
PUBLIC_PATH = re.compile(r"/v1/fleet/[a-z0-9-]+|/health")

_NOT_SERVED = json.dumps(
    {"detail": "Not Found: this address serves Flower's Fleet API only"}
).encode()

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_Asgi = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class FleetOnlyGate:
    """ASGI wrapper: the whole app for connections to ``control``; elsewhere the Fleet API only.

    A connection's local address (``scope["server"]``, the socket it was accepted on, never a
    header) decides: on the loopback socket ``control`` every request passes; on any other
    socket only paths matching :data:`PUBLIC_PATH` do, and the rest get a 404 (websockets are
    closed). The check is a tuple comparison and one regular-expression match per request.

    Args:
        app: The SuperLink's ASGI app (``flwr.superlink.main.create_app``).
        control: ``(host, port)`` of the loopback socket that serves everything.
    """

    def __init__(self, app: _Asgi, control: tuple[str, int]) -> None:
        self.app = app
        self.control = (str(control[0]), int(control[1]))

    def allows(self, scope: _Scope) -> bool:
        """Whether the request ``scope`` describes is served."""
        if scope["type"] == "lifespan":
            return True
        server = scope.get("server")
        if server is not None and (str(server[0]), int(server[1])) == self.control:
            return True
        return scope["type"] == "http" and PUBLIC_PATH.fullmatch(scope.get("path", "")) is not None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if self.allows(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_NOT_SERVED)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _NOT_SERVED})
        else:
            await send({"type": "websocket.close", "code": 1008})


#: The keyword arguments Flower 1.42 passes to ``uvicorn.run`` in ``_run_superlink_http_api``;
#: :func:`superlink_main` passes the same ones. Another set means Flower serves its app
#: differently now: re-read it before widening :data:`SUPPORTED_FLOWER`.
_UVICORN_KWARGS = frozenset(
    {
        "app",
        "host",
        "port",
        "reload",
        "access_log",
        "log_config",
        "ssl_keyfile",
        "ssl_certfile",
        "workers",
    }
)


#: The module of Flower's ``flower-superlink`` command.
_SUPERLINK_CLI = "flwr.superlink.cli.flower_superlink"


def _uvicorn_kwargs(source: str) -> set[str] | None:
    """The keyword names of the ``uvicorn.run(...)`` call in ``source`` (``None``: no call)."""
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "uvicorn"
        ):
            return {k.arg for k in node.keywords if k.arg is not None}
    return None


def superlink_internals_problems() -> list[str]:
    """What of the Flower internals :func:`superlink_main` uses is missing or changed (empty: none)."""
    problems: list[str] = []
    version = flower_version()
    if not version.startswith(SUPPORTED_FLOWER):
        problems.append(
            f"Flower {version} is installed; fedcore's SuperLink launcher was built against "
            f"{', '.join(v + 'x' for v in SUPPORTED_FLOWER)}"
        )
    try:
        import uvicorn
        from flwr.superlink.config_loader import SuperLinkLifespanConfig
        from flwr.superlink.main import create_app

        fsl = importlib.import_module(_SUPERLINK_CLI)  # the package shadows it with a function
    except ImportError as exc:
        return [*problems, f"a Flower module moved: {exc}"]
    for name in (
        "_parse_superlink_lifespan_config",
        "_run_superlink_http_api",
        "SuperLinkLifespan",
        "get_uvicorn_log_config",
        "console_handler",
    ):
        if not hasattr(fsl, name):
            problems.append(f"{_SUPERLINK_CLI}.{name} is gone")
    if list(inspect.signature(create_app).parameters) != ["config", "superlink_lifespan_class"]:
        problems.append("flwr.superlink.main.create_app(config, superlink_lifespan_class) changed")
    fields = set(getattr(SuperLinkLifespanConfig, "__dataclass_fields__", {})) or set(
        inspect.signature(SuperLinkLifespanConfig).parameters
    )
    missing = {"host", "port", "ssl_keyfile", "ssl_certfile"} - fields
    if missing:
        problems.append(f"SuperLinkLifespanConfig lost {', '.join(sorted(missing))}")
    if "sockets" not in inspect.signature(uvicorn.Server.run).parameters:
        problems.append("uvicorn.Server.run(sockets=...) is gone")
    serve = getattr(fsl, "_run_superlink_http_api", None)
    if serve is not None:
        try:
            source = inspect.getsource(serve)
        except (OSError, TypeError) as exc:
            problems.append(f"cannot read how Flower serves the SuperLink: {exc}")
        else:
            kwargs = _uvicorn_kwargs(source)
            if "create_app(" not in source or kwargs is None:
                problems.append("the SuperLink is no longer served by uvicorn.run(create_app(...))")
            elif kwargs != _UVICORN_KWARGS:
                problems.append(
                    "Flower serves the SuperLink with other uvicorn settings now: "
                    f"{', '.join(sorted(kwargs ^ _UVICORN_KWARGS))}"
                )
    return problems


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket on ``host:port`` (as uvicorn binds one), for ``Server.run(sockets=)``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise SystemExit(f"fedcore: the SuperLink cannot listen on {where}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def superlink_main(argv: Sequence[str]) -> None:
    """Flower's SuperLink (``flower-superlink ARGV``) with its Control API on loopback only.

    ``ARGV`` holds Flower's own arguments, whose ``--host``/``--port`` must be a loopback
    address: there the SuperLink serves every API (the coordinator's Control API client,
    ``flwr run``, Flower's SuperExec and ServerApp use it). ``--fleet-listen HOST:PORT`` is the
    address sites reach: the same app behind :class:`FleetOnlyGate`, on the same TLS settings,
    in the same process (no extra hop per request).
    """
    parser = argparse.ArgumentParser(prog="fedcore-superlink")
    parser.add_argument("--fleet-listen", required=True, metavar="HOST:PORT")
    args, rest = parser.parse_known_args(list(argv))
    fleet_host, _, fleet_port = args.fleet_listen.rpartition(":")
    fleet_host = fleet_host.strip("[]")
    problems = superlink_internals_problems()
    if problems:
        raise SystemExit(
            "fedcore: cannot keep the Control API on loopback with this Flower: "
            + "; ".join(problems)
        )
    import uvicorn
    from flwr.superlink.main import create_app

    fsl = importlib.import_module(_SUPERLINK_CLI)
    sys.argv = ["flower-superlink", *rest]
    config = fsl._parse_superlink_lifespan_config()
    control = (str(config.host), int(config.port))
    try:
        import ipaddress

        loopback = ipaddress.ip_address(control[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(
            f"fedcore: --host {control[0]} must be a loopback address (127.0.0.1): the "
            "Control API is served there; sites reach --fleet-listen"
        )
    sockets = [
        _listening_socket(*control),
        _listening_socket(fleet_host, int(fleet_port)),
    ]
    app = create_app(config, fsl.SuperLinkLifespan)
    server = uvicorn.Server(
        uvicorn.Config(
            app=FleetOnlyGate(app, control),
            reload=False,
            access_log=True,
            log_config=fsl.get_uvicorn_log_config(fsl.console_handler.level),
            ssl_keyfile=config.ssl_keyfile,
            ssl_certfile=config.ssl_certfile,
            workers=1,
        )
    )
    print(
        f"fedcore: SuperLink serves every API on {control[0]}:{control[1]} (loopback) and "
        f"the Fleet API only on {args.fleet_listen}",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=sockets)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``supernode ARGS``, ``worker ARGS`` or ``superlink ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("supernode", "worker", "superlink"):
        raise SystemExit(
            "usage: python -m fedcore.engines.deployment.flower_runtime "
            "supernode|worker|superlink ..."
        )
    if args[0] == "supernode":
        supernode_main(args[1:])
    if args[0] == "superlink":
        superlink_main(args[1:])
        return
    worker_main(args[1:])


if __name__ == "__main__":
    main()
