"""``fed-client serve``: a site's real-time scoring service over HTTP, its exported model scoring in the context of its history."""

from __future__ import annotations

import errno
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, get_args

import typer
from rich.console import Console
from rich.markup import escape

from fedcore.cli.common import command_console
from fedcore.exit_codes import EXIT_ADDRESS_IN_USE, EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:  # the service imports FastAPI and ONNX Runtime: only when serving
    from fedcore.config import HistorySpec
    from fedcore.export.manifest import ExportManifest
    from fedcore.serving.monitor import Monitor, MonitorSpec
    from fedcore.serving.service import ModelInfo

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8470
"""Port ``fed-client serve`` listens on unless told otherwise."""

ENDPOINTS = "POST /v1/score, /v1/feedback, /v1/reload; GET /v1/status, /metrics, /healthz, /readyz"


def serve(
    site: Annotated[
        Path | None,
        typer.Option(
            "--site",
            help="Site config YAML: its state_dir (where the exports and the history live) and "
            "its history window (history.days, history.transactions, history.database).",
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="The site's state directory (overrides the site config's state_dir): "
            "STATE/export/RUN/ holds the exports, STATE/history/history.sqlite the history. "
            "For a site of `fedcore run`: OUT/sites/SITE. Required without --site.",
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Export folder to serve (holding manifest.json), or the model file in it "
            "(model.fp32.onnx serves the FP32 model kept beside the INT8 one). Default: the "
            "newest export under STATE/export/.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, help="Port to listen on; 0 picks a free one (printed)."
        ),
    ] = DEFAULT_PORT,
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            help="ONNX Runtime execution provider to score on (default: the one the export "
            "was checked on), e.g. CPUExecutionProvider, CUDAExecutionProvider.",
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option("--threads", min=1, help="ONNX Runtime threads for one scoring call."),
    ] = 1,
    reload_poll: Annotated[
        float,
        typer.Option(
            "--reload-poll",
            min=0.0,
            help="Seconds between two looks for a newer export under STATE/export/ (served "
            "without dropping requests once its sha256 matches its manifest); 0: never look "
            "(POST /v1/reload still does).",
        ),
    ] = 0.0,
    max_batch: Annotated[
        int,
        typer.Option("--max-batch", min=1, help="Most transactions in one request (more: 413)."),
    ] = 1000,
    coalesce: Annotated[
        bool,
        typer.Option(
            "--coalesce/--no-coalesce",
            help="Score the requests that arrive while the scorer is busy together, in one "
            "call: more throughput under overload, but each transaction's context then "
            "includes the others' of its call, so a score depends on the load. Default: each "
            "request alone, in arrival order, exactly as offline scoring of the same history.",
        ),
    ] = False,
    psi_bound: Annotated[
        float | None,
        typer.Option(
            "--psi-bound",
            help="Alarm when the PSI of recent scores against the export's reference passes "
            "this (default 0.2, or the site config's monitor.psi_bound).",
        ),
    ] = None,
    score_window: Annotated[
        int | None,
        typer.Option("--score-window", help="Recent scores the PSI is taken on (default 5000)."),
    ] = None,
    min_scores: Annotated[
        int | None,
        typer.Option("--min-scores", help="No PSI alarm before this many scores (default 500)."),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="Alarm when PR-AUC on late labels falls this share below the export's "
            "(default 0.05).",
        ),
    ] = None,
    min_labels: Annotated[
        int | None,
        typer.Option("--min-labels", help="No metric alarm before this many labels (default 500)."),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            help="Also log to this file, from INFO up (alarms, reloads, refused exports).",
        ),
    ] = None,
) -> None:
    """Serve this site's exported model over HTTP until Ctrl-C or SIGTERM.

    Each transaction is scored in the context of the site's history window (its accounts',
    merchant's and device's recent transactions), then appended to it; labels that arrive
    later feed the drift monitor, whose status is written to STATE/serving/monitor.json for
    the site's telemetry. Endpoints: POST /v1/score, POST /v1/feedback, POST /v1/reload,
    GET /v1/status, /metrics (Prometheus), /healthz, /readyz. Stopping flushes the history
    and exits 0. Exit codes: 1 the model does not match its manifest (or cannot be loaded),
    2 bad arguments, site file, export or history, 3 the address is taken.
    """
    from fedcore.config import ConfigError, HistorySpec, load_site_config
    from fedcore.site_paths import site_state_dir

    out = command_console()
    err = command_console(stderr=True)
    history = HistorySpec()
    monitor_defaults: Any = None
    if site is not None:
        try:
            config = load_site_config(site.expanduser(), check_files=False)
        except ConfigError as exc:
            _fail(err, f"--site: {exc}", EXIT_USAGE)
        state_dir = site_state_dir(config, state)
        history = config.history
        monitor_defaults = getattr(config, "monitor", None)
    elif state is not None:
        state_dir = state.expanduser().resolve()
    else:
        _fail(
            err,
            "expected --site SITE.yaml or --state DIR (the site's state directory, e.g. "
            "OUT/sites/SITE of `fedcore run`); found neither",
            EXIT_USAGE,
        )
    if log_file is not None:
        _log_to(log_file.expanduser())
    try:
        spec = _monitor_spec(
            monitor_defaults,
            psi_bound=psi_bound,
            score_window=score_window,
            min_scores=min_scores,
            max_drop=max_drop,
            min_labels=min_labels,
        )
    except ValueError as exc:
        _fail(err, f"monitor options: {exc}", EXIT_USAGE)
    target = _export_to_serve(model, state_dir, err)
    service = _open_service(
        target,
        state_dir,
        history,
        spec,
        provider=provider,
        threads=threads,
        reload_poll=reload_poll,
        max_batch=max_batch,
        coalesce=coalesce,
        err=err,
    )
    try:
        sock = _bind(host, port)
    except OSError as exc:
        service.close_now()
        code = EXIT_ADDRESS_IN_USE if exc.errno == errno.EADDRINUSE else EXIT_USAGE
        fix = "choose another with --port (0 picks a free one)" if code == 3 else "check --host"
        _fail(err, f"cannot listen on {host}:{port}: {exc.strerror or exc}; {fix}", code)
    bound = int(sock.getsockname()[1])
    _print_serving(out, service.model, service.scorer.history_size, history, state_dir, spec)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
    if not _loopback(host):
        err.print(
            f"[bold yellow]warning:[/] listening on {escape(host)}, beyond this machine: the "
            "service has no TLS and no authentication of its own; put it behind the site's "
            "TLS proxy and firewall",
            highlight=False,
        )
    out.print(f"listening on {url} ({ENDPOINTS})", highlight=False, markup=False)
    sys.stdout.flush()
    code = _run(service, sock)
    out.print(
        f"stopped: scored {service.scored} transactions, flagged {service.flagged}; the history "
        f"({service.scorer.history_size:,} transactions in the window) is written to "
        f"{_history_file(state_dir, history)}",
        highlight=False,
        markup=False,
    )
    raise typer.Exit(code)


