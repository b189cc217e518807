"""Reference models next to the federation: local-only models, a centralized model on pooled data, a non-graph model."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import nn

from fedcore import tasks
from fedcore.config import Scenario, TaskSpec
from fedcore.fraud_training import train_local
from fedcore.metrics import METRIC_KEYS, binary_metrics, metrics_from_counts, score_histograms
from fedcore.models.baseline import build_row_model
from fedcore.training import seed_everything

CURVE_BINS = 200
"""Score bins of the pooled test-score histograms kept as each model's PR curve."""

log = logging.getLogger(__name__)

ModelOrFactory = nn.Module | Callable[[str], nn.Module]
"""One model for every site, or a function giving the model of a site id."""


IMAGING_KEYS = ("sensitivity", "specificity")
"""Metrics an imaging task adds: sensitivity (= recall) and specificity (= 1 - FPR)."""


def with_imaging_metrics(metrics: Mapping[str, float], task: TaskSpec) -> dict[str, float]:
    """``metrics`` plus sensitivity and specificity for an imaging task (unchanged otherwise)."""
    out = dict(metrics)
    if task.is_imaging and "recall" in out and "fpr" in out:
        out["sensitivity"] = out["recall"]
        out["specificity"] = 1.0 - out["fpr"]  # nan without negatives stays nan
    return out


