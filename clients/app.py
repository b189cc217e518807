"""The site's Flower ``ClientApp``: train, evaluate and telemetry handlers over the site's own data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from clients import protect
from fedcore import records as R
from fedcore.config import PrivacySpec, SiteConfig, TaskSpec, TrainingSpec, load_site_config

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, float, str], Any] = {}


def site_config(context: Context, *, check_files: bool = True) -> SiteConfig:
    """The site config named by the node config's ``site-config`` (path of the site YAML)."""
    path = context.node_config.get("site-config")
    if not path:
        raise ValueError("node config lacks 'site-config' (path of this site's YAML)")
    return load_site_config(Path(str(path)), check_files=check_files)


def site_graph(context: Context, task: TaskSpec) -> tuple[SiteConfig, Any]:
    """The site's config and its data (transaction graph or CT patches), loaded once per process and task."""
    from fedcore.tasks import load_site, num_train

    path = str(context.node_config.get("site-config", ""))
    mtime = os.path.getmtime(path) if path and os.path.exists(path) else 0.0
    key = (path, mtime, task.model_dump_json())
    if key not in _CACHE:
        cfg = site_config(context)
        data = load_site(cfg, task)
        _CACHE[key] = (cfg, data)
        _remember_data_size(context, num_train(data))
    return _CACHE[key]  # type: ignore[no-any-return]


def _size_file(context: Context) -> Path | None:
    path = str(context.node_config.get("site-config", ""))
    if not path:
        return None
    p = Path(path)
    return p.with_name(f".{p.stem}.data-size.json")


def _remember_data_size(context: Context, num_train: int) -> None:
    """Note the site's training-set size next to its config, so telemetry stays cheap."""
    f = _size_file(context)
    if f is None:
        return
    try:
        mtime = os.path.getmtime(str(context.node_config["site-config"]))
        f.write_text(json.dumps({"num_train": num_train, "config_mtime": mtime}))
    except OSError as exc:  # a read-only config directory only costs a slower telemetry
        log.debug("cannot write %s: %s", f, exc)