def _fail(err: Console, message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _log_to(path: Path) -> None:
    """Send fedcore's and uvicorn's log records from INFO up to ``path`` as well."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("fedcore", "uvicorn"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
            for h in logging.getLogger().handlers:  # stderr keeps its own level
                if h.level == logging.NOTSET:
                    h.setLevel(logging.WARNING)


def _monitor_spec(defaults: Any, **overrides: float | int | None) -> MonitorSpec:
    """The monitor's settings: the site config's (if any), then the options given."""
    from pydantic import ValidationError

    from fedcore.serving.monitor import MonitorSpec

    base = defaults.model_dump() if isinstance(defaults, MonitorSpec) else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return MonitorSpec(**(base | given))
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
        raise ValueError(problems) from None


def _export_to_serve(model: Path | None, state_dir: Path, err: Console) -> Path:
    from fedcore.export.manifest import MANIFEST_NAME
    from fedcore.serving.model_info import newest_export

    if model is not None:
        target = model.expanduser().resolve()
        if not target.exists():
            _fail(err, f"--model: no such export folder or model file: {target}", EXIT_USAGE)
        return target
    newest = newest_export(state_dir)
    if newest is None:
        _fail(
            err,
            f"no export to serve: expected STATE/export/RUN/{MANIFEST_NAME} under {state_dir}, "
            "found none. Each site exports its model after a run's last round (`fed-client "
            "start` writes STATE/export/RUN/, `fedcore run` OUT/sites/SITE/export/RUN/); pass "
            "--state for that site, or --model EXPORT_DIR",
            EXIT_USAGE,
        )
    return newest


def _open_service(
    target: Path,
    state_dir: Path,
    history: HistorySpec,
    spec: MonitorSpec,
    *,
    provider: str | None,
    threads: int,
    reload_poll: float,
    max_batch: int,
    coalesce: bool,
    err: Console,
) -> Any:
    """Open the scorer on ``target`` and the service around it; exits with a message if it cannot."""
    from fedcore.export.onnx_export import ExportError
    from fedcore.serving.context import ContextScorer
    from fedcore.serving.history import HistoryError
    from fedcore.serving.metrics import ServiceMetrics
    from fedcore.serving.monitor import STATUS_FILE, AlarmKind, write_status
    from fedcore.serving.service import ScoringService, ServiceOptions

    try:
        scorer = ContextScorer.open(
            target, state_dir, history=history, provider=provider, threads=threads
        )
    except ExportError as exc:
        _fail(err, f"model refused: {exc}", EXIT_FAILED)
    except HistoryError as exc:
        _fail(err, f"history: {exc}", EXIT_USAGE)
    except FileNotFoundError as exc:
        _fail(err, f"--model: {exc}", EXIT_USAGE)
    except ValueError as exc:  # a manifest another fedcore wrote
        _fail(err, f"model unusable: {exc}", EXIT_FAILED)
    except Exception as exc:  # ONNX Runtime: an unknown provider, a model it cannot load
        _fail(err, f"cannot load the model in {target}: {exc}", EXIT_FAILED)
    export_dir = target if target.is_dir() else target.parent
    return ScoringService(
        scorer,
        export_dir,
        monitor_factory=lambda manifest: _monitor(spec, manifest),
        state_dir=state_dir,
        options=ServiceOptions(
            max_batch=max_batch,
            coalesce=coalesce,
            reload_poll_s=reload_poll,
            status_path=state_dir / STATUS_FILE,
        ),
        status_writer=write_status,
        metrics=ServiceMetrics(alarm_names=get_args(AlarmKind)),
    )


def _monitor(spec: MonitorSpec, manifest: ExportManifest) -> Monitor | None:
    """The drift monitor of a served manifest; ``None`` (logged) for a manifest without a reference."""
    from fedcore.serving.monitor import Monitor, Reference

    try:
        return Monitor(spec, Reference.from_manifest(manifest))
    except ValueError as exc:
        logger.warning("no drift monitor: %s", exc)
        return None


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (reachable from this machine only)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _history_file(state_dir: Path, history: HistorySpec) -> Path:
    from fedcore.serving.history import history_path

    return history_path(state_dir, history)


def _window(history: HistorySpec) -> str:
    """The history window in words: ``90 days``, ``1,000,000 transactions``, or both."""
    parts = []
    if history.days is not None:
        parts.append(f"{history.days:g} days")
    if history.transactions is not None:
        parts.append(f"{history.transactions:,} transactions")
    return " or ".join(parts) + (", whichever is tighter" if len(parts) > 1 else "")


def _print_serving(
    out: Console,
    model: ModelInfo,
    history_rows: int,
    history: HistorySpec,
    state_dir: Path,
    spec: MonitorSpec,
) -> None:
    lines = [
        f"serving {model.file} (sha256 {model.short_sha}, {model.path_taken}, "
        f"{model.provider}) from {model.export_dir}",
        f"threshold {model.threshold:.4g}: a score at or above it is flagged",
        f"history: {history_rows:,} transactions in the window (the last {_window(history)})"
        f" in {_history_file(state_dir, history)}",
        f"monitor: alarm at PSI > {spec.psi_bound:g} (last {spec.score_window} scores) or "
        f"PR-AUC {spec.max_drop:.0%} below the export's; status in {state_dir}/serving/monitor.json",
    ]
    for line in lines:
        out.print(line, highlight=False, markup=False)


def _run(service: Any, sock: socket.socket) -> int:
    """Serve on ``sock`` until SIGINT or SIGTERM; close the service (flush); the exit code."""
    from fedcore.serving.api import build_app, serve_on

    try:
        started = serve_on(build_app(service), sock)
    finally:
        service.close_now()
        sock.close()
    if service.close_error is not None:
        command_console(stderr=True).print(
            f"[bold red]error:[/] the history was not fully written: "
            f"{escape(str(service.close_error))}; the transactions scored since the last write "
            "(at most 1 s before) are missing from it",
            highlight=False,
        )
        return EXIT_FAILED
    return EXIT_OK if started else EXIT_FAILED
