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

None of this is Flower's public API. It is kept in this module and its siblings
:mod:`~.clientapp_worker` (the worker) and :mod:`~.superlink_launcher` (the SuperLink and
its gate), whose docstrings say so, with the timings in :mod:`~.flower_settings` and the app
bundles in :mod:`~.app_bundles`; it is checked by
:func:`internals_problems` before use (the site falls back to Flower's stock SuperNode and
SuperExec when a check fails, and says so), and held by
``tests/fedcore/engines/test_flower_runtime.py``, which fails loudly when Flower's internals
move. ``pyproject.toml`` pins Flower to the release range these were read from.

Run as ``python -m fedcore.engines.deployment.flower_runtime supernode FLOWER-SUPERNODE-ARGS``,
``... worker --runtime-api-address HOST:PORT [--approved-app SHA256 ...]`` or
``... superlink --fleet-listen HOST:PORT FLOWER-SUPERLINK-ARGS``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import logging
import sys
import textwrap
import time
import types
from collections.abc import Sequence
from typing import Any, NoReturn

from fedcore.engines.deployment.app_bundles import (
    AppApproval,
    AppNotApproved,
    app_bundle,
    bundle_hash,
    directory_bundle,
)
from fedcore.engines.deployment.clientapp_worker import (
    ClientAppWorker,
    TaskOutcome,
    worker_main,
)
from fedcore.engines.deployment.flower_settings import (
    _CLIENT_APP_TASK,
    _FLOWER_IDLE_WAIT,
    _FLOWER_REPLY_WAIT,
    _PULL_PARAMS,
    BUSY_FOR_S,
    FEDCORE_FAB_ID,
    IDLE_WAIT_S,
    PULL_BACKOFF_CAP_S,
    PULL_INITIAL_BACKOFF_S,
    PULL_MAX_TRIES,
    PULL_SITES,
    REPLY_WAIT_S,
    RESTING_WAIT_S,
    SUPPORTED_FLOWER,
    TASK_POLL_MAX_S,
    TASK_POLL_S,
)
from fedcore.engines.deployment.superlink_launcher import (
    PUBLIC_PATH,
    FleetOnlyGate,
    superlink_main,
)

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
    "TaskOutcome",
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


# --------------------------------------------------------------------------- the SuperLink

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