def data_size(context: Context) -> int | None:
    """The site's training-set size if known without loading the data, else ``None``."""
    f = _size_file(context)
    if f is None or not f.exists():
        return None
    try:
        info = json.loads(f.read_text())
        if info["config_mtime"] != os.path.getmtime(str(context.node_config["site-config"])):
            return None
        return int(info["num_train"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


_DEVICES: dict[str, Any] = {}


def site_device(site: SiteConfig) -> Any:
    """The site's device (``fedcore.devices.SelectedDevice``) for its ``device`` setting, chosen once.

    Raises:
        DeviceError: the pinned vendor or index is not present on this machine.
    """
    if site.device not in _DEVICES:
        from fedcore.devices.registry import select

        _DEVICES[site.device] = select(site.device)
        log.info("site %s trains on %s", site.id, _DEVICES[site.device].torch_device)
    return _DEVICES[site.device]


def training_device(site: SiteConfig, requested: int) -> Any:
    """The device to train a round on: the scheduler's pick within the site's pool, if it can be honoured.

    The scheduler moves work between the devices of one vendor's pool by index. A site
    whose ``device`` setting pins an index (``"cuda:1"``) keeps it: the site's own pin
    wins. An index the site does not have falls back to :func:`site_device` with a
    warning, so a stale schedule never fails a round.

    Args:
        site: The site's config.
        requested: Device index the scheduler chose, ``-1`` for the site's own choice.
    """
    base = site_device(site)
    if requested < 0 or requested == base.index:
        return base
    if ":" in site.device:
        log.info(
            "site %s pins device %s; keeping it instead of the scheduler's device %d",
            site.id,
            site.device,
            requested,
        )
        return base
    spec = f"{base.vendor}:{requested}"
    if spec not in _DEVICES:
        from fedcore.devices.base import DeviceError
        from fedcore.devices.registry import select

        try:
            _DEVICES[spec] = select(spec)
        except (DeviceError, ValueError) as exc:
            log.warning(
                "site %s: the scheduler asked for device %d of its pool, which is not usable "
                "here (%s); training on %s",
                site.id,
                requested,
                exc,
                base.torch_device,
            )
            return base
    chosen = _DEVICES[spec]
    log.info("site %s: the scheduler moved this round to %s", site.id, chosen.torch_device)
    return chosen


def local_seed(seed: int, site_id: str, round_: int) -> int:
    """The seed of one site's local training in one round (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{site_id}:{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _config(msg: Message) -> R.RoundConfig:
    _, cfg = R.read_instruction(msg.content)
    if cfg is None:
        raise ValueError(f"{msg.metadata.message_type} instruction lacks its config record")
    return cfg


def _instruction(msg: Message) -> tuple[dict[str, Any], R.RoundConfig]:
    arrays, cfg = R.read_instruction(msg.content)
    if arrays is None or cfg is None:
        raise ValueError(
            f"{msg.metadata.message_type} instruction lacks its arrays or config record"
        )
    return arrays, cfg


def _train_model(
    context: Context, arrays: Mapping[str, Any], cfg: R.RoundConfig
) -> tuple[SiteConfig, dict[str, Any], Any, float]:
    """Train the global ``arrays`` locally; returns (site, local arrays, stats, seconds)."""
    from fedcore import tasks
    from fedcore.training import load_arrays, model_to_arrays

    task = TaskSpec.model_validate(cfg.task)
    training = TrainingSpec.model_validate(cfg.training)
    site, data = site_graph(context, task)
    device = training_device(site, cfg.device).torch_device
    t0 = time.perf_counter()
    model = tasks.build(task)
    load_arrays(model, arrays)
    stats = tasks.train(
        model,
        data,
        task,
        training,
        seed=local_seed(cfg.seed, site.id, cfg.round),
        epochs=cfg.epochs if cfg.epochs > 0 else None,  # the scheduler's share of work
        device=device,
    )
    seconds = time.perf_counter() - t0
    simulated = context.node_config.get(R.SIM_SECONDS)
    if simulated is not None:  # a simulated site reports its simulated device's time
        seconds = float(simulated)
    return site, model_to_arrays(model), stats, seconds


def _dp_clipped(
    local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], privacy: PrivacySpec
) -> dict[str, np.ndarray]:
    """``local`` with its update (``local - base``) clipped to the DP clip norm."""
    if privacy.dp is None:
        return dict(local)
    from secure.dp import clip_update

    delta = {k: np.asarray(local[k], np.float32) - np.asarray(base[k], np.float32) for k in base}
    # a hair under C: adding the clipped update back to the float32 base rounds, and the
    # update the coordinator sees (model - base) must still have norm <= C
    clipped, _ = clip_update(delta, privacy.dp.clip_norm * (1.0 - 1e-5))
    return {k: (np.asarray(base[k], np.float32) + clipped[k]).astype(local[k].dtype) for k in base}


def _evaluate_arrays(
    context: Context, arrays: Mapping[str, Any], cfg: R.RoundConfig, digest: str = ""
) -> R.EvalReply:
    from fedcore import tasks
    from fedcore.metrics import score_histograms
    from fedcore.training import load_arrays

    task = TaskSpec.model_validate(cfg.task)
    site, data = site_graph(context, task)
    model = tasks.build(task)
    load_arrays(model, arrays)
    ev = tasks.evaluate(model, data, task, device=site_device(site).torch_device)
    hp, hn = score_histograms(ev.labels, ev.scores, R.HIST_BINS)
    tp, fp = ev.flagged()
    return R.EvalReply(
        site_id=site.id,
        num_examples=ev.num_examples,
        num_positive=ev.num_positive,
        loss=ev.loss,
        metrics={**{k: float(v) for k, v in ev.metrics.items()}, "threshold": ev.threshold},
        hist_pos=hp,
        hist_neg=hn,
        model_digest=digest,
        flagged_pos=tp,
        flagged_neg=fp,
    )


def _ckks_state(
    context: Context, site: SiteConfig, cfg: R.RoundConfig
) -> tuple[Any, protect.GlobalModelStore]:
    privacy = PrivacySpec.model_validate(cfg.privacy)
    codec = protect.make_codec(
        privacy, protect.secret_context(context, site.id), cfg.max_sites or 1
    )
    store = protect.GlobalModelStore.for_site(
        site, str(context.node_config.get("site-config", "")), cfg.run_key
    )
    return codec, store


def _train_ckks(msg: Message, context: Context, cfg: R.RoundConfig) -> Message:
    """CKKS: catch up on the encrypted aggregates, train, send ``Enc(weight * clip(update))``."""
    site = site_config(context, check_files=False)
    codec, store = _ckks_state(context, site, cfg)
    _, base = protect.bring_up_to_date(store, msg.content, codec)
    privacy = PrivacySpec.model_validate(cfg.privacy)
    site, local, stats, seconds = _train_model(context, base, cfg)
    local = _dp_clipped(local, base, privacy)
    update = protect.flatten(local) - protect.flatten(base)
    t0 = time.perf_counter()
    chunks = codec.encrypt(cfg.weight * update)
    log.debug("encrypted %d values in %.3fs", update.size, time.perf_counter() - t0)
    reply = R.TrainReply(
        arrays={},
        num_examples=stats.num_examples,
        loss=stats.loss,
        seconds=seconds,
        site_id=site.id,
        encrypted=chunks,
        length=int(update.size),
        round=cfg.round,
    )
    content = reply.to_content()
    payload = R.signing_payload(R.TRAIN, site.id, cfg.round, cfg.run_key, reply.digest())
    return Message(protect.sign_reply(context, site.id, content, payload), reply_to=msg)


def _train_secagg(msg: Message, context: Context) -> Message:
    """SecAgg+: a legacy fit (Flower's ``secaggplus_mod`` masks the reply on its way out)."""
    from secure.secagg import fit_reply_content, read_fit_instruction

    params, fit_config = read_fit_instruction(msg.content)
    cfg = R.RoundConfig.from_record(ConfigRecord(json.loads(str(fit_config["fedcore.round"]))))
    names = json.loads(str(fit_config["fedcore.names"]))
    if len(names) != len(params):
        raise ValueError(f"fit instruction holds {len(params)} arrays for {len(names)} names")
    base = dict(zip(names, params, strict=True))
    privacy = PrivacySpec.model_validate(cfg.privacy)
    site, local, stats, seconds = _train_model(context, base, cfg)
    local = _dp_clipped(local, base, privacy)
    # DP needs uniform weights: every site counts once
    weight = 1 if privacy.dp is not None else stats.num_examples
    metrics: dict[str, Any] = {
        "loss": stats.loss,
        "seconds": seconds,
        "num_examples": stats.num_examples,
    }
    return Message(fit_reply_content([local[n] for n in names], weight, metrics), reply_to=msg)


def _export_model(
    context: Context, arrays: Mapping[str, np.ndarray], cfg: R.RoundConfig
) -> dict[str, Any]:
    """Quantize the global model for this site's device and check it on the site's test data.

    Files go to ``STATE/export/<run key>/`` (the model, its FP32 fallback, ``manifest.json``).
    """
    from fedcore.config import ExportSpec
    from fedcore.data.graph import feature_dim
    from fedcore.export import export_for_site
    from fedcore.models.fraud_gnn import build_model
    from fedcore.training import load_arrays

    task = TaskSpec.model_validate(cfg.task)
    if task.is_imaging:
        raise ValueError(f"INT8 export is not available for task model {task.model} yet")
    spec = ExportSpec.model_validate(cfg.export) if cfg.export else ExportSpec()
    site, graph = site_graph(context, task)
    model = build_model(task, feature_dim(task))
    load_arrays(model, arrays)
    base = protect.site_state_dir(site, str(context.node_config.get("site-config", ".")))
    out_dir = base / "export" / (cfg.run_key or "default")
    manifest = export_for_site(
        model,
        graph,
        out_dir,
        task=task,
        providers=site_device(site).adapter.onnx_providers(),
        tolerance=spec.tolerance,
    )
    info = manifest.to_dict()
    info["directory"] = str(out_dir)
    return info


def make_client_app() -> ClientApp:
    """Build the site ClientApp. The site config path comes from node config ``site-config``.

    An optional node config ``kit`` names the site's provisioned kit (CKKS secret context,
    node key for signing replies).
    """
    from secure.secagg import secagg_mod

    app = ClientApp(mods=[secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from secure.secagg import is_legacy_fit

        if is_legacy_fit(msg.content):
            return _train_secagg(msg, context)
        cfg = _config(msg)
        if cfg.mode == "ckks":
            return _train_ckks(msg, context, cfg)
        arrays, _ = _instruction(msg)
        privacy = PrivacySpec.model_validate(cfg.privacy) if cfg.privacy else PrivacySpec()
        site, local, stats, seconds = _train_model(context, arrays, cfg)
        local = _dp_clipped(local, arrays, privacy)
        reply = R.TrainReply(
            arrays=local,
            num_examples=stats.num_examples,
            loss=stats.loss,
            seconds=seconds,
            site_id=site.id,
            round=cfg.round,
        )
        payload = R.signing_payload(R.TRAIN, site.id, cfg.round, cfg.run_key, reply.digest())
        return Message(
            protect.sign_reply(context, site.id, reply.to_content(), payload), reply_to=msg
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = _config(msg)
        if cfg.mode == "ckks":
            site = site_config(context, check_files=False)
            codec, store = _ckks_state(context, site, cfg)
            _, arrays = protect.bring_up_to_date(store, msg.content, codec)
        else:
            arrays, cfg = _instruction(msg)
        reply = _evaluate_arrays(context, arrays, cfg, protect.digest_hex(arrays))
        return Message(reply.to_content(), reply_to=msg)

    @app.query("export")
    def export(msg: Message, context: Context) -> Message:
        """Export the final global model as INT8 for this site's device; reply with the manifest."""
        cfg = _config(msg)
        site = site_config(context, check_files=False)
        if cfg.mode == "ckks":  # the model exists in clear only here, after decryption
            codec, store = _ckks_state(context, site, cfg)
            _, arrays = protect.bring_up_to_date(store, msg.content, codec)
        else:
            arrays, cfg = _instruction(msg)
        try:
            manifest = _export_model(context, arrays, cfg)
        except Exception as exc:  # the run completed: a failed export is reported, not raised
            log.warning("export failed at %s: %s", site.id, exc)
            return Message(
                R.export_reply(site.id, None, f"{type(exc).__name__}: {exc}"), reply_to=msg
            )
        return Message(R.export_reply(site.id, manifest), reply_to=msg)

    @app.query("telemetry")
    def telemetry(msg: Message, context: Context) -> Message:
        import psutil

        round_, run_key, task = R.read_telemetry_instruction(msg.content)
        cfg = site_config(
            context, check_files=False
        )  # a site with broken data is alive: training says why
        n_train = data_size(context)
        if n_train is None:
            try:  # first contact: load the data once so the coordinator can weight this site
                _, data = site_graph(context, TaskSpec.model_validate(task))
                n_train = int(data.num_train)
            except Exception as exc:  # broken data: report 0, training will say why
                log.warning("site data not loadable for telemetry: %s", exc)
                n_train = 0
        store = protect.GlobalModelStore.for_site(
            cfg, str(context.node_config.get("site-config", "")), run_key
        )
        mem = psutil.virtual_memory()
        readings = {
            "cpu_util_percent": float(psutil.cpu_percent(interval=None)),
            "mem_used_mib": float(mem.used / 2**20),
            "mem_total_mib": float(mem.total / 2**20),
            "cpu_count": float(psutil.cpu_count() or 1),
        }
        dev = site_device(cfg)
        reading = dev.reading()
        if reading is not None:  # the training device's own readings, units in the names
            readings.update({f"device_{k}": float(v) for k, v in reading.metrics().items()})
        simulated = context.node_config.get(R.SIM_TELEMETRY)
        if simulated:  # a simulated site: its simulated device's readings replace the real ones
            readings = {
                k: v for k, v in readings.items() if not k.startswith(("device_", "cpu_", "mem_"))
            }
            readings.update({str(k): float(v) for k, v in json.loads(str(simulated)).items()})
        tel = R.Telemetry(
            site_id=cfg.id,
            num_train_examples=n_train,
            device=dev.torch_device,
            vendor=dev.vendor,
            readings=readings,
            model_round=protect.model_round(store),
        )
        payload = R.signing_payload(R.TELEMETRY, cfg.id, round_, run_key, tel.digest())
        return Message(protect.sign_reply(context, cfg.id, tel.to_content(), payload), reply_to=msg)

    return app