def derive_seed(seed: int, *parts: str) -> int:
    """A stable 31-bit seed from ``seed`` and labels (sha256; never Python's salted ``hash``)."""
    blob = ":".join([str(seed), *parts]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFF_FFFF


def _with_count(metrics: Mapping[str, float], num_test: int, num_pos: int) -> dict[str, float]:
    out = dict(metrics)
    out["num_test"] = float(num_test)
    out["num_test_pos"] = float(num_pos)
    return out


def mean_metrics(per_site: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over sites of each metric, ignoring ``nan`` (e.g. a site without test fraud).

    ``num_test`` and ``num_test_pos`` are summed instead of averaged.
    """
    out: dict[str, float] = {}
    keys = [*METRIC_KEYS, *(k for k in IMAGING_KEYS if any(k in m for m in per_site.values()))]
    for key in keys:
        vals = np.array([m[key] for m in per_site.values() if key in m], dtype=np.float64)
        ok = vals[np.isfinite(vals)]
        out[key] = float(ok.mean()) if len(ok) else float("nan")
    for key in ("num_test", "num_test_pos"):
        out[key] = float(sum(m.get(key, 0.0) for m in per_site.values()))
    return out


def evaluate_per_site(
    model: ModelOrFactory, graphs: Mapping[str, Any], task: TaskSpec
) -> dict[str, Any]:
    """Evaluate on every site's own test split, per site, pooled and averaged.

    Args:
        model: One model for all sites (e.g. the final federated model), or a function
            from site id to that site's model (e.g. local-only models).
        graphs: Site id -> site data (graph or patches).
        task: The task (model kind, decision threshold).

    Returns:
        ``{"per_site": {site: metrics}, "pooled": metrics, "mean": metrics}`` where
        metrics are :func:`fedcore.metrics.binary_metrics` plus ``num_test`` and
        ``num_test_pos`` (per site also ``threshold``, the site's operating threshold
        for this model: :func:`fedcore.tasks.operating_threshold`); ``pooled`` has the
        AUCs of the concatenated test scores of all sites and the threshold metrics of
        the summed flags of every site, and ``mean`` is :func:`mean_metrics` of ``per_site``.
    """
    per_site: dict[str, dict[str, float]] = {}
    scores, labels = [], []
    tp = fp = 0
    for site, graph in graphs.items():
        m = model if isinstance(model, nn.Module) else model(site)
        ev = tasks.evaluate(m, graph, task)
        per_site[site] = _with_count(ev.metrics, ev.num_examples, ev.num_positive)
        per_site[site]["threshold"] = ev.threshold
        site_tp, site_fp = ev.flagged()
        tp, fp = tp + site_tp, fp + site_fp
        scores.append(ev.scores)
        labels.append(ev.labels)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    pos = int(all_labels.sum())
    # curves from the pooled scores; flags as each site set them (its own threshold)
    metrics = binary_metrics(all_labels, all_scores, task.threshold)
    metrics.update(metrics_from_counts(tp, fp, pos, len(all_labels) - pos))
    pooled: dict[str, Any] = _with_count(with_imaging_metrics(metrics, task), len(all_labels), pos)
    if len(all_labels):  # the PR curve's points: test-score histograms (docs/report.md)
        hist_pos, hist_neg = score_histograms(all_labels, all_scores, CURVE_BINS)
        pooled["curve"] = {"hist_pos": hist_pos, "hist_neg": hist_neg}
    return {"per_site": per_site, "pooled": pooled, "mean": mean_metrics(per_site)}


def evaluate_across_sites(
    models: Mapping[str, nn.Module], graphs: Mapping[str, Any], task: TaskSpec
) -> dict[str, Any]:
    """Judge each site's own model on every site's test split, as the federated model is judged.

    Every site scores each model at its own operating point for that model (with
    ``operating_point: balanced``, chosen on that site's training split, which a model
    trained elsewhere has never seen), and the flags are pooled over all sites: the same
    test data and the same rule as the federated model's pooled figures.

    Args:
        models: Site id -> the model that site trained alone.
        graphs: Site id -> site data (graph or patches).
        task: The task (model kind, operating point).

    Returns:
        ``{"per_model": {site: pooled metrics of that site's model}, "mean": their mean}``;
        ``mean`` counts the shared test data once (``num_test``, ``num_test_pos``).
    """
    per_model = {site: evaluate_per_site(m, graphs, task)["pooled"] for site, m in models.items()}
    mean = mean_metrics(per_model)
    for key in ("num_test", "num_test_pos"):
        mean[key] = next(iter(per_model.values()))[key] if per_model else 0.0
    return {"per_model": per_model, "mean": mean}


BaselinePhase = Literal["baseline", "train", "evaluate"]
"""What a :class:`BaselineProgress` event is about: a whole baseline, one model's training, or
the baseline's evaluation."""


@dataclass(frozen=True)
class BaselineProgress:
    """One event of :func:`run_baselines`: a baseline, or one of its steps, started or finished.

    A baseline's steps are the models it trains (one per site for ``local_only``, each named
    by its site; one on the pooled data otherwise, with ``site`` ``None``), then its
    evaluation. Each baseline sends ``phase="baseline"`` with ``finished=False``, then a
    started and a finished event per step in order, then ``phase="baseline"`` with
    ``finished=True``.

    Attributes:
        baseline: ``"local_only"``, ``"centralized"`` or ``"non_graph"`` (the result's keys).
        phase: ``"baseline"`` (the whole baseline), ``"train"`` or ``"evaluate"``.
        site: The site whose model is trained alone (``local_only``'s training), else ``None``.
        finished: ``False`` when it starts, ``True`` when it is done.
        done: Steps of this baseline finished so far (counting this one once it is finished).
        total: Steps of this baseline: one per model trained, plus one for the evaluation.
        seconds: Wall time of what finished (``0.0`` on a start); a finished baseline's is
            the one in the result's ``seconds``.
        index: Position of this baseline among those run, from 1.
        count: How many baselines this call runs.
    """

    baseline: str
    phase: BaselinePhase
    site: str | None
    finished: bool
    done: int
    total: int
    seconds: float
    index: int
    count: int


ProgressCallback = Callable[[BaselineProgress], None]
"""Receives :func:`run_baselines`' events (e.g. to show a progress bar); returns nothing."""


class _Reporter:
    """Times one baseline's steps and sends their events; sends nothing without a callback."""

    def __init__(self, on_progress: ProgressCallback | None, names: list[str]) -> None:
        self._send = on_progress
        self._names = names
        self._name = ""
        self._done = self._total = 0
        self._start = 0.0

    def begin(self, name: str, total: int) -> None:
        self._name, self._done, self._total = name, 0, total
        self._emit("baseline", None, False, 0.0)

    def end(self, seconds: float) -> None:
        self._emit("baseline", None, True, seconds)

    @contextmanager
    def step(self, phase: BaselinePhase, site: str | None = None) -> Iterator[None]:
        self._emit(phase, site, False, 0.0)
        start = time.perf_counter()
        yield
        self._done += 1
        self._emit(phase, site, True, time.perf_counter() - start)

    def _emit(self, phase: BaselinePhase, site: str | None, finished: bool, secs: float) -> None:
        if self._send is None:
            return
        self._send(
            BaselineProgress(
                baseline=self._name,
                phase=phase,
                site=site,
                finished=finished,
                done=self._done,
                total=self._total,
                seconds=secs,
                index=self._names.index(self._name) + 1,
                count=len(self._names),
            )
        )


def run_baselines(
    graphs: Mapping[str, Any],
    scenario: Scenario,
    *,
    epochs: int,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train and evaluate the reference models the federation is compared with.

    * ``local_only``: each site trains its own GNN alone for ``epochs`` epochs and is
      evaluated on its own test split (``per_site``, their ``mean``, and ``pooled``
      over the concatenated scores of the local models); with ``cross_site``, also
      ``across_sites``: each of those models judged on every site's test split
      (:func:`evaluate_across_sites`);
    * ``centralized``: one GNN trained for ``epochs`` epochs on the disjoint union of all
      site graphs (what pooling the data would give), evaluated on the pooled test
      transactions, with ``per_site`` and ``mean`` inside;
    * ``non_graph``: a row-feature MLP trained on the pooled rows, evaluated likewise
      (fraud only: CT patches have no graph to leave out).

    Every model is initialised from a seed derived from ``scenario.seed``.

    Args:
        graphs: Site id -> site data (graph or patches), built for ``scenario.task``.
        scenario: Task, training settings, seed and ``baselines`` flags.
        epochs: Training epochs of each baseline; use ``rounds * local_epochs`` to
            match the federation's total local epochs.
        on_progress: Called with a :class:`BaselineProgress` as each baseline, each model's
            training (each site's, for ``local_only``) and each evaluation starts and
            finishes; default ``None``. It never changes the results.

    Returns:
        A dict with the enabled keys among ``local_only``, ``centralized``, ``non_graph``
        and ``seconds`` (time per baseline).
    """
    task, training, flags = scenario.task, scenario.training, scenario.baselines
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    names = [
        name
        for name, on in (
            ("local_only", flags.local_only),
            ("centralized", flags.centralized and bool(graphs)),
            ("non_graph", flags.non_graph and bool(graphs) and not task.is_imaging),
        )
        if on
    ]
    report = _Reporter(on_progress, names)

    if flags.local_only:
        report.begin("local_only", len(graphs) + 1)
        start = time.perf_counter()
        models: dict[str, nn.Module] = {}
        for site, graph in graphs.items():
            with report.step("train", site):
                seed_everything(derive_seed(scenario.seed, "init"))
                model = tasks.build(task)
                tasks.train(
                    model,
                    graph,
                    task,
                    training,
                    seed=derive_seed(scenario.seed, "local", site),
                    epochs=epochs,
                )
                models[site] = model
        with report.step("evaluate"):
            res = evaluate_per_site(models.__getitem__, graphs, task)
            out["local_only"] = {
                "per_site": res["per_site"],
                "mean": res["mean"],
                "pooled": res["pooled"],
            }
            if flags.cross_site:
                out["local_only"]["across_sites"] = evaluate_across_sites(models, graphs, task)
        seconds["local_only"] = time.perf_counter() - start
        report.end(seconds["local_only"])

    pooled = tasks.merge(task, list(graphs.values())) if graphs else None
    if flags.centralized and pooled is not None:
        report.begin("centralized", 2)
        start = time.perf_counter()
        with report.step("train"):
            seed_everything(derive_seed(scenario.seed, "init"))
            model = tasks.build(task)
            tasks.train(
                model,
                pooled,
                task,
                training,
                seed=derive_seed(scenario.seed, "centralized"),
                epochs=epochs,
            )
        with report.step("evaluate"):
            res = evaluate_per_site(model, graphs, task)
        out["centralized"] = {**res["pooled"], "per_site": res["per_site"], "mean": res["mean"]}
        seconds["centralized"] = time.perf_counter() - start
        report.end(seconds["centralized"])

    if flags.non_graph and pooled is not None and not task.is_imaging:
        report.begin("non_graph", 2)
        start = time.perf_counter()
        with report.step("train"):
            seed_everything(derive_seed(scenario.seed, "init-rows"))
            row_model = build_row_model(tasks.row_model_dim(task))
            train_local(
                row_model,
                pooled,
                training,
                seed=derive_seed(scenario.seed, "non-graph"),
                epochs=epochs,
            )
        with report.step("evaluate"):
            res = evaluate_per_site(row_model, graphs, task)
        out["non_graph"] = {**res["pooled"], "per_site": res["per_site"], "mean": res["mean"]}
        seconds["non_graph"] = time.perf_counter() - start
        report.end(seconds["non_graph"])

    out["seconds"] = seconds
    for name, secs in seconds.items():
        pr = out[name].get("pr_auc", out[name].get("mean", {}).get("pr_auc", math.nan))
        log.info("baseline %s: PR-AUC %.3f in %.1fs", name, pr, secs)
    return out
