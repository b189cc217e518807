"""The site's Flower ``ClientApp``: train, evaluate and telemetry handlers over the site's own data."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcore import records as R
from fedcore.config import SiteConfig, TaskSpec, TrainingSpec, load_site_config

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, float, str], Any] = {}


def site_config(context: Context, *, check_files: bool = True) -> SiteConfig:
    """The site config named by the node config's ``site-config`` (path of the site YAML)."""
    path = context.node_config.get("site-config")
    if not path:
        raise ValueError("node config lacks 'site-config' (path of this site's YAML)")
    return load_site_config(Path(str(path)), check_files=check_files)


def site_graph(context: Context, task: TaskSpec) -> tuple[SiteConfig, Any]:
    """The site's config and its data graph, loaded once per process and task."""
    from fedcore.data.sites import load_site_data

    path = str(context.node_config.get("site-config", ""))
    mtime = os.path.getmtime(path) if path and os.path.exists(path) else 0.0
    key = (path, mtime, task.model_dump_json())
    if key not in _CACHE:
        cfg = site_config(context)
        _CACHE[key] = (cfg, load_site_data(cfg, task))
    return _CACHE[key]  # type: ignore[no-any-return]


def local_seed(seed: int, site_id: str, round_: int) -> int:
    """The seed of one site's local training in one round (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{site_id}:{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _instruction(msg: Message) -> tuple[dict[str, Any], R.RoundConfig]:
    arrays, cfg = R.read_instruction(msg.content)
    if arrays is None or cfg is None:
        raise ValueError(
            f"{msg.metadata.message_type} instruction lacks its arrays or config record"
        )
    return arrays, cfg


def make_client_app() -> ClientApp:
    """Build the site ClientApp. The site config path comes from node config ``site-config``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedcore.data.graph import feature_dim
        from fedcore.models.fraud_gnn import build_model
        from fedcore.training import load_arrays, model_to_arrays, train_local

        arrays, cfg = _instruction(msg)
        task = TaskSpec.model_validate(cfg.task)
        training = TrainingSpec.model_validate(cfg.training)
        site, graph = site_graph(context, task)
        t0 = time.perf_counter()
        model = build_model(task, feature_dim(task))
        load_arrays(model, arrays)
        stats = train_local(model, graph, training, seed=local_seed(cfg.seed, site.id, cfg.round))
        reply = R.TrainReply(
            arrays=model_to_arrays(model),
            num_examples=stats.num_examples,
            loss=stats.loss,
            seconds=time.perf_counter() - t0,
            site_id=site.id,
        )
        return Message(reply.to_content(), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from fedcore.data.graph import feature_dim
        from fedcore.metrics import score_histograms
        from fedcore.models.fraud_gnn import build_model
        from fedcore.training import evaluate as evaluate_model
        from fedcore.training import load_arrays

        arrays, cfg = _instruction(msg)
        task = TaskSpec.model_validate(cfg.task)
        site, graph = site_graph(context, task)
        model = build_model(task, feature_dim(task))
        load_arrays(model, arrays)
        ev = evaluate_model(model, graph, task)
        hp, hn = score_histograms(ev.labels, ev.scores, R.HIST_BINS)
        reply = R.EvalReply(
            site_id=site.id,
            num_examples=ev.num_examples,
            num_positive=ev.num_positive,
            loss=ev.loss,
            metrics={k: float(v) for k, v in ev.metrics.items()},
            hist_pos=hp,
            hist_neg=hn,
        )
        return Message(reply.to_content(), reply_to=msg)

    @app.query("telemetry")
    def telemetry(msg: Message, context: Context) -> Message:
        import psutil

        cfg = site_config(
            context, check_files=False
        )  # a site with broken data is alive: training says why
        # data size only if already loaded: a telemetry query must stay cheap (no graph build)
        here = str(context.node_config.get("site-config", ""))
        n_train = next((int(g.num_train) for (p, _, _), (_, g) in _CACHE.items() if p == here), 0)
        mem = psutil.virtual_memory()
        readings = {
            "cpu_util_percent": float(psutil.cpu_percent(interval=None)),
            "mem_used_mib": float(mem.used / 2**20),
            "mem_total_mib": float(mem.total / 2**20),
            "cpu_count": float(psutil.cpu_count() or 1),
        }
        tel = R.Telemetry(
            site_id=cfg.id,
            num_train_examples=n_train,
            device="cpu",
            vendor="cpu",
            readings=readings,
        )
        return Message(tel.to_content(), reply_to=msg)

    return app
