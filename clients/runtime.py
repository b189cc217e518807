"""A site's runtime: its config, data, devices, kit, codecs and state, built once per Flower ``Context``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict

from fedcore import records as R
from fedcore.config import PrivacySpec, SiteConfig, TaskSpec, load_site_config
from fedcore.devices.environment import HostEnvironment, SiteEnvironment
from fedcore.site_paths import state_dir_from_node_config

log = logging.getLogger(__name__)

SITE_CONFIG_KEY = "site-config"
"""Node-config key: path of the site's YAML."""
KIT_KEY = "kit"
"""Node-config key: the site's provisioned kit (CKKS secret context, node key)."""


def local_seed(seed: int, site_id: str, round_: int) -> int:
    """The seed of one site's local training in one round (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{site_id}:{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A fresh folder beside ``final`` that replaces ``final`` once the block succeeds.

    When the block raises, the folder is removed and ``final`` is left as it was. The swap
    is two renames (the old folder aside, the new one in), then the old folder is removed:
    a crash between them leaves the old folder beside ``final``, named ``.NAME.old-*``.
    """
    from fedcore.storage import private_dir

    private_dir(final.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{secrets.token_hex(6)}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def model_mismatch(
    arrays: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
) -> str:
    """Why ``arrays`` are not a model of ``layout`` (names, shapes, dtypes, NaN), or ``""``.

    Args:
        arrays: The arrays a coordinator sent.
        layout: Name -> (shape, dtype) of the site's own model.
    """
    missing = sorted(set(layout) - set(arrays))
    extra = sorted(set(arrays) - set(layout))
    if missing or extra:
        return (
            f"expected the arrays {sorted(layout)[:8]}..., found {len(missing)} missing "
            f"({missing[:3]}) and {len(extra)} extra ({[k[:40] for k in extra[:3]]})"
        )
    for name, (shape, dtype) in layout.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            return f"array {name!r}: expected a numpy array, found {type(a).__name__}"
        if a.shape != shape or a.dtype != dtype:
            return (
                f"array {name!r}: expected {dtype} of shape {shape}, found {a.dtype} of "
                f"shape {a.shape}"
            )
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            return f"array {name!r}: expected finite values, found {bad} NaN or infinite"
    return ""


@dataclass(frozen=True)
class LocalTraining:
    """One round of local training: the site, its trained model, its figures."""

    site: SiteConfig
    arrays: dict[str, np.ndarray]
    num_examples: int
    loss: float
    seconds: float


def data_problem_kind(exc: BaseException) -> str:
    """The kind of a data-loading failure that telemetry may tell the coordinator.

    A kind from :data:`fedcore.records.DATA_PROBLEMS`, never the error's text: a data check's
    message may quote a value of the site's data.
    """
    from fedcore.config import ConfigError
    from fedcore.config.base import MissingDataFiles
    from fedcore.data.transactions import DataError, DataFileMissing

    if isinstance(exc, DataFileMissing | MissingDataFiles | FileNotFoundError):
        return "missing"
    if isinstance(exc, DataError):
        return "invalid"
    if isinstance(exc, ConfigError):
        return "config"
    return "unloadable"


class SiteRuntime:
    """Everything a site keeps across messages, loaded on first use.

    In-process, one runtime serves every message of a site; in deployment each message
    runs in a fresh process with a fresh ``Context``, so the runtime lives as long as
    that message. Nothing here is module-level: two sites in one process never share it.

    Args:
        context: The site's Flower context (its node config names the site YAML, the
            kit and the state directory).
        environment: Where readings and training time come from (default: this host).
    """

    def __init__(self, context: Context, environment: SiteEnvironment | None = None) -> None:
        self.node_config = context.node_config
        self.environment: SiteEnvironment = environment or HostEnvironment()
        self._site: tuple[float, SiteConfig] | None = None
        self._data: dict[tuple[float, str], Any] = {}
        self._devices: dict[str, Any] = {}
        self._kit: tuple[Any] | None = None
        self._secret: Any = None
        self._codecs: dict[tuple[str, int], Any] = {}
        self._layouts: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]] = {}
        self.data_problem = ""
        """Why the data did not load, for telemetry (:func:`data_problem_kind`; "": it did)."""

    # ------------------------------------------------------------------ config and paths

    @property
    def config_path(self) -> str:
        """Path of the site YAML (node config ``site-config``)."""
        path = self.node_config.get(SITE_CONFIG_KEY)
        if not path:
            raise ValueError("node config lacks 'site-config' (path of this site's YAML)")
        return str(path)

    def _mtime(self) -> float:
        path = self.config_path
        return os.path.getmtime(path) if os.path.exists(path) else 0.0

    def site(self, *, check_files: bool = False) -> SiteConfig:
        """The site config, read again when its file changes (``check_files``: data files must exist).

        Its ``state_dir`` is the resolved one (:func:`fedcore.site_paths.site_state_dir`, with
        the node config's override), so the data loaders' caches, the model copy and the
        exports all land in the directory the site service chose.
        """
        if check_files:
            return self._resolved(load_site_config(Path(self.config_path), check_files=True))
        mtime = self._mtime()
        if self._site is None or self._site[0] != mtime:
            cfg = load_site_config(Path(self.config_path), check_files=False)
            self._site = (mtime, self._resolved(cfg))
        return self._site[1]

    def _resolved(self, cfg: SiteConfig) -> SiteConfig:
        return cfg.model_copy(
            update={"state_dir": state_dir_from_node_config(cfg, self.node_config)}
        )

    @property
    def state_dir(self) -> Path:
        """The site's state directory (:func:`fedcore.site_paths.site_state_dir`)."""
        state = self.site().state_dir
        assert state is not None  # resolved by site()
        return state

    # ------------------------------------------------------------------ data

    def data(self, task: TaskSpec) -> tuple[SiteConfig, Any]:
        """The site config and its data for ``task`` (transaction graph or CT patches), loaded once."""
        from fedcore.tasks import load_site, num_train

        key = (self._mtime(), task.model_dump_json())
        if key not in self._data:
            cfg = self.site(check_files=True)
            self._data = {key: (cfg, load_site(cfg, task))}
            self._remember_data_size(num_train(self._data[key][1]))
        return self._data[key]  # type: ignore[no-any-return]

    def _size_file(self) -> Path:
        return self.state_dir / "data-size.json"

    def _remember_data_size(self, num_train: int) -> None:
        """Note the training-set size in the state directory, so telemetry stays cheap."""
        from fedcore.storage import atomic_write_json

        try:
            atomic_write_json(
                self._size_file(), {"num_train": num_train, "config_mtime": self._mtime()}
            )
        except OSError as exc:  # an unwritable state directory only costs a slower telemetry
            log.debug("cannot write %s: %s", self._size_file(), exc)

    def data_size(self, task: TaskSpec) -> int:
        """The training-set size: remembered, else loaded once (0 when the data is broken)."""
        f = self._size_file()
        try:
            info = json.loads(f.read_text())
            if info["config_mtime"] == self._mtime():
                return int(info["num_train"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:  # first contact: load the data once so the coordinator can weight this site
            _, data = self.data(task)
            self.data_problem = ""
            return int(data.num_train)
        except Exception as exc:  # broken data: report 0 and its kind, training will say why
            log.warning("site data not loadable for telemetry: %s", exc)
            self.data_problem = data_problem_kind(exc)
            return 0

    # ------------------------------------------------------------------ devices

    def device(self) -> Any:
        """The site's device (``fedcore.devices.SelectedDevice``) for its ``device`` setting.

        Raises:
            DeviceError: the pinned vendor or index is not present on this machine.
        """
        site = self.site()
        if site.device not in self._devices:
            from fedcore.devices.registry import select

            self._devices[site.device] = select(site.device)
            log.info("site %s trains on %s", site.id, self._devices[site.device].torch_device)
        return self._devices[site.device]

    def training_device(self, requested: int) -> Any:
        """The device to train a round on: the scheduler's pick in the site's pool, if it can be honoured.

        The scheduler moves work between the devices of one vendor's pool by index. A site
        whose ``device`` setting pins an index (``"cuda:1"``) keeps it: the site's own pin
        wins. An index the site does not have falls back to :meth:`device` with a warning,
        so a stale schedule never fails a round.

        Args:
            requested: Device index the scheduler chose, ``-1`` for the site's own choice.
        """
        site = self.site()
        base = self.device()
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
        if spec not in self._devices:
            from fedcore.devices.base import DeviceError
            from fedcore.devices.registry import select

            try:
                self._devices[spec] = select(spec)
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
        chosen = self._devices[spec]
        log.info("site %s: the scheduler moved this round to %s", site.id, chosen.torch_device)
        return chosen

    # ------------------------------------------------------------------ kit and keys

    def kit(self, site_id: str) -> Any | None:
        """The site's kit named by node config ``kit``, or ``None``.

        Raises:
            ValueError: the kit was made for another site.
        """
        path = str(self.node_config.get(KIT_KEY, "") or "")
        if not path:
            return None
        if self._kit is None:
            from secure.kit import load_kit

            self._kit = (load_kit(Path(path), role="site"),)
        kit = self._kit[0]
        if kit.site_id != site_id:
            raise ValueError(
                f"the kit in {path} belongs to site {kit.site_id!r}, but this node serves site "
                f"{site_id!r}; give each site its own kit (fedcore provision)"
            )
        return kit

    def sign(self, site_id: str, content: RecordDict, payload: bytes) -> RecordDict:
        """Sign ``payload`` with the site's node key when it has a kit (returns ``content``)."""
        kit = self.kit(site_id)
        if kit is None:
            return content
        from secure.kit import sign

        return R.attach_signature(content, sign(kit, payload))

    def secret_context(self, site_id: str) -> Any:
        """The consortium's CKKS secret context from the site kit."""
        kit = self.kit(site_id)
        if kit is None:
            raise ValueError(
                "privacy mode 'ckks' needs the site's kit (node config 'kit'): it holds the CKKS "
                "secret key. Run `fedcore provision` and start the site with --kit"
            )
        if self._secret is None:
            from secure import kitfiles
            from secure.ckks import context_from_bytes

            data = (Path(kit.path) / kitfiles.CKKS_SECRET).read_bytes()
            self._secret = context_from_bytes(data, expect_secret=True)
        return self._secret

    def codec(self, site_id: str, privacy: PrivacySpec, max_sites: int) -> Any:
        """The CKKS codec for ``privacy`` (the same one the coordinator builds)."""
        key = (privacy.model_dump_json(), max_sites)
        if key not in self._codecs:
            from secure.codecs import make_codec

            self._codecs[key] = make_codec(privacy, self.secret_context(site_id), max_sites or 1)
        return self._codecs[key]

    # ------------------------------------------------------------------ the incoming model

    def model_layout(self, task: TaskSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Name -> (shape, dtype) of every array of ``task``'s model, as this site builds it."""
        key = task.model_dump_json()
        if key not in self._layouts:
            import torch

            from fedcore import tasks

            with torch.random.fork_rng(devices=[]):  # building draws initial weights
                state = tasks.build(task).state_dict()
            self._layouts[key] = {
                name: (tuple(t.shape), np.dtype(str(t.dtype).removeprefix("torch.")))
                for name, t in state.items()
            }
        return self._layouts[key]

    def check_model(self, arrays: Mapping[str, np.ndarray], task: TaskSpec) -> None:
        """Refuse a global model that is not ``task``'s model (see :func:`model_mismatch`).

        Raises:
            ValueError: naming the array, what was expected and what was found.
        """
        problem = model_mismatch(arrays, self.model_layout(task))
        if problem:
            raise ValueError(
                f"the global model does not fit this site's {task.model} model: {problem}; the "
                "coordinator sent a model of other settings or a damaged one"
            )

    # ------------------------------------------------------------------ work

    def train(self, arrays: Mapping[str, np.ndarray], cfg: R.RoundConfig) -> LocalTraining:
        """Train the global ``arrays`` locally for one round."""
        from fedcore import tasks
        from fedcore.training import load_arrays, model_to_arrays

        site, data = self.data(cfg.task)
        device = self.training_device(cfg.device).torch_device
        t0 = time.perf_counter()
        model = tasks.build(cfg.task)
        load_arrays(model, arrays)
        stats = tasks.train(
            model,
            data,
            cfg.task,
            cfg.training,
            seed=local_seed(cfg.seed, site.id, cfg.round),
            epochs=cfg.epochs if cfg.epochs > 0 else None,  # the scheduler's share of work
            device=device,
        )
        seconds = self.environment.train_seconds(time.perf_counter() - t0)
        return LocalTraining(site, model_to_arrays(model), stats.num_examples, stats.loss, seconds)

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], cfg: R.RoundConfig, digest: str = ""
    ) -> R.EvalReply:
        """Evaluate ``arrays`` on the site's held-out data; only histograms and counts leave."""
        from fedcore import tasks
        from fedcore.metrics import score_histograms
        from fedcore.training import load_arrays

        site, data = self.data(cfg.task)
        model = tasks.build(cfg.task)
        load_arrays(model, arrays)
        ev = tasks.evaluate(model, data, cfg.task, device=self.device().torch_device)
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

    def export(self, arrays: Mapping[str, np.ndarray], cfg: R.RoundConfig) -> dict[str, Any]:
        """Quantize the global model for this site's device and check it on the site's test data.

        Files go to ``STATE/export/<run key>/`` (the model, its FP32 fallback, ``manifest.json``),
        written in a folder beside it that replaces it once the export succeeded: a failed
        export leaves the previous one as it was. The manifest records the site's operating
        threshold for this model (:func:`fedcore.tasks.operating_threshold`) and the served
        model's score reference, which the scoring service's drift monitor compares with.
        """
        from fedcore.data.graph import feature_dim
        from fedcore.export import export_for_site
        from fedcore.models.fraud_gnn import build_model
        from fedcore.tasks import operating_threshold
        from fedcore.training import load_arrays

        if cfg.task.is_imaging:
            raise ValueError(f"INT8 export is not available for task model {cfg.task.model} yet")
        _, graph = self.data(cfg.task)
        model = build_model(cfg.task, feature_dim(cfg.task))
        load_arrays(model, arrays)
        threshold = operating_threshold(model, graph, cfg.task)
        out_dir = self.state_dir / "export" / (cfg.run_key or "default")
        with staged_directory(out_dir) as staging:
            manifest = export_for_site(
                model,
                graph,
                staging,
                task=cfg.task,
                providers=self.device().adapter.onnx_providers(),
                tolerance=cfg.export.tolerance,
                threshold=threshold,
                mode=cfg.export.quantization,
            )
        info = manifest.to_dict()
        info["directory"] = str(out_dir)
        info["history"] = self.keep_history(cfg.task)
        return info

    def keep_history(self, task: TaskSpec) -> dict[str, Any]:
        """Write the site's transactions into its history (``history`` in the site file), whose
        window ``fed-client predict`` and ``fed-client serve`` score new ones in the context of.

        Returns what was written, or why not (a history that cannot be used does not fail
        the export: the message says what to do).
        """
        from fedcore.data.sites import load_site_transactions
        from fedcore.serving.history import HistoryError, HistoryStore, history_path

        site = self.site()
        path = history_path(self.state_dir, site.history)
        try:
            tx = load_site_transactions(site, task)
            with HistoryStore.open(path, task.features, site.history) as store:
                added = store.append(tx)
                held = store.count()
        except (HistoryError, OSError, sqlite3.Error) as exc:
            log.warning("site %s keeps no transaction history: %s", site.id, exc)
            return {"path": str(path), "error": str(exc)}
        return {"path": str(path), "added": added, "transactions": held}

    def telemetry(self, task: TaskSpec, model_round: int) -> R.Telemetry:
        """The site's telemetry: data size, device, readings, the round of its model copy,
        and the summaries of its data quality and of its scoring service's monitor."""
        site = self.site()  # a site with broken data is alive: training says why
        dev = self.device()
        size = self.data_size(task)
        return R.Telemetry(
            site_id=site.id,
            num_train_examples=size,
            device=dev.torch_device,
            vendor=dev.vendor,
            readings=self.environment.readings(dev),
            model_round=model_round,
            data_problem=self.data_problem if size == 0 else "",
            quality=self.data_quality(task) if size > 0 else {},
            serving=self.serving_summary(),
        )

    def serving_summary(self) -> dict[str, float]:
        """The scoring service's monitor summary from ``STATE/serving/monitor.json``
        (aggregate numbers only: ``MonitorStatus.summary``), with ``status_age_s``, the
        seconds since the service wrote it; empty when no service wrote one or it is unreadable."""
        from fedcore.serving.monitor import STATUS_FILE, read_status

        path = self.state_dir / STATUS_FILE
        try:
            summary = read_status(path).summary()
            age = max(0.0, time.time() - path.stat().st_mtime)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # the service rewrites it; telemetry goes on
            log.warning("no serving summary for telemetry: %s", exc)
            return {}
        return {**summary, "status_age_s": round(age, 1)}

    def data_quality(self, task: TaskSpec) -> dict[str, float]:
        """The quality summary of the site's table data (counts, shares, rates: never a
        row); empty for other data or data that do not load."""
        if not task.is_table:
            return {}
        try:
            _, data = self.data(task)
        except Exception as exc:  # broken data: telemetry already reports 0 examples
            log.debug("no quality summary for telemetry: %s", exc)
            return {}
        quality = getattr(data, "quality", None)
        return {str(k): float(v) for k, v in quality.items()} if quality else {}
